-- Orders and the subscription changes a payment makes (gateway/payments.py).

-- name: order_insert
INSERT INTO orders (out_trade_no, user_id, plan, amount, subject, status, created_at, updated_at)
VALUES (:out_trade_no, :user_id, :plan, :amount, :subject, 'pending', :now, :now);

-- name: order_set_qr_code
UPDATE orders SET qr_code = :qr_code, updated_at = :now
WHERE out_trade_no = :out_trade_no AND status = 'pending';

-- name: order_by_out_trade_no
SELECT * FROM orders WHERE out_trade_no = :out_trade_no;

-- name: order_of_user
-- The user id in the condition keeps one user away from another user's orders.
SELECT * FROM orders WHERE out_trade_no = :out_trade_no AND user_id = :user_id;

-- name: order_open_for_plan
-- A pending order of this user for this plan and price that still has a QR code to show.
SELECT * FROM orders
WHERE user_id = :user_id AND plan = :plan AND amount = :amount AND status = 'pending'
  AND qr_code IS NOT NULL AND created_at >= :since
ORDER BY created_at DESC, id DESC
LIMIT 1;

-- name: order_mark_paid
-- The paid transition: only a pending order, or a closed one paid late, becomes paid, so
-- of any number of notifications for the same order exactly one changes a row.
UPDATE orders SET status = 'paid', paid_at = :now, trade_no = :trade_no, updated_at = :now
WHERE out_trade_no = :out_trade_no AND status IN ('pending', 'closed');

-- name: order_close
UPDATE orders SET status = 'closed', closed_at = :now, updated_at = :now
WHERE out_trade_no = :out_trade_no AND status = 'pending';

-- name: orders_pending_since
SELECT * FROM orders WHERE status = 'pending' AND created_at <= :before
ORDER BY created_at, id
LIMIT :limit;

-- name: subscription_start_paid_period
-- A bought plan starts now: a new period with fresh counters, paid until its end.
UPDATE subscriptions
SET plan = :plan, period_start = :now, period_end = :period_end, paid_until = :period_end,
    tokens_used = 0, requests_used = 0, updated_at = :now
WHERE user_id = :user_id;

-- name: subscription_extend_paid_until
UPDATE subscriptions SET paid_until = :paid_until, updated_at = :now WHERE user_id = :user_id;

-- name: subscriptions_expired
SELECT user_id, plan, paid_until FROM subscriptions
WHERE paid_until IS NOT NULL AND paid_until <= :now;

-- name: subscription_expire
-- Back to the free plan once the paid time is over (the period carries on).
UPDATE subscriptions SET plan = 'free', paid_until = NULL, updated_at = :now
WHERE user_id = :user_id AND paid_until IS NOT NULL AND paid_until <= :now;

-- name: refund_insert
INSERT INTO order_refunds (out_trade_no, out_request_no, amount, reason, actor_id, created_at)
VALUES (:out_trade_no, :out_request_no, :amount, :reason, :actor_id, :now);

-- name: refund_mark_done
UPDATE order_refunds SET status = 'done', error = NULL, done_at = :now
WHERE out_request_no = :out_request_no;

-- name: refund_mark_failed
UPDATE order_refunds SET status = 'failed', error = :error WHERE out_request_no = :out_request_no;

-- name: refunds_of_order
SELECT * FROM order_refunds WHERE out_trade_no = :out_trade_no ORDER BY created_at, id;

-- name: refund_total_of_order
-- What is refunded or on its way (pending counts: it may have reached Alipay).
SELECT COALESCE(SUM(CAST(amount AS REAL)), 0) AS total FROM order_refunds
WHERE out_trade_no = :out_trade_no AND status IN ('pending', 'done');

-- name: order_mark_refunded
UPDATE orders SET status = 'refunded', updated_at = :now
WHERE out_trade_no = :out_trade_no AND status = 'paid';

-- name: subscription_end_paid_now
-- A fully refunded order takes back the time it bought: the paid time ends now and the
-- expiry job (or this same transaction's caller) moves the account to the free plan.
UPDATE subscriptions SET plan = 'free', paid_until = NULL, updated_at = :now
WHERE user_id = :user_id AND plan = :plan AND paid_until IS NOT NULL;

-- name: admin_orders_page
SELECT o.*, u.email AS user_email,
       (SELECT COALESCE(SUM(CAST(r.amount AS REAL)), 0) FROM order_refunds r
        WHERE r.out_trade_no = o.out_trade_no AND r.status = 'done') AS refunded
FROM orders o JOIN users u ON u.id = o.user_id
WHERE (:status = '' OR o.status = :status)
ORDER BY o.created_at DESC LIMIT :limit OFFSET :offset;

-- name: admin_orders_count
SELECT COUNT(*) AS n FROM orders WHERE (:status = '' OR status = :status);

-- name: admin_usage_export
SELECT CAST(floor(l.created_at / 86400) AS INTEGER) AS day, u.email AS user_email, COUNT(*) AS requests,
       SUM(l.input_tokens) AS input_tokens, SUM(l.output_tokens) AS output_tokens,
       SUM(l.thinking_tokens) AS thinking_tokens, SUM(l.cache_read_tokens) AS cache_read_tokens,
       SUM(l.cache_creation_tokens) AS cache_creation_tokens, SUM(l.cost) AS cost, l.currency
FROM usage_logs l LEFT JOIN users u ON u.id = l.user_id
WHERE l.created_at >= :since
GROUP BY day, l.user_id, u.email, l.currency ORDER BY day, user_email;
