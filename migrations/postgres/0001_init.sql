-- latchkey schema, PostgreSQL dialect. Kept column-for-column identical to
-- migrations/sqlite/0001_init.sql: timestamps are BIGINT Unix seconds, flags
-- are BIGINT 0/1, secrets are stored only as digests, private keys only wrapped.

CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    email         TEXT,
    disabled      BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE TABLE user_roles (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role    TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE TABLE clients (
    client_id     TEXT   PRIMARY KEY,
    secret_digest BYTEA,
    is_public     BIGINT NOT NULL,
    grant_types   TEXT   NOT NULL,
    scopes        TEXT   NOT NULL,
    token_alg     TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE token_families (
    id             TEXT   PRIMARY KEY,
    user_id        TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_id      TEXT   NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE,
    scope          TEXT   NOT NULL,
    auth_time      BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX token_families_user ON token_families(user_id);

CREATE TABLE refresh_tokens (
    token_digest BYTEA   PRIMARY KEY,
    family_id    TEXT   NOT NULL REFERENCES token_families(id) ON DELETE CASCADE,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

-- Access tokens revoked before their expiry (RFC 7009); rows can be dropped
-- once expires_at has passed.
CREATE TABLE revoked_access_tokens (
    jti        TEXT   PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid             TEXT   PRIMARY KEY,
    alg             TEXT   NOT NULL,
    state           TEXT   NOT NULL CHECK (state IN ('pending', 'active', 'retiring', 'retired')),
    public_der      BYTEA   NOT NULL,
    wrapped_private BYTEA,
    kms_provider    TEXT   NOT NULL,
    kms_key_ref     TEXT,
    created_at      BIGINT NOT NULL,
    activate_at     BIGINT NOT NULL,
    activated_at    BIGINT,
    retiring_at     BIGINT,
    retire_at       BIGINT,
    retired_at      BIGINT,
    retired_reason  TEXT
);
-- The database itself refuses a second active key for one algorithm.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys(alg) WHERE state = 'active';

-- One row. Every key-ring change bumps `version` in the same transaction; the
-- UPDATE that bumps it is also the lock that serialises ring changes across
-- processes and replicas.
CREATE TABLE keyring_state (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO keyring_state (id, version) VALUES (1, 0);

-- Durable record of key transitions and admin actions (who, what, when, why).
CREATE TABLE events (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT  NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT,
    detail  TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX events_at ON events(at);
