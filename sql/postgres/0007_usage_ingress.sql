-- PostgreSQL twin of sql/migrations/0007_usage_ingress.sql.
-- Which client API a request came in on: anthropic (/v1/messages), chat
-- (/v1/chat/completions) or responses (/v1/responses). Rows before this migration were all
-- Anthropic requests, which the default records.

ALTER TABLE usage_logs ADD COLUMN ingress text NOT NULL DEFAULT 'anthropic';
