-- OAuth 2.0 providers a workspace defines at runtime (decision 27): the definition (endpoints,
-- client authentication, PKCE, scopes, account identification, issuer) as a JSON document owned
-- by the domain. Read on every use, so every replica sees a change at once.

CREATE TABLE workspace_providers (
    workspace_id TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    definition   TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    row_version  INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, id)
) STRICT;
