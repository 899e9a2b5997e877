-- Remote-control sessions and the connections to them.

-- name: remote_session_insert
INSERT INTO remote_sessions (id, user_id, status, created_at, expires_at)
VALUES (:id, :user_id, 'waiting', :now, :expires_at);

-- name: remote_session_by_id
SELECT * FROM remote_sessions WHERE id = :id;

-- name: remote_sessions_of_user
SELECT * FROM remote_sessions WHERE user_id = :user_id ORDER BY created_at DESC LIMIT :limit;

-- name: remote_session_set_status
UPDATE remote_sessions SET status = :status WHERE id = :id AND ended_at IS NULL;

-- name: remote_session_end
UPDATE remote_sessions SET status = :status, ended_at = :now, end_reason = :reason
WHERE id = :id AND ended_at IS NULL;

-- name: remote_sessions_expired
SELECT id FROM remote_sessions WHERE ended_at IS NULL AND expires_at <= :now;

-- name: remote_connection_insert
INSERT INTO remote_connections (session_id, user_id, role, connected_at)
VALUES (:session_id, :user_id, :role, :now);

-- name: remote_connection_end
UPDATE remote_connections SET ended_at = :now, end_reason = :reason WHERE id = :id;

-- name: remote_connections_of_session
SELECT * FROM remote_connections WHERE session_id = :session_id ORDER BY id;
