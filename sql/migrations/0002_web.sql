-- The site: e-mail codes, the mail outbox, login throttling, linked sign-in identities and
-- the admin audit log. Timestamps are Unix seconds (REAL), as in 0001.

CREATE TABLE email_codes (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL,
    purpose    TEXT NOT NULL,                          -- register
    code_hash  TEXT NOT NULL,                          -- scrypt, like passwords
    attempts   INTEGER NOT NULL DEFAULT 0,             -- wrong guesses so far
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL                                    -- set when used or replaced
);
CREATE INDEX email_codes_email ON email_codes(email, purpose, created_at);

CREATE TABLE mail_outbox (
    id         INTEGER PRIMARY KEY,
    to_addr    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body_text  TEXT NOT NULL,                          -- emptied once delivered by SMTP
    status     TEXT NOT NULL,                          -- outbox | sent | failed
    error      TEXT,
    created_at REAL NOT NULL,
    sent_at    REAL
);
CREATE INDEX mail_outbox_time ON mail_outbox(created_at);

CREATE TABLE login_failures (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL,
    ip         TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX login_failures_email ON login_failures(email, created_at);
CREATE INDEX login_failures_ip ON login_failures(ip, created_at);

CREATE TABLE user_identities (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider   TEXT NOT NULL,                          -- google
    subject    TEXT NOT NULL,                          -- the provider's stable user id
    created_at REAL NOT NULL,
    UNIQUE (provider, subject)
);
CREATE INDEX user_identities_user ON user_identities(user_id);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    actor_id    INTEGER,                               -- the admin (NULL: the system)
    actor_email TEXT NOT NULL,                         -- kept even if the admin is deleted
    action      TEXT NOT NULL,                         -- user.suspend, user.plan, ...
    target      TEXT NOT NULL,                         -- e.g. user:42 (someone@example.com)
    detail      TEXT NOT NULL DEFAULT '',
    ip          TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);
CREATE INDEX audit_log_time ON audit_log(created_at);
