-- Account safety (issue 14): sessions that can be ended, codes that leave the outbox.

-- Every signed-in cookie carries the epoch it was issued under; any change that must end
-- the user's sessions (sign-out, password change, suspension, deletion) adds one.
ALTER TABLE users ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;

-- A message holding a code is readable only while the code is valid: at `expires_at` its
-- body is emptied (the envelope stays for the operator's record).
ALTER TABLE mail_outbox ADD COLUMN expires_at REAL;
CREATE INDEX mail_outbox_expiry ON mail_outbox(expires_at) WHERE expires_at IS NOT NULL;

-- Login attempts are claimed per (address, client) pair before the password is checked.
CREATE INDEX login_failures_pair ON login_failures(email, ip, created_at);
