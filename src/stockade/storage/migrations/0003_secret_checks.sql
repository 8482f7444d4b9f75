-- What the pepper and each KEK id were when this store was first used (keys.pepper_check, Keyring.checks): a
-- node or CLI with other material is refused instead of writing hashes or envelopes nobody else can use.
CREATE TABLE secret_checks (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
