-- Account lockout: failed password logins counted per user, and the time
-- until which the account refuses logins (NULL: not locked).
ALTER TABLE users ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT;
