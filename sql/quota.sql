-- Quota warnings: who crossed 80 % or 100 % of their monthly tokens and was not told yet.

-- name: quota_due
-- Active users on a limited plan whose current period has reached a threshold with no
-- notice for that period and threshold yet. The threshold due is the highest one crossed:
-- a user who jumps from 50 % to 100 % in one flush gets the 100 % mail, not both.
SELECT s.user_id, s.period_start, s.period_end, s.tokens_used, s.plan,
       p.monthly_tokens, u.email, u.name, u.language,
       CASE WHEN s.tokens_used >= p.monthly_tokens THEN 100 ELSE 80 END AS threshold
FROM subscriptions s
JOIN plans p ON p.name = s.plan
JOIN users u ON u.id = s.user_id
WHERE p.monthly_tokens > 0 AND u.status = 'active' AND s.period_end > :now
  AND s.tokens_used * 100 >= p.monthly_tokens * 80
  AND NOT EXISTS (
      SELECT 1 FROM quota_notices n
      WHERE n.user_id = s.user_id AND n.period_start = s.period_start
        AND n.threshold = CASE WHEN s.tokens_used >= p.monthly_tokens THEN 100 ELSE 80 END)
ORDER BY s.user_id
LIMIT :limit;

-- name: quota_notice_claim
-- The one statement that decides who sends: the primary key lets exactly one claim win.
INSERT INTO quota_notices (user_id, period_start, threshold, tokens_used, created_at)
VALUES (:user_id, :period_start, :threshold, :tokens_used, :now)
ON CONFLICT (user_id, period_start, threshold) DO NOTHING;

-- name: quota_notice_sent
UPDATE quota_notices SET mail_id = :mail_id
WHERE user_id = :user_id AND period_start = :period_start AND threshold = :threshold;

-- name: quota_notices_of_user
SELECT * FROM quota_notices WHERE user_id = :user_id ORDER BY created_at, threshold;

-- name: user_set_language
-- The language the user last read the site in (quota warnings are written in it).
UPDATE users SET language = :language WHERE id = :id AND (language IS NULL OR language != :language);
