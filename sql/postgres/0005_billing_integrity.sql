-- PostgreSQL twin of sql/migrations/0005_billing_integrity.sql.
-- Billing integrity (issue 14): per-plan concurrency, one usage row per request id, the
-- number of upstream attempts behind each row.

ALTER TABLE plans ADD COLUMN concurrency bigint NOT NULL DEFAULT 0;  -- 0 = unlimited
UPDATE plans SET concurrency = 4 WHERE name = 'free';
UPDATE plans SET concurrency = 8 WHERE name = 'starter';
UPDATE plans SET concurrency = 16 WHERE name = 'pro';
UPDATE plans SET concurrency = 32 WHERE name = 'team';

ALTER TABLE usage_logs ADD COLUMN attempts bigint NOT NULL DEFAULT 1;

-- A retried flush (or a journal replay after a crash) must never write a row twice: keep the
-- first row of any request id written twice before this migration, then make it unique.
DELETE FROM usage_logs WHERE id NOT IN (SELECT MIN(id) FROM usage_logs GROUP BY request_id);
CREATE UNIQUE INDEX usage_logs_request_id ON usage_logs(request_id);
