-- The operator's panel: platform figures, the users table, costs, the outbox and the audit log.

-- name: admin_count_users
SELECT COUNT(*) AS users,
       SUM(CASE WHEN created_at >= :today THEN 1 ELSE 0 END) AS new_today
FROM users WHERE status != 'deleted';

-- name: admin_active_users_since
SELECT COUNT(DISTINCT user_id) AS users FROM usage_logs WHERE created_at >= :since;

-- name: admin_usage_since
SELECT COUNT(*) AS requests,
       SUM(input_tokens + cache_read_tokens + cache_creation_tokens + output_tokens) AS tokens,
       SUM(CASE WHEN status = 'success' THEN 0 ELSE 1 END) AS failed
FROM usage_logs WHERE created_at >= :since;

-- name: admin_cost_since
SELECT currency, SUM(cost) AS cost FROM usage_logs
WHERE created_at >= :since AND cost > 0
GROUP BY currency ORDER BY currency;

-- name: admin_paid_orders_since
SELECT amount FROM orders WHERE status = 'paid' AND paid_at >= :since;

-- name: admin_users_page
-- Filters: empty string = any. Without a status filter deleted accounts are left out.
SELECT u.id, u.email, u.name, u.status, u.is_admin, u.email_verified, u.created_at,
       s.plan, s.tokens_used,
       (SELECT COUNT(*) FROM api_keys k
        WHERE k.user_id = u.id AND k.revoked_at IS NULL) AS active_keys,
       (SELECT MAX(l.created_at) FROM usage_logs l WHERE l.user_id = u.id) AS last_request_at
FROM users u LEFT JOIN subscriptions s ON s.user_id = u.id
WHERE (:pattern = '' OR u.email LIKE :pattern ESCAPE '\' OR lower(u.name) LIKE :pattern ESCAPE '\')
  AND (:plan = '' OR s.plan = :plan)
  AND ((:status = '' AND u.status != 'deleted') OR u.status = :status)
ORDER BY u.created_at DESC, u.id DESC
LIMIT :limit OFFSET :offset;

-- name: admin_users_count
SELECT COUNT(*) AS total
FROM users u LEFT JOIN subscriptions s ON s.user_id = u.id
WHERE (:pattern = '' OR u.email LIKE :pattern ESCAPE '\' OR lower(u.name) LIKE :pattern ESCAPE '\')
  AND (:plan = '' OR s.plan = :plan)
  AND ((:status = '' AND u.status != 'deleted') OR u.status = :status);

-- name: admin_user_row
SELECT u.id, u.email, u.name, u.status, u.is_admin, u.email_verified, u.created_at,
       s.plan, s.tokens_used,
       (SELECT COUNT(*) FROM api_keys k
        WHERE k.user_id = u.id AND k.revoked_at IS NULL) AS active_keys,
       (SELECT MAX(l.created_at) FROM usage_logs l WHERE l.user_id = u.id) AS last_request_at
FROM users u LEFT JOIN subscriptions s ON s.user_id = u.id
WHERE u.id = :id;

-- name: admin_requests_by_ingress
-- Requests per client API (anthropic, chat, responses) since a moment.
SELECT ingress, COUNT(*) AS requests FROM usage_logs WHERE created_at >= :since
GROUP BY ingress ORDER BY requests DESC;

-- name: admin_cost_by_provider_day
SELECT CAST(floor(created_at / 86400) AS INTEGER) AS day, provider, currency,
       COUNT(*) AS requests,
       SUM(input_tokens + cache_read_tokens + cache_creation_tokens) AS input_tokens,
       SUM(output_tokens) AS output_tokens, SUM(cost) AS cost
FROM usage_logs
WHERE created_at >= :since
GROUP BY CAST(floor(created_at / 86400) AS INTEGER), provider, currency
ORDER BY day DESC, provider;

-- name: audit_insert
INSERT INTO audit_log (actor_id, actor_email, action, target, detail, ip, created_at)
VALUES (:actor_id, :actor_email, :action, :target, :detail, :ip, :now);

-- name: audit_recent
-- Filters: '' = any. actor and target are LIKE patterns (lower case, escaped by the
-- caller); action is exact; [since, until) is the date range.
SELECT * FROM audit_log
WHERE (:actor = '' OR lower(actor_email) LIKE :actor ESCAPE '\')
  AND (:action = '' OR action = :action)
  AND (:target = '' OR lower(target) LIKE :target ESCAPE '\')
  AND created_at >= :since AND created_at < :until
ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset;

-- name: audit_count
SELECT COUNT(*) AS total FROM audit_log
WHERE (:actor = '' OR lower(actor_email) LIKE :actor ESCAPE '\')
  AND (:action = '' OR action = :action)
  AND (:target = '' OR lower(target) LIKE :target ESCAPE '\')
  AND created_at >= :since AND created_at < :until;

-- name: audit_actions
-- Every action name the log holds, for the filter's list.
SELECT DISTINCT action FROM audit_log ORDER BY action;

-- name: audit_of_target
-- Entries about one user: the target is written as "user:<id> (<e-mail>)".
SELECT * FROM audit_log WHERE target LIKE :prefix ORDER BY created_at DESC, id DESC LIMIT 50;

-- name: margin_orders_paid
-- Revenue: every order that was paid in the window (later refunds are subtracted apart).
SELECT out_trade_no, plan, amount, paid_at FROM orders
WHERE paid_at IS NOT NULL AND paid_at >= :since AND status IN ('paid', 'refunded')
ORDER BY paid_at;

-- name: margin_refunds_done
-- Refunds paid out in the window, on the day Alipay confirmed them, under the order's plan.
SELECT r.amount, r.done_at, o.plan FROM order_refunds r
JOIN orders o ON o.out_trade_no = r.out_trade_no
WHERE r.status = 'done' AND r.done_at IS NOT NULL AND r.done_at >= :since
ORDER BY r.done_at;

-- name: margin_cost_by_day_plan
-- Upstream cost per UTC day, plan and currency. Rows written before usage_logs.plan
-- existed (NULL) are counted under the user's plan of today and flagged as such.
SELECT CAST(floor(l.created_at / 86400) AS INTEGER) AS day,
       COALESCE(l.plan, s.plan, '') AS billed_plan,
       CASE WHEN l.plan IS NULL THEN 1 ELSE 0 END AS plan_guessed,
       l.currency AS currency, COUNT(*) AS requests, SUM(l.cost) AS cost
FROM usage_logs l LEFT JOIN subscriptions s ON s.user_id = l.user_id
WHERE l.created_at >= :since
GROUP BY CAST(floor(l.created_at / 86400) AS INTEGER), COALESCE(l.plan, s.plan, ''),
         CASE WHEN l.plan IS NULL THEN 1 ELSE 0 END, l.currency
ORDER BY day;
