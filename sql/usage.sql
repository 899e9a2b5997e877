-- Usage records: one row per request that reached a provider (docs/limits.md).

-- name: usage_insert
-- request_id is unique: a flush retried after a failed COMMIT, or a journal replayed after a
-- crash, can never write a request twice. The plan is the user's when the row is written
-- (the margin report's cost by plan).
INSERT INTO usage_logs (request_id, user_id, key_id, client_model, provider, upstream_model,
    input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, thinking_tokens,
    estimated, cost, currency, ttft_ms, tokens_per_second, duration_ms, stream, status,
    error_type, attempts, created_at, ingress, plan)
VALUES (:request_id, :user_id, :key_id, :client_model, :provider, :upstream_model,
    :input_tokens, :output_tokens, :cache_read_tokens, :cache_creation_tokens, :thinking_tokens,
    :estimated, :cost, :currency, :ttft_ms, :tokens_per_second, :duration_ms, :stream, :status,
    :error_type, :attempts, :created_at, :ingress,
    (SELECT s.plan FROM subscriptions s WHERE s.user_id = :user_id))
ON CONFLICT (request_id) DO NOTHING;

-- name: usage_row_savepoint
SAVEPOINT usage_row;

-- name: usage_row_release
RELEASE SAVEPOINT usage_row;

-- name: usage_row_rollback
ROLLBACK TO SAVEPOINT usage_row;

-- name: usage_request_ids
-- Which of a set of request ids already have a row (journal replay).
SELECT request_id FROM usage_logs WHERE request_id IN (SELECT value FROM json_each(:ids));

-- name: usage_requests_since
SELECT COUNT(*) AS n FROM usage_logs WHERE user_id = :user_id AND created_at >= :since;

-- name: key_touch
UPDATE api_keys SET last_used_at = :last_used_at WHERE id = :key_id;

-- name: usage_summary
-- Per user, client API (ingress), provider and model since a moment; EMAIL NULL means
-- everyone.
SELECT u.email AS email, l.ingress AS ingress, l.provider AS provider,
       l.upstream_model AS upstream_model,
       l.currency AS currency, COUNT(*) AS requests,
       SUM(l.input_tokens) AS input_tokens, SUM(l.output_tokens) AS output_tokens,
       SUM(l.cache_read_tokens) AS cache_read_tokens,
       SUM(l.cache_creation_tokens) AS cache_creation_tokens,
       SUM(l.cost) AS cost,
       SUM(CASE WHEN l.status = 'success' THEN 0 ELSE 1 END) AS failed
FROM usage_logs l LEFT JOIN users u ON u.id = l.user_id
WHERE l.created_at >= :since AND (CAST(:email AS TEXT) IS NULL OR u.email = :email)
GROUP BY u.email, l.ingress, l.provider, l.upstream_model, l.currency
ORDER BY u.email, cost DESC;

-- name: usage_failures
-- Requests that did not succeed, per user, status and error type, since a moment (the
-- `usage` command lists them under its table); EMAIL NULL means everyone.
SELECT u.email AS email, l.status AS status, l.error_type AS error_type,
       COUNT(*) AS requests, SUM(l.input_tokens + l.output_tokens) AS tokens
FROM usage_logs l LEFT JOIN users u ON u.id = l.user_id
WHERE l.created_at >= :since AND l.status <> 'success'
  AND (CAST(:email AS TEXT) IS NULL OR u.email = :email)
GROUP BY u.email, l.status, l.error_type
ORDER BY u.email, requests DESC, l.status, l.error_type;

-- name: subscription_charge
-- Journal replay after a crash: tokens of rows that never reached SQLite, added as a delta.
UPDATE subscriptions SET tokens_used = tokens_used + :tokens WHERE user_id = :user_id;
