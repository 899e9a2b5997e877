-- Usage records: one row per request that reached a provider.

-- name: usage_insert
INSERT INTO usage_logs (request_id, user_id, key_id, client_model, provider, upstream_model,
    input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, thinking_tokens,
    estimated, cost, currency, ttft_ms, tokens_per_second, duration_ms, stream, status,
    error_type, created_at, ingress)
VALUES (:request_id, :user_id, :key_id, :client_model, :provider, :upstream_model,
    :input_tokens, :output_tokens, :cache_read_tokens, :cache_creation_tokens, :thinking_tokens,
    :estimated, :cost, :currency, :ttft_ms, :tokens_per_second, :duration_ms, :stream, :status,
    :error_type, :created_at, :ingress);

-- name: usage_requests_since
SELECT COUNT(*) AS n FROM usage_logs WHERE user_id = :user_id AND created_at >= :since;

-- name: key_touch
UPDATE api_keys SET last_used_at = :last_used_at WHERE id = :key_id;

-- name: usage_summary
-- Per user, provider and model since a moment; EMAIL NULL means everyone.
SELECT u.email AS email, l.provider AS provider, l.upstream_model AS upstream_model,
       l.currency AS currency, COUNT(*) AS requests,
       SUM(l.input_tokens) AS input_tokens, SUM(l.output_tokens) AS output_tokens,
       SUM(l.cache_read_tokens) AS cache_read_tokens,
       SUM(l.cache_creation_tokens) AS cache_creation_tokens,
       SUM(l.cost) AS cost,
       SUM(CASE WHEN l.status = 'success' THEN 0 ELSE 1 END) AS failed
FROM usage_logs l LEFT JOIN users u ON u.id = l.user_id
WHERE l.created_at >= :since AND (:email IS NULL OR u.email = :email)
GROUP BY u.email, l.provider, l.upstream_model, l.currency
ORDER BY u.email, cost DESC;
