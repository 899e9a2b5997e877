-- Quota e-mails at 80 % and 100 % of the monthly tokens (issue 18), and the language each
-- user reads the site in, so mail sent outside a request (a quota warning) speaks it too.
-- One row per user, period and threshold: the primary key is what makes the warning go
-- out once per period however many requests, watchers or processes race to send it.

ALTER TABLE users ADD COLUMN language TEXT;               -- zh-CN | en; NULL = site default

CREATE TABLE quota_notices (
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    period_start REAL NOT NULL,                           -- the subscription period warned
    threshold    INTEGER NOT NULL,                        -- 80 | 100 (per cent)
    tokens_used  INTEGER NOT NULL,                        -- when the warning was claimed
    mail_id      INTEGER,                                 -- mail_outbox row, once sent
    created_at   REAL NOT NULL,
    PRIMARY KEY (user_id, period_start, threshold)
);
