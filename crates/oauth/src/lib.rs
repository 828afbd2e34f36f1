//! OAuth 2.0 for the credential broker: the provider catalog (data compiled into the binary, plus
//! providers declared in config), authorization URLs with state and PKCE, code exchange, refresh,
//! revocation, account identification, and each provider's quirks.

pub mod catalog;
