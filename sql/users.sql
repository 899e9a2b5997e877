-- Users and their subscriptions.

-- name: user_insert
INSERT INTO users (email, name, password_hash, is_admin, status, email_verified, created_at, updated_at)
VALUES (:email, :name, :password_hash, :is_admin, :status, :email_verified, :now, :now);

-- name: user_by_email
SELECT * FROM users WHERE email = :email;

-- name: user_by_id
SELECT * FROM users WHERE id = :id;

-- name: user_set_status
-- Any change of status ends the user's sessions: a suspended user is signed out at once, and
-- re-activating does not bring back a cookie from before.
UPDATE users SET status = :status, session_epoch = session_epoch + 1, updated_at = :now
WHERE email = :email;

-- name: user_end_sessions
-- Sign-out: every session cookie issued before now stops working (web/sessions.py), but
-- only when asked from a live session (:epoch is the cookie's): a cookie that is already
-- dead cannot sign the user out again. updated_at stays: the key cache has nothing new.
UPDATE users SET session_epoch = session_epoch + 1 WHERE id = :id AND session_epoch = :epoch;

-- name: subscription_insert
INSERT INTO subscriptions (user_id, plan, period_start, period_end, created_at, updated_at)
VALUES (:user_id, :plan, :period_start, :period_end, :now, :now);

-- name: subscription_by_user
SELECT * FROM subscriptions WHERE user_id = :user_id;

-- name: subscription_set_plan
-- A change by hand (operator, admin) has no end date; only bought plans expire.
UPDATE subscriptions SET plan = :plan, paid_until = NULL, updated_at = :now WHERE user_id = :user_id;

-- name: subscription_add
-- Written by the usage recorder as DELTAS, so two writers (two processes, or a retried flush)
-- add up. A delta for a newer period starts that period; one for an older period (a payment
-- started a fresh one meanwhile) changes nothing. SET expressions all see the old row.
INSERT INTO subscriptions (user_id, plan, period_start, period_end, tokens_used, requests_used, created_at, updated_at)
VALUES (:user_id, 'free', :period_start, :period_end, :tokens, :requests, :period_start, :period_start)
ON CONFLICT (user_id) DO UPDATE SET
    tokens_used = CASE
        WHEN excluded.period_start > subscriptions.period_start THEN excluded.tokens_used
        WHEN excluded.period_start = subscriptions.period_start
            THEN subscriptions.tokens_used + excluded.tokens_used
        ELSE subscriptions.tokens_used END,
    requests_used = CASE
        WHEN excluded.period_start > subscriptions.period_start THEN excluded.requests_used
        WHEN excluded.period_start = subscriptions.period_start
            THEN subscriptions.requests_used + excluded.requests_used
        ELSE subscriptions.requests_used END,
    period_end = CASE WHEN excluded.period_start > subscriptions.period_start
        THEN excluded.period_end ELSE subscriptions.period_end END,
    period_start = CASE WHEN excluded.period_start > subscriptions.period_start
        THEN excluded.period_start ELSE subscriptions.period_start END;

-- name: users_list
-- The operator's `users list`: empty filter = any; deleted accounts only when asked for.
SELECT u.id, u.email, u.name, u.status, u.is_admin, u.created_at, s.plan, s.paid_until,
       (SELECT COUNT(*) FROM api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL)
           AS active_keys
FROM users u LEFT JOIN subscriptions s ON s.user_id = u.id
WHERE (:plan = '' OR s.plan = :plan)
  AND ((:status = '' AND u.status != 'deleted') OR u.status = :status)
ORDER BY u.id;
