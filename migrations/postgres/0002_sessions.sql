-- Sessions (issue: sessions users can trust). A session is one refresh-token
-- family: it records where it came from and when it was last used.
ALTER TABLE token_families ADD COLUMN device_label TEXT;
ALTER TABLE token_families ADD COLUMN client_ip TEXT;
ALTER TABLE token_families ADD COLUMN last_used_at BIGINT;
UPDATE token_families SET last_used_at = created_at;
CREATE INDEX token_families_expires ON token_families(expires_at);
CREATE INDEX refresh_tokens_expires ON refresh_tokens(expires_at);
CREATE INDEX revoked_access_tokens_expires ON revoked_access_tokens(expires_at);

-- logout-all: latchkey's own endpoints refuse a user's access tokens issued
-- before this instant (Unix seconds; 0 = never set).
ALTER TABLE users ADD COLUMN tokens_not_before BIGINT NOT NULL DEFAULT 0;

-- Browser clients whose refresh token travels only in an HttpOnly cookie, the
-- origins allowed to use it (space-separated), and resource servers allowed to
-- introspect tokens issued to other clients.
ALTER TABLE clients ADD COLUMN refresh_cookie BIGINT NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN origins TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN may_introspect BIGINT NOT NULL DEFAULT 0;

-- One row. Bumped by every change that must invalidate cached access-token
-- checks (session ended, user disabled, logout-all, jti denied), so that each
-- server's cache can notice changes made by another replica or the CLI.
CREATE TABLE revocation_state (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO revocation_state (id, version) VALUES (1, 0);
