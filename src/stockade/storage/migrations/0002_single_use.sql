-- Single-use values (client assertion jtis, RFC 7523 §3): one row until the value expires.
CREATE TABLE used_once (
    key TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX used_once_expiry ON used_once (expires_at);
