-- PostgreSQL spellings of the few named queries whose SQLite form is not portable. Each
-- replaces the query of the same name from sql/*.sql; the parameters stay the same.

-- name: usage_request_ids
-- :ids is a JSON array of request ids (json_each is SQLite's).
SELECT request_id FROM usage_logs
WHERE request_id IN (SELECT json_array_elements_text(CAST(:ids AS json)));
