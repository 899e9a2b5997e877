-- Accounts, keys, plans, subscriptions, usage, orders and remote sessions.
-- Timestamps are Unix seconds (REAL); money is a decimal string in the site currency.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL DEFAULT '',
    password_hash  TEXT NOT NULL DEFAULT '',
    is_admin       INTEGER NOT NULL DEFAULT 0,
    status         TEXT NOT NULL DEFAULT 'active',   -- active | suspended | pending
    email_verified INTEGER NOT NULL DEFAULT 0,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
);

CREATE TABLE plans (
    name             TEXT PRIMARY KEY,
    price_month      TEXT NOT NULL DEFAULT '0',
    monthly_tokens   INTEGER NOT NULL DEFAULT 0,      -- 0 = unlimited
    rpm              INTEGER NOT NULL DEFAULT 0,
    rpd              INTEGER NOT NULL DEFAULT 0,
    max_keys         INTEGER NOT NULL DEFAULT 1,
    max_input_tokens INTEGER NOT NULL DEFAULT 0,
    sort_order       INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL NOT NULL
);

INSERT INTO plans (name, price_month, monthly_tokens, rpm, rpd, max_keys, max_input_tokens, sort_order, updated_at) VALUES
    ('free',    '0',  50000,    10,  0, 1,  64000, 0, 0),
    ('starter', '9',  2000000,  30,  0, 3,  0,     1, 0),
    ('pro',     '29', 10000000, 60,  0, 5,  0,     2, 0),
    ('team',    '99', 50000000, 120, 0, 10, 0,     3, 0);

CREATE TABLE subscriptions (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    plan          TEXT NOT NULL REFERENCES plans(name),
    period_start  REAL NOT NULL,
    period_end    REAL NOT NULL,
    paid_until    REAL,                                -- NULL: the plan does not expire
    tokens_used   INTEGER NOT NULL DEFAULT 0,          -- in the current period
    requests_used INTEGER NOT NULL DEFAULT 0,          -- in the current period
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL DEFAULT '',
    prefix       TEXT NOT NULL,                        -- shown to the user, e.g. sk-llmapi-AbCd
    key_hash     TEXT NOT NULL UNIQUE,                 -- SHA-256 hex of the full key
    rpm_override INTEGER,                              -- NULL: the plan's rpm
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    last_used_at REAL,
    revoked_at   REAL
);
CREATE INDEX api_keys_user ON api_keys(user_id);
CREATE INDEX api_keys_updated ON api_keys(updated_at);
CREATE INDEX users_updated ON users(updated_at);

CREATE TABLE usage_logs (
    id                    INTEGER PRIMARY KEY,
    request_id            TEXT NOT NULL,
    user_id               INTEGER,
    key_id                INTEGER,
    client_model          TEXT NOT NULL DEFAULT '',
    provider              TEXT NOT NULL DEFAULT '',
    upstream_model        TEXT NOT NULL DEFAULT '',
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    thinking_tokens       INTEGER NOT NULL DEFAULT 0,
    estimated             INTEGER NOT NULL DEFAULT 0,
    cost                  REAL NOT NULL DEFAULT 0,
    currency              TEXT NOT NULL DEFAULT '',
    ttft_ms               REAL,
    tokens_per_second     REAL,
    duration_ms           REAL NOT NULL DEFAULT 0,
    stream                INTEGER NOT NULL DEFAULT 0,
    status                TEXT NOT NULL,               -- success | error | client_disconnect
    error_type            TEXT,
    created_at            REAL NOT NULL
);
CREATE INDEX usage_logs_user_time ON usage_logs(user_id, created_at);
CREATE INDEX usage_logs_time ON usage_logs(created_at);

CREATE TABLE orders (
    id           INTEGER PRIMARY KEY,
    out_trade_no TEXT NOT NULL UNIQUE,
    user_id      INTEGER NOT NULL REFERENCES users(id),
    plan         TEXT NOT NULL REFERENCES plans(name),
    amount       TEXT NOT NULL,                        -- yuan, decimal string, from the plan
    subject      TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',      -- pending | paid | closed | refunded
    qr_code      TEXT,
    trade_no     TEXT,
    created_at   REAL NOT NULL,
    paid_at      REAL,
    closed_at    REAL,
    updated_at   REAL NOT NULL
);
CREATE INDEX orders_user ON orders(user_id, created_at);
CREATE INDEX orders_status ON orders(status, created_at);

CREATE TABLE remote_sessions (
    id         TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    status     TEXT NOT NULL DEFAULT 'waiting',        -- waiting | connected | ended | expired
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    ended_at   REAL,
    end_reason TEXT
);
CREATE INDEX remote_sessions_user ON remote_sessions(user_id, created_at);
