-- OAuth apps a workspace brings (client id + sealed client secrets), and which app minted each
-- credential and connect session (SQLite dialect).

CREATE TABLE oauth_apps (
    id             TEXT    NOT NULL PRIMARY KEY,
    workspace_id   TEXT    NOT NULL,
    provider_id    TEXT    NOT NULL,
    display_name   TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    -- Scopes the app may request, space-separated; empty: every scope the provider offers.
    allowed_scopes TEXT    NOT NULL,
    created_by     TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    row_version    INTEGER NOT NULL
) STRICT;

-- Resolution: the workspace's apps for a provider, oldest first.
CREATE INDEX oauth_apps_workspace_provider_idx ON oauth_apps (workspace_id, provider_id, id);

-- Up to two client secrets per app (rotation): each sealed under its own data key, the AAD
-- naming the app and the secret's version.
CREATE TABLE oauth_app_secrets (
    app_id          TEXT    NOT NULL REFERENCES oauth_apps (id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    sealed_secret   BLOB    NOT NULL,
    dek_wrapped     BLOB    NOT NULL,
    dek_key_id      TEXT    NOT NULL,
    dek_key_version INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (app_id, version)
) STRICT;

-- The app (and secret version) that minted a credential's grant; NULL: the deployment's
-- configured client. No foreign key: a forced delete keeps the id to name the app.
ALTER TABLE credentials ADD COLUMN oauth_app_id TEXT NULL;
ALTER TABLE credentials ADD COLUMN oauth_app_secret_version INTEGER NULL;
CREATE INDEX credentials_oauth_app_idx ON credentials (oauth_app_id) WHERE oauth_app_id IS NOT NULL;

-- The app a connect flow started with: the code is exchanged with the same client.
ALTER TABLE connect_sessions ADD COLUMN oauth_app_id TEXT NULL;
