-- PostgreSQL twin of sql/migrations/0004_change_indexes.sql.
-- The key cache asks every 0.4 s which keys, users and subscriptions changed: index each.

CREATE INDEX IF NOT EXISTS subscriptions_updated ON subscriptions(updated_at);
