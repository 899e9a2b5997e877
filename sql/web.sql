-- The site's accounts: e-mail codes, login throttling, the mail outbox, linked identities
-- and the changes a user makes to their own account.

-- name: code_replace_active
-- A new code makes every older unused code for the same address and purpose useless.
UPDATE email_codes SET used_at = :now
WHERE email = :email AND purpose = :purpose AND used_at IS NULL;

-- name: code_insert
INSERT INTO email_codes (email, purpose, code_hash, attempts, created_at, expires_at)
VALUES (:email, :purpose, :code_hash, 0, :now, :expires_at);

-- name: code_latest_active
SELECT * FROM email_codes
WHERE email = :email AND purpose = :purpose AND used_at IS NULL
ORDER BY created_at DESC, id DESC LIMIT 1;

-- name: code_latest
SELECT * FROM email_codes
WHERE email = :email AND purpose = :purpose
ORDER BY created_at DESC, id DESC LIMIT 1;

-- name: code_claim_attempt
-- One check of the newest open code, claimed before the typed code is hashed
-- (gateway/accounts/codes.py): counted only while attempts remain and the code is valid.
UPDATE email_codes SET attempts = attempts + 1
WHERE id = (SELECT id FROM email_codes
            WHERE email = :email AND purpose = :purpose AND used_at IS NULL
            ORDER BY created_at DESC, id DESC LIMIT 1)
  AND attempts < :max_attempts AND expires_at >= :now
RETURNING id, code_hash, attempts;

-- name: code_mark_used
UPDATE email_codes SET used_at = :now WHERE id = :id AND used_at IS NULL;

-- name: code_prune
DELETE FROM email_codes WHERE expires_at < :before;

-- name: login_attempt_claim
-- One password check, claimed before it is made (gateway/accounts/throttle.py): the row is
-- written only while every limit holds, in this one statement, so concurrent guesses
-- cannot all pass a count taken before any of them was written. Beyond per_account
-- failures the account is slowed, not locked: the next check waits `step` seconds more
-- per failure after the latest one, at most `max_delay`.
WITH p AS (
    SELECT CAST(:now AS DOUBLE PRECISION) AS now, CAST(:since AS DOUBLE PRECISION) AS since,
           CAST(:per_pair AS INTEGER) AS per_pair, CAST(:per_ip AS INTEGER) AS per_ip,
           CAST(:per_account AS INTEGER) AS per_account
), pair AS (
    SELECT COUNT(*) AS n FROM login_failures, p
    WHERE email = :email AND ip = :ip AND created_at >= p.since
), client AS (
    SELECT COUNT(*) AS n FROM login_failures, p WHERE ip = :ip AND created_at >= p.since
), account AS (
    SELECT n, latest, CASE WHEN (n - per_account + 1) * step < max_delay
                           THEN (n - per_account + 1) * step ELSE max_delay END AS delay
    FROM (SELECT COUNT(*) AS n, MAX(created_at) AS latest, p.per_account,
                 CAST(:step AS INTEGER) AS step, CAST(:max_delay AS INTEGER) AS max_delay
          FROM login_failures, p WHERE email = :email AND created_at >= p.since
          GROUP BY p.per_account) AS counted
)
INSERT INTO login_failures (email, ip, created_at)
SELECT :email, :ip, p.now FROM p, pair, client
WHERE pair.n < p.per_pair AND client.n < p.per_ip
  AND NOT EXISTS (SELECT 1 FROM account
                  WHERE account.n >= p.per_account AND account.latest > p.now - account.delay)
RETURNING id;

-- name: login_failure_insert
-- A failure written directly (data copies and tests; logins go through the claim above).
INSERT INTO login_failures (email, ip, created_at) VALUES (:email, :ip, :now);

-- name: login_attempt_wait
-- How long until login_attempt_claim would succeed: the longest of the three waits
-- (0 or less: now).
WITH p AS (
    SELECT CAST(:now AS DOUBLE PRECISION) AS now, CAST(:since AS DOUBLE PRECISION) AS since,
           CAST(:window AS DOUBLE PRECISION) AS window_seconds,
           CAST(:per_pair AS INTEGER) AS per_pair, CAST(:per_ip AS INTEGER) AS per_ip,
           CAST(:per_account AS INTEGER) AS per_account, CAST(:step AS INTEGER) AS step,
           CAST(:max_delay AS INTEGER) AS max_delay
)
SELECT MAX(wait) AS wait FROM (
    SELECT CASE WHEN COUNT(*) >= p.per_pair THEN MIN(created_at) + p.window_seconds - p.now
                ELSE 0 END AS wait
    FROM login_failures, p WHERE email = :email AND ip = :ip AND created_at >= p.since
    GROUP BY p.per_pair, p.window_seconds, p.now
    UNION ALL
    SELECT CASE WHEN COUNT(*) >= p.per_ip THEN MIN(created_at) + p.window_seconds - p.now
                ELSE 0 END
    FROM login_failures, p WHERE ip = :ip AND created_at >= p.since
    GROUP BY p.per_ip, p.window_seconds, p.now
    UNION ALL
    SELECT CASE WHEN COUNT(*) < p.per_account THEN 0
                WHEN (COUNT(*) - p.per_account + 1) * p.step < p.max_delay
                THEN MAX(created_at) + (COUNT(*) - p.per_account + 1) * p.step - p.now
                ELSE MAX(created_at) + p.max_delay - p.now END
    FROM login_failures, p WHERE email = :email AND created_at >= p.since
    GROUP BY p.per_account, p.step, p.max_delay, p.now
) AS waits;

-- name: login_attempt_succeeded
-- The right password: its claim and this client's earlier failures on the account go.
DELETE FROM login_failures WHERE id = :id OR (email = :email AND ip = :ip);

-- name: login_failures_by_email
SELECT COUNT(*) AS failures, MIN(created_at) AS oldest
FROM login_failures WHERE email = :email AND created_at >= :since;

-- name: login_failures_by_ip
SELECT COUNT(*) AS failures, MIN(created_at) AS oldest
FROM login_failures WHERE ip = :ip AND created_at >= :since;

-- name: login_failures_prune
DELETE FROM login_failures WHERE created_at < :before;

-- name: mail_insert
INSERT INTO mail_outbox (to_addr, subject, body_text, status, error, created_at, sent_at)
VALUES (:to_addr, :subject, :body_text, :status, :error, :now, :sent_at);

-- name: mail_set_expiry
-- The message holds a code valid until :expires_at (gateway/accounts/mail.py).
UPDATE mail_outbox SET expires_at = :expires_at WHERE id = :id;

-- name: mail_expired
SELECT id, subject FROM mail_outbox WHERE expires_at IS NOT NULL AND expires_at < :now;

-- name: mail_purge
-- Its code expired: the text goes, the subject loses its digits, the envelope stays.
UPDATE mail_outbox SET body_text = '', subject = :subject, expires_at = NULL WHERE id = :id;

-- name: mail_recent
SELECT * FROM mail_outbox ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: mail_by_id
SELECT * FROM mail_outbox WHERE id = :id;

-- name: mail_latest_to
SELECT * FROM mail_outbox WHERE to_addr = :to_addr ORDER BY created_at DESC, id DESC LIMIT 1;

-- name: identity_user
SELECT u.* FROM user_identities i JOIN users u ON u.id = i.user_id
WHERE i.provider = :provider AND i.subject = :subject;

-- name: identity_insert
INSERT INTO user_identities (user_id, provider, subject, created_at)
VALUES (:user_id, :provider, :subject, :now);

-- name: site_user_mark_pending
UPDATE users SET status = 'pending', updated_at = :now WHERE id = :id;

-- name: site_user_retry_registration
-- Someone registering again before verifying: the newest name and password win.
UPDATE users SET name = :name, password_hash = :password_hash, updated_at = :now
WHERE id = :id AND email_verified = 0;

-- name: site_user_mark_verified
-- Only a pending account becomes active: verifying never lifts a suspension.
UPDATE users SET email_verified = 1,
    status = CASE WHEN status = 'pending' THEN 'active' ELSE status END, updated_at = :now
WHERE id = :id;

-- name: site_user_verify_by_code
-- The code proved the mailbox. The password stays only if the verifying browser set it
-- (:keep) and nobody registered the address again since it was read (:seen).
UPDATE users SET email_verified = 1,
    status = CASE WHEN status = 'pending' THEN 'active' ELSE status END,
    password_hash = CASE WHEN :keep = 1 AND password_hash = :seen THEN password_hash
                         ELSE '' END,
    updated_at = :now
WHERE id = :id AND email_verified = 0;

-- name: site_user_claim_by_google
-- Google proved the address belongs to whoever signs in now, not to whoever registered it
-- first: a pending account loses that registrant's password and name, and its sessions.
UPDATE users SET email_verified = 1, password_hash = '', name = :name,
    status = CASE WHEN status = 'pending' THEN 'active' ELSE status END,
    session_epoch = session_epoch + 1, updated_at = :now
WHERE id = :id AND email_verified = 0;

-- name: code_revoke_all
-- Every code still open for the address, whatever its purpose, stops working.
UPDATE email_codes SET used_at = :now WHERE email = :email AND used_at IS NULL;

-- name: site_user_set_name
UPDATE users SET name = :name, updated_at = :now WHERE id = :id;

-- name: site_user_set_password
-- A new password ends every session (the browser that changed it is given the new epoch).
UPDATE users SET password_hash = :password_hash, session_epoch = session_epoch + 1,
    updated_at = :now
WHERE id = :id;

-- name: site_user_anonymize
-- Account deletion keeps the row (orders and usage refer to it) but nothing personal.
UPDATE users SET email = :email, name = '', password_hash = '', status = 'deleted',
    is_admin = 0, session_epoch = session_epoch + 1, updated_at = :now
WHERE id = :id;

-- name: site_user_revoke_keys
UPDATE api_keys SET revoked_at = :now, updated_at = :now
WHERE user_id = :user_id AND revoked_at IS NULL;

-- name: site_user_forget_identities
DELETE FROM user_identities WHERE user_id = :user_id;

-- name: site_user_set_email
-- Only when no other account has the address (the unique index decides a race too).
UPDATE users SET email = :email, updated_at = :now
WHERE id = :id AND NOT EXISTS (SELECT 1 FROM users WHERE email = :email AND id <> :id);
