-- Workspace events (issue 14, decision 28, PostgreSQL dialect): a lifecycle event may concern
-- the workspace rather than one credential (a webhook endpoint disabled after failing): its
-- credential_id is NULL. Member filters (`credential_id IN (...)`) never match NULL, so only
-- operators and workspace admins read these events.
ALTER TABLE credential_events ALTER COLUMN credential_id DROP NOT NULL;

-- Per-endpoint event-type filter: the kinds an endpoint receives, comma-separated
-- (`connected,disconnected`); NULL: every kind. Applied when an event fans out.
ALTER TABLE webhook_endpoints ADD COLUMN event_types TEXT NULL;
