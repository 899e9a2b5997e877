-- API keys: only the SHA-256 hash and a display prefix are stored.

-- name: key_insert
INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at, updated_at)
VALUES (:user_id, :name, :prefix, :key_hash, :now, :now);

-- name: key_count_active
SELECT COUNT(*) AS n FROM api_keys WHERE user_id = :user_id AND revoked_at IS NULL;

-- name: key_auth_by_hash
-- Everything the hot path needs to authenticate and limit a request, in one row.
SELECT k.id AS key_id, k.user_id, k.prefix, k.rpm_override, k.revoked_at,
       u.status AS user_status, u.email, s.plan
FROM api_keys k
JOIN users u ON u.id = k.user_id
LEFT JOIN subscriptions s ON s.user_id = k.user_id
WHERE k.key_hash = :key_hash;

-- name: key_auth_changed_since
-- Keys whose key row, user row or subscription changed: the cache refreshes these. Three
-- indexed lookups joined by UNION, so the poll stays cheap with many keys.
SELECT k.key_hash, k.id AS key_id, k.user_id, k.prefix, k.rpm_override, k.revoked_at,
       u.status AS user_status, u.email, s.plan
FROM api_keys k
JOIN users u ON u.id = k.user_id
LEFT JOIN subscriptions s ON s.user_id = k.user_id
WHERE k.id IN (
    SELECT id FROM api_keys WHERE updated_at >= :since
    UNION SELECT id FROM api_keys WHERE user_id IN (
        SELECT id FROM users WHERE updated_at >= :since
        UNION SELECT user_id FROM subscriptions WHERE updated_at >= :since));

-- name: key_revoke_by_prefix
UPDATE api_keys SET revoked_at = :now, updated_at = :now
WHERE prefix = :prefix AND revoked_at IS NULL;

-- name: keys_by_prefix
SELECT k.*, u.email FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.prefix = :prefix;

-- name: key_set_rpm
UPDATE api_keys SET rpm_override = :rpm, updated_at = :now WHERE id = :key_id;

-- name: keys_list
-- The operator's `keys list [EMAIL]`: every key (never its hash), newest first.
SELECT k.id, k.prefix, k.name, k.created_at, k.last_used_at, k.revoked_at, k.rpm_override,
       u.email
FROM api_keys k JOIN users u ON u.id = k.user_id
WHERE (:email = '' OR u.email = :email)
ORDER BY k.id DESC;
