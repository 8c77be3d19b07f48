-- The audit log: the events table gains the fields of a security event.
-- `action` holds the event type's wire name, `detail` its one-line summary,
-- `data` its JSON detail (an object, as text). Kept identical to
-- migrations/postgres/0004_audit.sql.
ALTER TABLE events ADD COLUMN severity   TEXT NOT NULL DEFAULT 'info';
ALTER TABLE events ADD COLUMN user_id    TEXT;
ALTER TABLE events ADD COLUMN client_id  TEXT;
ALTER TABLE events ADD COLUMN ip         TEXT;
ALTER TABLE events ADD COLUMN user_agent TEXT;
ALTER TABLE events ADD COLUMN session_id TEXT;
ALTER TABLE events ADD COLUMN data       TEXT NOT NULL DEFAULT '{}';

UPDATE events SET severity = 'critical' WHERE action = 'key.retire_emergency';
UPDATE events SET severity = 'warning'
    WHERE action IN ('key.transition_failed', 'key.rotate_now', 'user.disable');

-- Queries page by id (newest first) within a filter.
CREATE INDEX events_user_id   ON events(user_id, id);
CREATE INDEX events_client_id ON events(client_id, id);
CREATE INDEX events_action_id ON events(action, id);
