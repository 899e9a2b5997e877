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
