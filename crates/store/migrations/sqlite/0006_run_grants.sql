-- Run grants (issue 16): what one workflow run may use, on behalf of whom. The web backend asks
-- for one when a run starts; executors present it with GetAccessToken. The grant itself (a
-- random secret) is never stored, only its SHA-256 (hex). Rows are deleted by
-- prune_run_grants some time after they expire.

CREATE TABLE run_grants (
    id             TEXT    NOT NULL PRIMARY KEY,
    grant_sha256   TEXT    NOT NULL UNIQUE,
    -- The actor the grant acts for, as verified when it was created.
    user_id        TEXT    NOT NULL,
    email          TEXT    NOT NULL,
    workspace_id   TEXT    NULL,
    workspace_role TEXT    NULL,
    workflow_id    TEXT    NOT NULL,
    execution_id   TEXT    NOT NULL,
    -- The credentials the run may use, space-separated.
    credential_ids TEXT    NOT NULL,
    -- The calling service that asked for it.
    created_by     TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER NULL
) STRICT;

-- prune_run_grants deletes by expiry.
CREATE INDEX run_grants_expires_idx ON run_grants (expires_at);
