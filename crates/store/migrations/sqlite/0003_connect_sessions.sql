-- Connect sessions: the single-use OAuth `state` of a connect flow (SQLite dialect).
-- The state itself is never stored, only its hash. Rows are short-lived: consumed once by
-- CompleteConnect, deleted by prune_connect_sessions once expired.

CREATE TABLE connect_sessions (
    state_hash              TEXT    NOT NULL PRIMARY KEY,
    workspace_id            TEXT    NOT NULL,
    provider_id             TEXT    NOT NULL,
    scopes                  TEXT    NOT NULL,
    redirect_uri            TEXT    NOT NULL,
    -- The PKCE verifier sealed under a data key, plus that key wrapped (all four or none).
    pkce_verifier           BLOB    NULL,
    pkce_dek_wrapped        BLOB    NULL,
    pkce_dek_key_id         TEXT    NULL,
    pkce_dek_key_version    INTEGER NULL,
    -- No foreign key: CompleteConnect loads and checks the credential itself, and a pending
    -- session must never block writes to credentials.
    reconnect_credential_id TEXT    NULL,
    display_name            TEXT    NULL,
    description             TEXT    NULL,
    created_by              TEXT    NOT NULL,
    created_by_email        TEXT    NOT NULL,
    created_at              INTEGER NOT NULL,
    expires_at              INTEGER NOT NULL,
    consumed_at             INTEGER NULL,
    -- Half a sealed verifier cannot be opened.
    CHECK ((pkce_verifier IS NULL) = (pkce_dek_wrapped IS NULL)
       AND (pkce_verifier IS NULL) = (pkce_dek_key_id IS NULL)
       AND (pkce_verifier IS NULL) = (pkce_dek_key_version IS NULL))
) STRICT;

-- prune_connect_sessions deletes by expiry.
CREATE INDEX connect_sessions_expires_idx ON connect_sessions (expires_at);
