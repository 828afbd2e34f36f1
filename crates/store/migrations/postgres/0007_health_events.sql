-- Credential health and lifecycle events (issue 14, PostgreSQL dialect).
--
-- Health: besides its status, each credential carries the health of its grant and the cause
-- of its last refresh failure. A provider outage is its own health (the grant is not broken);
-- `health_error_code` is the provider's error code (e.g. `invalid_grant`), never a token.
ALTER TABLE credentials ADD COLUMN health TEXT NOT NULL DEFAULT 'HEALTHY'
    CHECK (health IN ('HEALTHY', 'PROVIDER_OUTAGE', 'GRANT_REVOKED', 'CLIENT_MISCONFIGURED',
                      'SCOPES_REVOKED', 'REFRESH_INTERRUPTED', 'EXPIRING'));
ALTER TABLE credentials ADD COLUMN health_cause TEXT NULL;
ALTER TABLE credentials ADD COLUMN health_since BIGINT NULL;
ALTER TABLE credentials ADD COLUMN health_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN health_error_code TEXT NULL;

CREATE INDEX credentials_workspace_health_idx ON credentials (workspace_id, health, id);
-- The hourly scan for grants that end soon (absolute refresh token expiry).
CREATE INDEX credentials_grant_end_idx ON credentials (refresh_token_expires_at) WHERE status = 'ACTIVE';

-- Lifecycle events: a durable, ordered log written in the same transaction as the change.
-- `id` is the cursor; `event_id` the stable public id. No foreign key to credentials: events
-- outlive the credentials they mention.
CREATE TABLE credential_events (
    id            BIGSERIAL PRIMARY KEY,
    event_id      TEXT   NOT NULL UNIQUE,
    at            BIGINT NOT NULL,
    workspace_id  TEXT   NOT NULL,
    credential_id TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    actor         TEXT   NULL,
    cause         TEXT   NULL,
    detail        TEXT   NULL
);

CREATE INDEX credential_events_workspace_idx ON credential_events (workspace_id, id);
CREATE INDEX credential_events_credential_idx ON credential_events (credential_id, id);
CREATE INDEX credential_events_at_idx ON credential_events (at);

-- Webhook endpoints (declared in the configuration, mirrored here so every replica shares
-- their failure state) and the delivery log: one row per (endpoint, event), created in the
-- transaction that writes the event, claimed with a lease by any replica.
CREATE TABLE webhook_endpoints (
    id            TEXT    NOT NULL PRIMARY KEY,
    workspace_id  TEXT    NOT NULL,
    url           TEXT    NOT NULL,
    failing_since BIGINT    NULL,
    disabled_at   BIGINT    NULL,
    updated_at    BIGINT    NOT NULL
);

CREATE INDEX webhook_endpoints_workspace_idx ON webhook_endpoints (workspace_id);

CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    endpoint_id      TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_row_id     BIGINT    NOT NULL,
    credential_id    TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('PENDING', 'DELIVERED')),
    attempts         BIGINT    NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT    NOT NULL,
    lease_holder     TEXT    NULL,
    lease_expires_at BIGINT    NULL,
    last_status      BIGINT    NULL,
    last_error       TEXT    NULL,
    delivered_at     BIGINT    NULL,
    created_at       BIGINT    NOT NULL,
    UNIQUE (endpoint_id, event_row_id)
);

-- The claim reads pending deliveries in order; the per-credential ordering check reads the
-- pending ones of one (endpoint, credential).
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (state, next_attempt_at, id);
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (endpoint_id, credential_id, state, id);
