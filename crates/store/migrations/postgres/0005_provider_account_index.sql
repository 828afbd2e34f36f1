-- Grants of one provider account across workspaces: a provider whose revocation ends the
-- user's whole authorization (Google, GitHub) must not lose a grant another credential keeps.
CREATE INDEX credentials_provider_account_idx ON credentials (provider_id, account_subject);
