//! How the fake behaves: the registered client, the protocol options it follows and the faults it
//! injects. Everything here can be changed while it runs ([`crate::FakeProvider::configure`]).

use std::fmt;
use std::time::Duration;

/// Which provider the fake imitates in its request and response formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// RFC 6749: form bodies, JSON answers, errors as HTTP 400/401 JSON.
    #[default]
    Standard,
    /// Slack v2: every answer HTTP 200 with `ok`; user tokens under `authed_user` on exchange,
    /// at the top level on refresh; comma-separated scopes.
    Slack,
    /// GitHub: errors as HTTP 200 `{"error": ...}`; a form-encoded answer unless the request
    /// says `Accept: application/json`; comma-separated scopes.
    Github,
    /// Notion: the token endpoint takes JSON bodies only; the answer names the `owner.user`.
    Notion,
    /// Salesforce: answers carry `instance_url` (this server) and `id`; never `expires_in`;
    /// refreshes are also served at `/services/oauth2/token`.
    Salesforce,
}

/// How a client authenticates at the token and revocation endpoints (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Post,
}

/// A failure the token endpoint answers with instead of processing the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFailure {
    /// HTTP 500.
    ServerError,
    /// HTTP 429 with `Retry-After: <secs>`.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// `invalid_grant` in the dialect's format (Slack `ok:false`, GitHub 200, ...).
    InvalidGrant,
    /// `invalid_client` in the dialect's format: the client registration is rejected.
    InvalidClient,
    /// A 200 body larger than 512 KiB.
    OversizedBody,
    /// A 200 body that is not JSON.
    MalformedJson,
}

/// What the codes and tokens the fake hands out look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenStyle {
    /// `at_<port>_<n>`, `rt_<port>_<n>`, `code_<port>_<n>`: readable in test failures and
    /// distinct between fakes running side by side.
    Sequential,
    /// `<prefix>-at-<random>`, `<prefix>-rt-<random>`, `<prefix>-code-<random>`: unguessable, for
    /// a server other processes can reach.
    Random {
        /// Put in front of every token, e.g. `dev`.
        prefix: String,
    },
}

/// How the fake behaves; change it while running with [`crate::FakeProvider::configure`].
#[derive(Clone)]
pub struct FakeConfig {
    /// The registered client id.
    pub client_id: String,
    /// The registered client secret (a test fixture or a per-start random value: plain text).
    pub client_secret: String,
    /// Further registered clients as (client id, client secret): each authorizes, exchanges,
    /// refreshes and revokes its own grants, like the first (workspaces bringing their own app).
    pub extra_clients: Vec<(String, String)>,
    /// Registered redirect URIs; `/authorize` refuses others (without redirecting).
    pub redirect_uris: Vec<String>,
    /// Redirect URIs registered for one client (client id, URIs), replacing `redirect_uris`
    /// for that client.
    pub client_redirect_uris: Vec<(String, Vec<String>)>,
    /// Client authentication the token and revocation endpoints demand; `None` accepts either
    /// (but never both at once).
    pub client_auth: Option<ClientAuth>,
    /// `/authorize` refuses requests without an S256 `code_challenge`.
    pub require_pkce: bool,
    /// Request/response format.
    pub dialect: Dialect,
    /// Each refresh returns a new refresh token; the old one is superseded.
    pub rotate_refresh_tokens: bool,
    /// Reusing a superseded refresh token revokes the whole grant (every token of the chain).
    pub reuse_revokes_grant: bool,
    /// Whether code exchanges return a refresh token.
    pub issue_refresh_tokens: bool,
    /// Access token lifetime sent as `expires_in`; `None` sends no `expires_in`.
    pub access_token_ttl: Option<Duration>,
    /// Sent as `refresh_token_expires_in` when set.
    pub refresh_token_ttl: Option<Duration>,
    /// Partial grants: only these of the requested scopes are granted (`None`: all requested).
    pub granted_scopes: Option<Vec<String>>,
    /// Whether the answer lists the granted scopes in `scope`.
    pub return_scope: bool,
    /// Add an (unsigned) OpenID Connect id token to code exchanges.
    pub issue_id_token: bool,
    /// The account `/authorize` approves as.
    pub subject: String,
    /// `/authorize` redirects back with `error=access_denied`.
    pub deny: bool,
    /// Sticky token endpoint failure (after the queued ones, see
    /// [`crate::FakeProvider::push_token_failure`]).
    pub token_failure: Option<TokenFailure>,
    /// Delay before the token endpoint answers (the request is counted on arrival and processed
    /// after the delay, like a slow server).
    pub token_delay: Duration,
    /// Revocation endpoints answer HTTP 503.
    pub revoke_fails: bool,
    /// What codes and tokens look like.
    pub token_style: TokenStyle,
    /// The parameter naming the client in `/authorize` and in form-posted client credentials:
    /// `client_id`, or TikTok's `client_key` (a request naming `client_id` is then refused).
    pub client_id_param: String,
    /// Shopify: a code exchange issues an expiring token (with `expires_in` and a refresh token)
    /// only when it carries this parameter with this value; without it the answer is a token with
    /// neither. `None`: every exchange issues expiring tokens.
    pub expiring_only_with: Option<(String, String)>,
    /// The name the refresh token lifetime is sent under (`refresh_token_ttl`):
    /// `refresh_token_expires_in`, Intuit's `x_refresh_token_expires_in`, TikTok's
    /// `refresh_expires_in`.
    pub refresh_expiry_field: String,
    /// RFC 9207: every authorization response (errors included) carries `iss` with this value;
    /// `None` sends no `iss`.
    pub issuer: Option<String>,
    /// Fields of the published metadata replaced by these values (a provider that moved an
    /// endpoint since a client read its metadata).
    pub metadata_overrides: Vec<(String, String)>,
}

impl FakeConfig {
    /// The registered secret of client `id` (the first client or one of `extra_clients`).
    pub fn secret_of(&self, id: &str) -> Option<&str> {
        if id == self.client_id {
            return Some(&self.client_secret);
        }
        self.extra_clients
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, s)| s.as_str())
    }

    /// Whether `uri` is a registered redirect URI of client `id` (exact match).
    pub fn redirect_uri_registered(&self, id: &str, uri: &str) -> bool {
        match self.client_redirect_uris.iter().find(|(c, _)| c == id) {
            Some((_, uris)) => uris.iter().any(|u| u == uri),
            None => self.redirect_uris.iter().any(|u| u == uri),
        }
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            client_id: "fake-client".into(),
            client_secret: "fake-secret".into(),
            extra_clients: Vec::new(),
            redirect_uris: vec!["https://broker.test/oauth/callback".into()],
            client_redirect_uris: Vec::new(),
            client_auth: None,
            require_pkce: false,
            dialect: Dialect::Standard,
            rotate_refresh_tokens: false,
            reuse_revokes_grant: true,
            issue_refresh_tokens: true,
            access_token_ttl: Some(Duration::from_secs(3600)),
            refresh_token_ttl: None,
            granted_scopes: None,
            return_scope: true,
            issue_id_token: false,
            subject: "user-1".into(),
            deny: false,
            token_failure: None,
            token_delay: Duration::ZERO,
            revoke_fails: false,
            token_style: TokenStyle::Sequential,
            client_id_param: "client_id".into(),
            expiring_only_with: None,
            refresh_expiry_field: "refresh_token_expires_in".into(),
            issuer: None,
            metadata_overrides: Vec::new(),
        }
    }
}

// Written out so that the client secret never reaches a log through `{:?}`.
impl fmt::Debug for FakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field(
                "extra_clients",
                &self
                    .extra_clients
                    .iter()
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>(),
            )
            .field("redirect_uris", &self.redirect_uris)
            .field("client_redirect_uris", &self.client_redirect_uris)
            .field("client_auth", &self.client_auth)
            .field("require_pkce", &self.require_pkce)
            .field("dialect", &self.dialect)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("reuse_revokes_grant", &self.reuse_revokes_grant)
            .field("issue_refresh_tokens", &self.issue_refresh_tokens)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("granted_scopes", &self.granted_scopes)
            .field("return_scope", &self.return_scope)
            .field("issue_id_token", &self.issue_id_token)
            .field("subject", &self.subject)
            .field("deny", &self.deny)
            .field("token_failure", &self.token_failure)
            .field("token_delay", &self.token_delay)
            .field("revoke_fails", &self.revoke_fails)
            .field("token_style", &self.token_style)
            .field("client_id_param", &self.client_id_param)
            .field("expiring_only_with", &self.expiring_only_with)
            .field("refresh_expiry_field", &self.refresh_expiry_field)
            .field("issuer", &self.issuer)
            .field("metadata_overrides", &self.metadata_overrides)
            .finish()
    }
}
