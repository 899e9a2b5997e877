-- Refunds of paid orders (issue 18): one row per refund request sent to Alipay.
-- `out_request_no` is Alipay's idempotency key for the request: a retry after a failure
-- or a lost answer must reuse it, so a refund is never paid out twice.
CREATE TABLE order_refunds (
    id             INTEGER PRIMARY KEY,
    out_trade_no   TEXT NOT NULL REFERENCES orders(out_trade_no),
    out_request_no TEXT NOT NULL UNIQUE,
    amount         TEXT NOT NULL,                    -- yuan, decimal string
    reason         TEXT NOT NULL DEFAULT '',
    status         TEXT NOT NULL DEFAULT 'pending',  -- pending | done | failed
    error          TEXT,
    actor_id       INTEGER REFERENCES users(id),
    created_at     REAL NOT NULL,
    done_at        REAL
);
CREATE INDEX order_refunds_order ON order_refunds(out_trade_no, created_at);
