-- Credentials, their members and the audit trail (PostgreSQL dialect).
-- Timestamps are unix milliseconds in BIGINT, the same representation as on SQLite.

CREATE TABLE credentials (
    id                       TEXT   NOT NULL PRIMARY KEY,
    workspace_id             TEXT   NOT NULL,
    provider_id              TEXT   NOT NULL,
    account_subject          TEXT   NOT NULL,
    account_label            TEXT   NOT NULL,
    display_name             TEXT   NOT NULL,
    description              TEXT   NOT NULL,
    scopes                   TEXT   NOT NULL,
    status                   TEXT   NOT NULL
        CHECK (status IN ('ACTIVE', 'NEEDS_RECONNECT', 'DISCONNECTED')),
    status_reason            TEXT   NULL,
    created_by               TEXT   NOT NULL,
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL,
    last_used_at             BIGINT NULL,
    last_refreshed_at        BIGINT NULL,
    access_expires_at        BIGINT NULL,
    next_refresh_at          BIGINT NULL,
    refresh_token_expires_at BIGINT NULL,
    -- Whether the sealed bundle holds a refresh token (readable without decrypting it).
    has_refresh_token        BOOLEAN NOT NULL DEFAULT FALSE,
    sealed_tokens            BYTEA  NULL,
    dek_wrapped              BYTEA  NULL,
    dek_key_id               TEXT   NULL,
    -- BIGINT (not INTEGER) so both backends accept the same i64 range.
    dek_key_version          BIGINT NULL,
    row_version              BIGINT NOT NULL,
    lease_holder             TEXT   NULL,
    lease_fence              BIGINT NOT NULL DEFAULT 0,
    lease_expires_at         BIGINT NULL,
    -- The sealed bundle is all four columns or none: half a bundle cannot be opened.
    CONSTRAINT credentials_sealed_complete CHECK (
        (sealed_tokens IS NULL) = (dek_wrapped IS NULL)
        AND (sealed_tokens IS NULL) = (dek_key_id IS NULL)
        AND (sealed_tokens IS NULL) = (dek_key_version IS NULL))
);

CREATE INDEX credentials_workspace_idx ON credentials (workspace_id, id);
CREATE INDEX credentials_workspace_provider_idx ON credentials (workspace_id, provider_id, id);
CREATE INDEX credentials_next_refresh_idx ON credentials (next_refresh_at) WHERE status = 'ACTIVE';
-- One live credential per provider account and workspace; disconnected ones may pile up.
CREATE UNIQUE INDEX credentials_active_account_uq
    ON credentials (workspace_id, provider_id, account_subject) WHERE status <> 'DISCONNECTED';
CREATE INDEX credentials_dek_key_idx ON credentials (dek_key_id, dek_key_version);

CREATE TABLE credential_members (
    credential_id TEXT   NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    email         TEXT   NOT NULL,
    user_id       TEXT   NULL,
    role          TEXT   NOT NULL CHECK (role IN ('ADMIN', 'MEMBER')),
    state         TEXT   NOT NULL CHECK (state IN ('INVITED', 'ACTIVE')),
    invited_by    TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (credential_id, email)
);

CREATE INDEX credential_members_user_idx ON credential_members (user_id);

-- No foreign key to credentials: audit events outlive the credentials they mention.
CREATE TABLE audit_events (
    id            BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,
    service       TEXT   NOT NULL,
    actor         TEXT   NULL,
    action        TEXT   NOT NULL,
    credential_id TEXT   NULL,
    outcome       TEXT   NOT NULL,
    detail        TEXT   NULL
);

CREATE INDEX audit_events_credential_idx ON audit_events (credential_id, id);
CREATE INDEX audit_events_at_idx ON audit_events (at);
