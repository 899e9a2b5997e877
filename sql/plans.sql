-- Plans: seeded by the first migration, overridden from the config file on start.

-- name: plan_upsert
INSERT INTO plans (name, price_month, monthly_tokens, rpm, rpd, max_keys, max_input_tokens, concurrency, sort_order, updated_at)
VALUES (:name, :price_month, :monthly_tokens, :rpm, :rpd, :max_keys, :max_input_tokens, :concurrency, :sort_order, :now)
ON CONFLICT (name) DO UPDATE SET
    price_month = excluded.price_month, monthly_tokens = excluded.monthly_tokens,
    rpm = excluded.rpm, rpd = excluded.rpd, max_keys = excluded.max_keys,
    max_input_tokens = excluded.max_input_tokens, concurrency = excluded.concurrency,
    sort_order = excluded.sort_order,
    updated_at = excluded.updated_at;

-- name: plan_all
SELECT * FROM plans ORDER BY sort_order, name;

-- name: plan_by_name
SELECT * FROM plans WHERE name = :name;
