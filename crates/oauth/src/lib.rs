//! OAuth 2.0 for the credential broker: the provider catalog (data compiled into the binary, plus
//! providers declared in config), authorization URLs with state and PKCE, code exchange, refresh,
//! revocation, account identification, and each provider's quirks.
//!
//! Secrets (tokens, codes, client secrets, PKCE verifiers) are [`secrecy::SecretString`]s and
//! never appear in errors or logs. Time is not read here: lifetimes come back as durations and the
//! caller turns them into instants with its clock.

pub mod account;
pub mod authorize;
pub mod callback;
pub mod catalog;
pub mod client;
mod endpoint;
pub mod error;
pub mod http;
pub mod outbound;
pub mod pkce;
mod quirks;
pub mod token;

#[cfg(test)]
mod test_support;

pub use account::AccountInfo;
pub use authorize::{AuthorizeRequest, authorize_url};
pub use callback::{Callback, parse_callback};
pub use client::ClientCredentials;
pub use error::OAuthError;
pub use http::{CodeGrant, HttpConfig, OAuthHttp, RevokeOutcome, revokes_with_access_token};
pub use pkce::{PkcePair, pkce_pair, random_state};
pub use token::{TokenResponse, parse_scope};
