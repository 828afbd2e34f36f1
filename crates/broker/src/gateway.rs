//! What the domain needs from OAuth providers, as a trait: the server implements it with the
//! `cb-oauth` HTTP client and the provider catalog; the domain stays free of HTTP.

use crate::tokens::TokenBundle;
use cb_oauth::catalog::ProviderSpec;
use cb_oauth::outbound::{OutboundError, OutboundPolicy};
pub use cb_oauth::{AuthorizeRequest, CodeGrant};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One scope offered by a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeInfo {
    /// Scope string.
    pub name: String,
    /// Human description.
    pub description: String,
    /// Requested when the caller names none.
    pub default_selected: bool,
}

/// A provider as the UI sees it.
#[derive(Clone, Debug)]
pub struct ProviderInfo {
    /// Catalog id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Icon URL.
    pub icon_url: String,
    /// Category.
    pub category: String,
    /// Whether client credentials are configured.
    pub configured: bool,
    /// Settings missing to configure it.
    pub missing_settings: Vec<String>,
    /// Offered scopes.
    pub scopes: Vec<ScopeInfo>,
    /// Whether the provider can revoke grants.
    pub supports_revocation: bool,
    /// Revoking one grant ends every grant of that account for the app (Google, GitHub): a grant
    /// of an account the broker keeps another grant of must never be revoked.
    pub revocation_ends_authorization: bool,
    /// Declared in config rather than built in.
    pub custom: bool,
    /// Refresh token expires after this long without use (refresh it before).
    pub refresh_token_idle: Option<Duration>,
    /// The grant ends this long after consent whatever is refreshed (reconnect before).
    pub refresh_token_absolute: Option<Duration>,
    /// Whether the catalog entry's values are backed by documented sources.
    pub verified: bool,
    /// The workspace that defined it at runtime (`None`: a catalog or configuration entry).
    pub workspace_id: Option<String>,
}

impl ProviderInfo {
    /// The provider described by `spec`; `configured`: a client is at hand, else
    /// `missing_settings` says what to set; `custom`: not built in.
    pub fn from_spec(
        spec: &ProviderSpec,
        configured: bool,
        missing_settings: Vec<String>,
        custom: bool,
    ) -> Self {
        Self {
            id: spec.id.clone(),
            display_name: spec.display_name.clone(),
            icon_url: spec.icon_url.clone(),
            category: spec.category.clone(),
            configured,
            missing_settings,
            scopes: spec
                .scopes
                .iter()
                .map(|s| ScopeInfo {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    default_selected: spec.default_scopes.contains(&s.name),
                })
                .collect(),
            supports_revocation: spec.revocation_url.is_some(),
            revocation_ends_authorization: spec.revocation_ends_authorization,
            custom,
            refresh_token_idle: spec
                .refresh
                .refresh_token_idle_seconds
                .map(Duration::from_secs),
            refresh_token_absolute: spec
                .refresh
                .refresh_token_absolute_seconds
                .map(Duration::from_secs),
            verified: spec.is_verified(),
            workspace_id: None,
        }
    }
}

/// Why an issuer's metadata could not be read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MetadataError {
    /// The outbound guard refused or failed the request.
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// The answer was not usable metadata (the message names no secret).
    #[error("{0}")]
    Invalid(String),
}

/// An authorization code to exchange, and what else the provider's redirect brought.
#[derive(Clone, Copy, Debug)]
pub struct CodeExchange<'a> {
    /// The code, with what its authorization URL sent.
    pub grant: CodeGrant<'a>,
    /// The redirect's other query parameters (e.g. QuickBooks `realmId`), kept as extras where
    /// the provider needs them.
    pub callback_params: &'a BTreeMap<String, String>,
}

/// Tokens a provider returned (code exchange or refresh).
#[derive(Clone, Debug)]
pub struct GrantedTokens {
    /// Access token.
    pub access_token: SecretString,
    /// New refresh token, if the provider returned one (rotation); `None` keeps the old one.
    pub refresh_token: Option<SecretString>,
    /// OpenID id token.
    pub id_token: Option<SecretString>,
    /// Token type.
    pub token_type: String,
    /// Access token lifetime, if given.
    pub expires_in: Option<Duration>,
    /// Refresh token lifetime, if given.
    pub refresh_expires_in: Option<Duration>,
    /// Scopes granted, if the provider said.
    pub scopes: Option<Vec<String>>,
    /// Non-secret extras (instance_url, cloud_id, …).
    pub extras: BTreeMap<String, String>,
}

/// The connected account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountInfo {
    /// Stable id at the provider.
    pub subject: String,
    /// Email or login.
    pub label: String,
}

/// The client of a workspace's own OAuth app, used instead of the deployment's configured one.
#[derive(Clone)]
pub struct AppClient {
    /// The client id registered at the provider.
    pub client_id: String,
    /// The client secret (never printed).
    pub client_secret: SecretString,
    /// The provider a workspace defined at runtime this client is for; `None`: a catalog
    /// provider. Calls with it go through the outbound guard.
    pub provider: Option<Arc<ProviderSpec>>,
}

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("provider", &self.provider.as_ref().map(|p| p.id.as_str()))
            .finish()
    }
}

/// How a provider call failed, as the domain classifies it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProviderError {
    /// The grant is dead (invalid_grant, revoked, expired): reconnect needed. Starts with the
    /// provider's error code (`code: description`).
    #[error("{0}")]
    Permanent(String),
    /// The provider rejected the client (`invalid_client`, `unauthorized_client`): the app
    /// registration must be fixed; the grant itself may be fine. Starts with the error code.
    #[error("{0}")]
    ClientRejected(String),
    /// Try again later.
    #[error("{detail}")]
    Transient {
        /// Non-secret detail.
        detail: String,
        /// Suggested delay (429 Retry-After).
        retry_after: Option<Duration>,
    },
    /// The user or provider refused the authorization.
    #[error("{0}")]
    Denied(String),
    /// Misconfiguration or protocol violation.
    #[error("{0}")]
    Other(String),
}

/// How a token endpoint answered a deliberately invalid authorization code (diagnosis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientProbe {
    /// `invalid_grant` (or an equivalent): the client authenticated, only the code was refused.
    Accepted,
    /// `invalid_client` (or an equivalent): the provider refused the client id or secret.
    Refused(String),
    /// No usable answer (timeout, connection refused, 5xx, 429).
    Unreachable(String),
    /// Another answer (another error code, a success, a malformed body).
    Unexpected(String),
}

/// How an authorization endpoint answered an authorization request for a redirect URI, sent
/// without a user and without following redirects (diagnosis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectProbe {
    /// A login or consent page, or a redirect (to the redirect URI or a login page): the
    /// provider took the request. The detail names what was seen (never a code).
    Accepted(String),
    /// A 4xx page without a redirect: the provider refuses the request (an unregistered redirect
    /// URI, an unknown client). The detail carries the status and a short excerpt of the page.
    Refused(String),
    /// No usable answer (timeout, connection refused, 5xx, refused by the outbound policy).
    Unreachable(String),
}

/// What the provider publishes about itself (RFC 8414 / OpenID discovery), compared with how the
/// broker calls it (diagnosis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// The provider's entry declares no issuer: there is nothing to discover.
    NoIssuer,
    /// The metadata could not be fetched or read (the reason names no secret).
    Unreachable(String),
    /// The metadata was read.
    Found {
        /// Where it disagrees with the entry (issuer, endpoints); empty when consistent.
        mismatches: Vec<String>,
        /// `scopes_supported`, when published.
        scopes_supported: Option<Vec<String>>,
    },
}

impl ProviderError {
    /// The provider's error code, never a token: the OAuth `error` of a refusal, or the class
    /// of a transient failure (`rate_limited`, `temporarily_unavailable`).
    pub fn code(&self) -> String {
        match self {
            Self::Permanent(why) | Self::ClientRejected(why) => {
                why.split(':').next().unwrap_or_default().trim().to_owned()
            }
            Self::Transient {
                retry_after: Some(_),
                ..
            } => "rate_limited".into(),
            Self::Transient { detail, .. } if detail.contains("429") || detail.contains("rate") => {
                "rate_limited".into()
            }
            Self::Transient { .. } => "temporarily_unavailable".into(),
            Self::Denied(_) => "access_denied".into(),
            Self::Other(_) => "protocol_error".into(),
        }
    }
}

/// Result of a revocation attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeResult {
    /// Revoked at the provider.
    Revoked,
    /// The provider has no revocation endpoint.
    NotSupported,
}

/// The operations the domain performs against providers.
#[async_trait::async_trait]
pub trait ProviderGateway: Send + Sync + 'static {
    /// Every provider, ordered by id.
    fn list(&self) -> Vec<ProviderInfo>;
    /// One provider.
    fn get(&self, id: &str) -> Option<ProviderInfo>;
    /// Whether `uri` is an allowed redirect URI (exact match).
    fn redirect_allowed(&self, uri: &str) -> bool;
    /// Builds the authorization URL. `client`: a workspace app's client instead of the
    /// configured one (the same for every call below).
    fn authorize_url(
        &self,
        provider: &str,
        client: Option<&AppClient>,
        authorize: AuthorizeRequest<'_>,
    ) -> Result<String, ProviderError>;
    /// Whether the provider uses PKCE.
    fn uses_pkce(&self, provider: &str) -> bool;
    /// The issuer identifier the provider declares (RFC 9207): its authorization responses must
    /// then carry exactly this `iss`. `None`: the provider declares none (the default).
    fn issuer(&self, _provider: &str) -> Option<String> {
        None
    }
    /// Exchanges an authorization code and identifies the account the tokens belong to.
    async fn exchange_code(
        &self,
        provider: &str,
        client: Option<&AppClient>,
        exchange: CodeExchange<'_>,
    ) -> Result<(GrantedTokens, AccountInfo), ProviderError>;
    /// Refreshes a grant.
    async fn refresh(
        &self,
        provider: &str,
        client: Option<&AppClient>,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
    ) -> Result<GrantedTokens, ProviderError>;
    /// Diagnosis: sends the provider's token endpoint an authorization code that cannot be valid,
    /// authenticated as `client`, and says how it answered.
    async fn probe_client(
        &self,
        provider: &str,
        client: Option<&AppClient>,
        redirect_uri: &str,
    ) -> ClientProbe;
    /// Diagnosis: fetches the provider's published metadata from its declared issuer (through
    /// the outbound guard) and compares it with the entry: the catalog's, or `runtime`, the
    /// definition of a provider a workspace defined (whose every stored endpoint is compared).
    async fn discover(&self, provider: &str, runtime: Option<&ProviderSpec>) -> Discovery;
    /// Diagnosis: requests the authorization URL for `client` and `redirect_uri` (through the
    /// outbound guard, no redirects followed) and says how the endpoint answered.
    async fn probe_redirect(
        &self,
        _provider: &str,
        _client: Option<&AppClient>,
        _redirect_uri: &str,
    ) -> RedirectProbe {
        RedirectProbe::Unreachable("not supported by this gateway".into())
    }
    /// Checks a URL a workspace sets (runtime-defined providers) against the outbound policy,
    /// without resolving it. The default applies the strictest policy.
    fn check_outbound_url(&self, url: &url::Url) -> Result<(), OutboundError> {
        cb_oauth::outbound::check_url(&OutboundPolicy::default(), url)
    }
    /// Whether the outbound policy lets workspace-set URLs reach loopback (plain http to it).
    fn outbound_allows_loopback(&self) -> bool {
        false
    }
    /// Fetches an issuer's authorization-server metadata (RFC 8414, then OpenID discovery)
    /// through the outbound guard.
    async fn issuer_metadata(&self, _issuer: &str) -> Result<serde_json::Value, MetadataError> {
        Err(MetadataError::Invalid("discovery is not available".into()))
    }
    /// Revokes a grant (refresh token preferred, else access token).
    async fn revoke(
        &self,
        provider: &str,
        client: Option<&AppClient>,
        tokens: &TokenBundle,
    ) -> Result<RevokeResult, ProviderError>;
}
