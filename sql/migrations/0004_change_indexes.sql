-- The key cache asks every 0.4 s which keys, users and subscriptions changed: index each.

CREATE INDEX IF NOT EXISTS subscriptions_updated ON subscriptions(updated_at);
