-- Workspace events (issue 14, decision 28, SQLite dialect): a lifecycle event may concern the
-- workspace rather than one credential (a webhook endpoint disabled after failing): its
-- credential_id is NULL. Member filters (`credential_id IN (...)`) never match NULL, so only
-- operators and workspace admins read these events.
--
-- SQLite cannot drop a NOT NULL constraint: the table is rebuilt, its rows and cursor
-- high-water mark (AUTOINCREMENT: a cursor is never reused) kept.
CREATE TABLE credential_events_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    at            INTEGER NOT NULL,
    workspace_id  TEXT    NOT NULL,
    credential_id TEXT    NULL,
    kind          TEXT    NOT NULL,
    actor         TEXT    NULL,
    cause         TEXT    NULL,
    detail        TEXT    NULL
) STRICT;

INSERT INTO credential_events_new (id, event_id, at, workspace_id, credential_id, kind, actor, cause, detail)
    SELECT id, event_id, at, workspace_id, credential_id, kind, actor, cause, detail FROM credential_events;

DELETE FROM sqlite_sequence WHERE name = 'credential_events_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'credential_events_new', seq FROM sqlite_sequence WHERE name = 'credential_events';

DROP TABLE credential_events;
ALTER TABLE credential_events_new RENAME TO credential_events;

CREATE INDEX credential_events_workspace_idx ON credential_events (workspace_id, id);
CREATE INDEX credential_events_credential_idx ON credential_events (credential_id, id);
CREATE INDEX credential_events_at_idx ON credential_events (at);

-- Per-endpoint event-type filter: the kinds an endpoint receives, comma-separated
-- (`connected,disconnected`); NULL: every kind. Applied when an event fans out.
ALTER TABLE webhook_endpoints ADD COLUMN event_types TEXT NULL;
