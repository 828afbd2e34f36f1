-- Audit filters, the refresh queue order and per-workflow usage (SQLite dialect).

-- list_audit filters by actor or action and pages newest first by id: each index serves
-- "WHERE actor = $1 AND id < $2 ORDER BY id DESC" as one backward range scan.
-- Time ranges and prune_audit use audit_events_at_idx (0001); credential_id uses
-- audit_events_credential_idx (0001).
CREATE INDEX audit_events_actor_idx ON audit_events (actor, id);
CREATE INDEX audit_events_action_idx ON audit_events (action, id);

-- due_for_refresh reads "status = 'ACTIVE' AND next_refresh_at <= $1 ORDER BY next_refresh_at, id":
-- with id in the key the index delivers that order directly, so the cost grows with the
-- number of due credentials, not with the table.
DROP INDEX credentials_next_refresh_idx;
CREATE INDEX credentials_refresh_due_idx
    ON credentials (next_refresh_at, id) WHERE status = 'ACTIVE';

-- Which workflows used a credential, and when last (written in batches by record_usage).
CREATE TABLE credential_workflow_usage (
    credential_id TEXT    NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    workflow_id   TEXT    NOT NULL,
    last_used_at  INTEGER NOT NULL,
    PRIMARY KEY (credential_id, workflow_id)
) STRICT;

CREATE INDEX credential_workflow_usage_recent_idx
    ON credential_workflow_usage (credential_id, last_used_at DESC, workflow_id);
