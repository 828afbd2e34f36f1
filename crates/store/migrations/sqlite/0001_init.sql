-- Credentials, their members and the audit trail (SQLite dialect).
-- STRICT makes SQLite reject values of the wrong type instead of storing them silently.
-- Timestamps are unix milliseconds (INTEGER is 64-bit in SQLite).

CREATE TABLE credentials (
    id                       TEXT    NOT NULL PRIMARY KEY,
    workspace_id             TEXT    NOT NULL,
    provider_id              TEXT    NOT NULL,
    account_subject          TEXT    NOT NULL,
    account_label            TEXT    NOT NULL,
    display_name             TEXT    NOT NULL,
    description              TEXT    NOT NULL,
    scopes                   TEXT    NOT NULL,
    status                   TEXT    NOT NULL
        CHECK (status IN ('ACTIVE', 'NEEDS_RECONNECT', 'DISCONNECTED')),
    status_reason            TEXT    NULL,
    created_by               TEXT    NOT NULL,
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    last_used_at             INTEGER NULL,
    last_refreshed_at        INTEGER NULL,
    access_expires_at        INTEGER NULL,
    next_refresh_at          INTEGER NULL,
    refresh_token_expires_at INTEGER NULL,
    -- Whether the sealed bundle holds a refresh token (readable without decrypting it).
    has_refresh_token        INTEGER NOT NULL DEFAULT 0 CHECK (has_refresh_token IN (0, 1)),
    sealed_tokens            BLOB    NULL,
    dek_wrapped              BLOB    NULL,
    dek_key_id               TEXT    NULL,
    dek_key_version          INTEGER NULL,
    row_version              INTEGER NOT NULL,
    lease_holder             TEXT    NULL,
    lease_fence              INTEGER NOT NULL DEFAULT 0,
    lease_expires_at         INTEGER NULL,
    -- The sealed bundle is all four columns or none: half a bundle cannot be opened.
    CHECK ((sealed_tokens IS NULL) = (dek_wrapped IS NULL)
       AND (sealed_tokens IS NULL) = (dek_key_id IS NULL)
       AND (sealed_tokens IS NULL) = (dek_key_version IS NULL))
) STRICT;

CREATE INDEX credentials_workspace_idx ON credentials (workspace_id, id);
CREATE INDEX credentials_workspace_provider_idx ON credentials (workspace_id, provider_id, id);
CREATE INDEX credentials_next_refresh_idx ON credentials (next_refresh_at) WHERE status = 'ACTIVE';
-- One live credential per provider account and workspace; disconnected ones may pile up.
CREATE UNIQUE INDEX credentials_active_account_uq
    ON credentials (workspace_id, provider_id, account_subject) WHERE status <> 'DISCONNECTED';
CREATE INDEX credentials_dek_key_idx ON credentials (dek_key_id, dek_key_version);

CREATE TABLE credential_members (
    credential_id TEXT    NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    email         TEXT    NOT NULL,
    user_id       TEXT    NULL,
    role          TEXT    NOT NULL CHECK (role IN ('ADMIN', 'MEMBER')),
    state         TEXT    NOT NULL CHECK (state IN ('INVITED', 'ACTIVE')),
    invited_by    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (credential_id, email)
) STRICT;

CREATE INDEX credential_members_user_idx ON credential_members (user_id);

-- No foreign key to credentials: audit events outlive the credentials they mention.
CREATE TABLE audit_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    service       TEXT    NOT NULL,
    actor         TEXT    NULL,
    action        TEXT    NOT NULL,
    credential_id TEXT    NULL,
    outcome       TEXT    NOT NULL,
    detail        TEXT    NULL
) STRICT;

CREATE INDEX audit_events_credential_idx ON audit_events (credential_id, id);
CREATE INDEX audit_events_at_idx ON audit_events (at);
