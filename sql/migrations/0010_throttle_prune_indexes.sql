-- Every claimed login check prunes failures older than a day, and every issued code prunes
-- codes expired a week ago: by time, so an index on time keeps both from scanning the table
-- (a password-spraying crowd can fill login_failures quickly).
CREATE INDEX login_failures_time ON login_failures(created_at);
CREATE INDEX email_codes_expiry ON email_codes(expires_at);
