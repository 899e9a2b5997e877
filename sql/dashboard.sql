-- What a signed-in user sees about their own plan, usage, keys and orders.

-- name: dash_plan_of_user
SELECT s.plan, s.period_start, s.period_end, s.paid_until, s.tokens_used, s.requests_used,
       p.price_month, p.monthly_tokens, p.rpm, p.rpd, p.max_keys, p.max_input_tokens
FROM subscriptions s JOIN plans p ON p.name = s.plan
WHERE s.user_id = :user_id;

-- name: dash_requests_since
SELECT COUNT(*) AS requests FROM usage_logs WHERE user_id = :user_id AND created_at >= :since;

-- name: dash_speed_since
-- Averages over successful requests only: a failed request has no meaningful speed.
SELECT AVG(ttft_ms) AS ttft_ms, AVG(tokens_per_second) AS tokens_per_second
FROM usage_logs
WHERE user_id = :user_id AND created_at >= :since AND status = 'success';

-- name: dash_daily_usage
-- One row per UTC day that has usage; days are counted from the Unix epoch.
SELECT CAST(floor(created_at / 86400) AS INTEGER) AS day, COUNT(*) AS requests,
       SUM(input_tokens + cache_read_tokens + cache_creation_tokens) AS input_tokens,
       SUM(output_tokens) AS output_tokens
FROM usage_logs
WHERE user_id = :user_id AND created_at >= :since
GROUP BY CAST(floor(created_at / 86400) AS INTEGER)
ORDER BY day;

-- name: dash_recent_requests
SELECT l.request_id, l.client_model, l.upstream_model, l.provider, l.input_tokens,
       l.output_tokens, l.cache_read_tokens, l.cache_creation_tokens, l.ttft_ms,
       l.tokens_per_second, l.duration_ms, l.stream, l.status, l.error_type, l.created_at,
       l.ingress, k.prefix AS key_prefix, k.name AS key_name
FROM usage_logs l LEFT JOIN api_keys k ON k.id = l.key_id
WHERE l.user_id = :user_id
ORDER BY l.created_at DESC, l.id DESC
LIMIT :limit;

-- name: dash_keys
SELECT id, name, prefix, created_at, last_used_at
FROM api_keys
WHERE user_id = :user_id AND revoked_at IS NULL
ORDER BY created_at DESC, id DESC;

-- name: dash_key_revoke
-- The user id in the condition is what keeps one user away from another user's keys.
UPDATE api_keys SET revoked_at = :now, updated_at = :now
WHERE id = :id AND user_id = :user_id AND revoked_at IS NULL;

-- name: dash_orders
SELECT out_trade_no, plan, amount, subject, status, created_at, paid_at
FROM orders WHERE user_id = :user_id
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: seed_usage_insert
-- Synthetic rows for demos and tests (gateway/usage_seed.py), same columns as real ones.
INSERT INTO usage_logs (request_id, user_id, key_id, client_model, provider, upstream_model,
    input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, thinking_tokens,
    estimated, cost, currency, ttft_ms, tokens_per_second, duration_ms, stream, status,
    error_type, created_at, plan)
VALUES (:request_id, :user_id, :key_id, :client_model, :provider, :upstream_model,
    :input_tokens, :output_tokens, 0, 0, 0, 0, :cost, :currency, :ttft_ms, :tokens_per_second,
    :duration_ms, 1, :status, :error_type, :created_at,
    (SELECT s.plan FROM subscriptions s WHERE s.user_id = :user_id));

-- name: seed_subscription_charge
UPDATE subscriptions
SET tokens_used = tokens_used + :tokens, requests_used = requests_used + :requests
WHERE user_id = :user_id;

-- name: dash_tokens_between
-- Requests and tokens by kind in [since, until): today against yesterday, the breakdown.
SELECT COUNT(*) AS requests,
       COALESCE(SUM(input_tokens), 0) AS input_tokens,
       COALESCE(SUM(output_tokens), 0) AS output_tokens,
       COALESCE(SUM(thinking_tokens), 0) AS thinking_tokens,
       COALESCE(SUM(cache_read_tokens), 0) AS cache_read_tokens,
       COALESCE(SUM(cache_creation_tokens), 0) AS cache_creation_tokens
FROM usage_logs WHERE user_id = :user_id AND created_at >= :since AND created_at < :until;
