-- Identity: consumers, API keys, OAuth clients, signing keys, revoked tokens, admin tokens, the admin change
-- log and the change feed. Portable SQL (sqlite and postgresql): secrets appear only as hex HMACs, sealed
-- private keys as base64 envelopes; lists and maps as JSON text; times as epoch seconds.

CREATE TABLE consumers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    plan TEXT,
    metadata TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    consumer_id TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL UNIQUE,
    env TEXT NOT NULL,
    scopes TEXT NOT NULL,
    name TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION,
    rotated_to TEXT
);
CREATE INDEX api_keys_consumer ON api_keys (consumer_id);

CREATE TABLE oauth_clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    allowed_scopes TEXT NOT NULL,
    secret_hash TEXT,
    jwks TEXT,
    tls_subject TEXT,
    consumer_id TEXT REFERENCES consumers (id) ON DELETE SET NULL,
    disabled_at DOUBLE PRECISION,
    metadata TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    private_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    created_at DOUBLE PRECISION NOT NULL,
    activated_at DOUBLE PRECISION,
    not_after DOUBLE PRECISION
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);

CREATE TABLE admin_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
);

CREATE TABLE admin_changes (
    seq BIGINT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE TABLE change_feed (
    seq BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX change_feed_at ON change_feed (at);

-- One row. Writers increment `value` first thing in their transaction, which serialises them, so sequence
-- numbers commit in order and a poller reading "seq > n" never skips one. `pruned_to`: the feed's low mark.
CREATE TABLE change_seq (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL,
    pruned_to BIGINT NOT NULL
);
INSERT INTO change_seq (id, value, pruned_to) VALUES (1, 0, 0);
