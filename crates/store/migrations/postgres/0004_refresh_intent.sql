-- The refresh intent (issue 11): recorded by a lease holder right before it calls the provider,
-- cleared when its result is written. A later holder that finds one knows a refresh may have
-- died with its process (the provider may have rotated the refresh token). The hash is the
-- SHA-256 (hex) of the refresh token that was sent, never the token.
ALTER TABLE credentials ADD COLUMN refresh_intent_holder TEXT NULL;
ALTER TABLE credentials ADD COLUMN refresh_intent_fence BIGINT NULL;
ALTER TABLE credentials ADD COLUMN refresh_intent_started_at BIGINT NULL;
ALTER TABLE credentials ADD COLUMN refresh_intent_token_sha256 TEXT NULL;
