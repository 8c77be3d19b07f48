-- The authorization-code flow: client redirect URIs, authorization codes,
-- browser (single sign-on) sessions and remembered consent. Same columns in
-- both dialects; secrets (codes, session cookies) are stored only as digests.

-- Space-separated exact redirect URIs; first_party clients skip consent.
ALTER TABLE clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN post_logout_redirect_uris TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN first_party BIGINT NOT NULL DEFAULT 0;

CREATE TABLE authorization_codes (
    code_digest    BYTEA   PRIMARY KEY,
    client_id      TEXT   NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE,
    user_id        TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    redirect_uri   TEXT   NOT NULL,
    scope          TEXT   NOT NULL,
    nonce          TEXT,
    code_challenge TEXT   NOT NULL,
    auth_time      BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    -- Set when the code is redeemed, with the session (token family) it opened.
    used_at        BIGINT,
    family_id      TEXT,
    -- Set when a redeemed code is presented again.
    replayed_at    BIGINT
);
CREATE INDEX authorization_codes_expiry ON authorization_codes(expires_at);

CREATE TABLE browser_sessions (
    id           TEXT   PRIMARY KEY,
    token_digest BYTEA   NOT NULL UNIQUE,
    user_id      TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    auth_time    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    ended_at     BIGINT
);
CREATE INDEX browser_sessions_user ON browser_sessions(user_id);

CREATE TABLE consents (
    user_id    TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_id  TEXT   NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE,
    scope      TEXT   NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
