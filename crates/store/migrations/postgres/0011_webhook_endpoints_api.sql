-- Webhook endpoints managed through the API (issue 14, decision 29, PostgreSQL dialect).
--
-- `source` tells configured endpoints (`[[webhooks]]`, declared at start, read-only through the
-- API) from the ones workspace admins create (ids `whe_…`, which configuration ids may not
-- take). API endpoints keep their signing secrets here, sealed like OAuth app client secrets
-- (AAD bound to the endpoint and the secret's version); configured ones keep them in the file.
ALTER TABLE webhook_endpoints ADD COLUMN source TEXT NOT NULL DEFAULT 'CONFIG'
    CHECK (source IN ('CONFIG', 'API'));
ALTER TABLE webhook_endpoints ADD COLUMN description TEXT NOT NULL DEFAULT '';

-- Up to two secrets per endpoint (a rotation): each delivery is signed with every one.
CREATE TABLE webhook_endpoint_secrets (
    endpoint_id     TEXT   NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    version         BIGINT NOT NULL,
    ciphertext      BYTEA  NOT NULL,
    dek_wrapped     BYTEA  NOT NULL,
    dek_key_id      TEXT   NOT NULL,
    dek_key_version BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, version)
);
