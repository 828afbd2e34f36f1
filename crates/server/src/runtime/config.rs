//! Configuration: one TOML file (unknown keys rejected) plus `CREDENTIAL_BROKER_*` environment
//! overrides, read through [`EnvSource`] so tests inject values instead of mutating the process.

use crate::layers::auth::{Callers, KnownCaller, ServiceIdentity};
use cb_broker::access::ServiceRole;
use cb_oauth::catalog::ProviderSpec;
use cb_oauth::outbound::OutboundPolicy;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "CREDENTIAL_BROKER_";

/// Where environment values come from.
pub trait EnvSource {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Storage.
    pub database: DatabaseConfig,
    /// Envelope encryption keys.
    pub keys: KeysConfig,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown: how long in-flight calls may take after SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Calling services and their bearer-token hashes. Empty: development mode (loopback only).
    pub callers: Vec<CallerConfig>,
    /// TLS (and mTLS) for the listener.
    pub tls: TlsConfig,
    /// Audit log settings.
    pub audit: AuditConfig,
    /// Lifecycle event log settings.
    pub events: EventsSettings,
    /// Webhook endpoints receiving a workspace's lifecycle events (Standard Webhooks).
    pub webhooks: Vec<WebhookSettings>,
    /// OAuth connect settings.
    pub oauth: OAuthConfig,
    /// Client credentials (and URL placeholders) per provider id.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Additional OAuth 2.0 providers (or overrides of built-in ones), in the catalog's format.
    pub custom_providers: Vec<ProviderSpec>,
    /// Token issuance and refresh.
    pub tokens: TokensConfig,
    /// Traces (OTLP) and metrics (Prometheus scrape endpoint).
    pub telemetry: TelemetryConfig,
    /// Dependency checks behind `grpc.health.v1`.
    pub health: HealthConfig,
    /// Per-caller concurrency and request size limits.
    pub limits: LimitsConfig,
    /// Signed actor assertions: who may sign them and how they are checked. Unset: no caller
    /// can prove an actor (only development mode and `unsigned_actor` callers name one).
    pub actor_assertions: Option<ActorAssertionsConfig>,
    /// Callers that authenticate with a JWT their platform issues (Kubernetes projected
    /// service-account tokens), mapped to `[[callers]]` by `service_account`.
    pub workload_identity: Option<WorkloadIdentityConfig>,
    /// Run grants for executors.
    pub run_grants: RunGrantsConfig,
    /// Callers that authenticate with a SPIFFE JWT-SVID, mapped to `[[callers]]` by
    /// `spiffe_id` (X.509-SVIDs need only `[tls] client_ca_file`).
    pub spiffe: Option<SpiffeConfig>,
    /// What requests to workspace-chosen URLs (webhook endpoints, runtime-defined providers) may
    /// reach.
    pub outbound: OutboundConfig,
}

/// How workload tokens (Kubernetes service-account JWTs) are verified.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadIdentityConfig {
    /// The token issuer: the cluster's service-account issuer (`--service-account-issuer`).
    pub issuer: String,
    /// The audience the projected token is requested for; only tokens for it are accepted.
    pub audience: String,
    /// The issuer's JWKS (https, or http on loopback), e.g. the OIDC discovery `jwks_uri`.
    pub jwks_url: Option<String>,
    /// Keys known without a JWKS (e.g. from `kubectl get --raw /openid/v1/jwks`).
    pub public_keys: Vec<PublicKeyConfig>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// How often the JWKS is fetched again.
    pub jwks_refresh_seconds: u64,
    /// An unknown `kid` fetches the JWKS again at most this often.
    pub jwks_min_refetch_seconds: u64,
}

impl Default for WorkloadIdentityConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            public_keys: Vec::new(),
            leeway_seconds: 30,
            jwks_refresh_seconds: 300,
            jwks_min_refetch_seconds: 30,
        }
    }
}

impl WorkloadIdentityConfig {
    fn validate(&self, p: &mut Vec<String>) {
        validate_issuer_keys(
            "workload_identity",
            ("issuer", &self.issuer),
            &self.audience,
            (self.jwks_url.as_deref(), false),
            &self.public_keys,
            p,
        );
        validate_jwks_timing(
            "workload_identity",
            [
                self.leeway_seconds,
                self.jwks_refresh_seconds,
                self.jwks_min_refetch_seconds,
            ],
            p,
        );
    }
}

/// SPIFFE workload identity: JWT-SVIDs of one trust domain, verified against its bundle.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpiffeConfig {
    /// The trust domain (`example.org`): only SPIFFE IDs `spiffe://<trust_domain>/…` are accepted.
    pub trust_domain: String,
    /// The audience JWT-SVIDs are requested for; only SVIDs for it are accepted.
    pub audience: String,
    /// The trust domain's JWT bundle as a JWKS URL (a SPIRE bundle endpoint; https, or http on
    /// loopback).
    pub jwks_url: Option<String>,
    /// … or as a JWKS file (the bundle the SPIRE agent or spiffe-helper writes), re-read on
    /// every refresh and on an unknown `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Static keys.
    pub public_keys: Vec<PublicKeyConfig>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// How often the bundle is read again.
    pub jwks_refresh_seconds: u64,
    /// An unknown `kid` reads the bundle again at most this often.
    pub jwks_min_refetch_seconds: u64,
}

impl Default for SpiffeConfig {
    fn default() -> Self {
        Self {
            trust_domain: String::new(),
            audience: String::new(),
            jwks_url: None,
            jwks_file: None,
            public_keys: Vec::new(),
            leeway_seconds: 30,
            jwks_refresh_seconds: 300,
            jwks_min_refetch_seconds: 30,
        }
    }
}

impl SpiffeConfig {
    fn validate(&self, p: &mut Vec<String>) {
        validate_issuer_keys(
            "spiffe",
            ("trust_domain", &self.trust_domain),
            &self.audience,
            (self.jwks_url.as_deref(), self.jwks_file.is_some()),
            &self.public_keys,
            p,
        );
        if self.jwks_url.is_some() && self.jwks_file.is_some() {
            p.push("spiffe: set jwks_url or jwks_file, not both".into());
        }
        if self.trust_domain.contains(['/', ':']) {
            p.push(format!(
                "spiffe.trust_domain: {:?} must be the bare trust domain (example.org)",
                self.trust_domain
            ));
        }
        validate_jwks_timing(
            "spiffe",
            [
                self.leeway_seconds,
                self.jwks_refresh_seconds,
                self.jwks_min_refetch_seconds,
            ],
            p,
        );
    }

    /// The prefix of every SPIFFE ID of the trust domain.
    pub fn id_prefix(&self) -> String {
        format!("spiffe://{}/", self.trust_domain)
    }
}

/// Checks `[leeway_seconds, jwks_refresh_seconds, jwks_min_refetch_seconds]` of a JWT section.
fn validate_jwks_timing(
    section: &str,
    [leeway, refresh, min_refetch]: [u64; 3],
    p: &mut Vec<String>,
) {
    if leeway > 300 {
        p.push(format!("{section}.leeway_seconds: must be at most 300"));
    }
    for (key, v) in [
        ("jwks_refresh_seconds", refresh),
        ("jwks_min_refetch_seconds", min_refetch),
    ] {
        if v == 0 {
            p.push(format!("{section}.{key}: must be at least 1"));
        }
    }
}

/// Checks what every JWT issuer section shares: issuer, audience and where the keys come from.
fn validate_issuer_keys(
    section: &str,
    (issuer_key, issuer): (&str, &str),
    audience: &str,
    (jwks_url, jwks_file): (Option<&str>, bool),
    public_keys: &[PublicKeyConfig],
    p: &mut Vec<String>,
) {
    if issuer.trim().is_empty() {
        p.push(format!(
            "{section}.{issuer_key}: required (the iss of the tokens, or their trust domain)"
        ));
    }
    if audience.trim().is_empty() {
        p.push(format!(
            "{section}.audience: required (this broker's name in aud)"
        ));
    }
    if jwks_url.is_none() && !jwks_file && public_keys.is_empty() {
        // `[spiffe]` also reads a bundle file (the only section with `jwks_file`).
        let sources = if section == "spiffe" {
            "jwks_url, jwks_file or public_keys"
        } else {
            "jwks_url or public_keys"
        };
        p.push(format!("{section}: set {sources}"));
    }
    if let Some(u) = jwks_url {
        // The parsed host, not a prefix: `http://localhost.example.com` is not loopback.
        let ok = url::Url::parse(u).is_ok_and(|url| match url.scheme() {
            "https" => url.host_str().is_some(),
            "http" => matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
            _ => false,
        });
        if !ok {
            p.push(format!(
                "{section}.jwks_url: {u:?} must be an https:// URL (or http on loopback)"
            ));
        }
    }
    let mut kids = std::collections::BTreeSet::new();
    for (i, k) in public_keys.iter().enumerate() {
        if k.kid.trim().is_empty() {
            p.push(format!("{section}.public_keys[{i}].kid: required"));
        } else if !kids.insert(k.kid.as_str()) {
            p.push(format!(
                "{section}.public_keys[{i}].kid: {:?} is declared twice",
                k.kid
            ));
        }
        let set = [k.pem.is_some(), k.pem_file.is_some(), k.jwk.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            p.push(format!(
                "{section}.public_keys[{i}]: set exactly one of pem, pem_file, jwk"
            ));
        }
    }
}

/// How signed actor assertions (short-lived JWTs naming the end user) are verified.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActorAssertionsConfig {
    /// The `iss` every assertion must carry (the web backend or the platform's IdP).
    pub issuer: String,
    /// The `aud` every assertion must contain: this broker's name.
    pub audience: String,
    /// A JWKS URL (https, or http on loopback) holding the signing keys; fetched at start, every
    /// `jwks_refresh_seconds`, and when an assertion names an unknown `kid`.
    pub jwks_url: Option<String>,
    /// Keys known without a JWKS (each with its `kid`).
    pub public_keys: Vec<PublicKeyConfig>,
    /// Clock skew tolerated on `exp`, `iat` and `nbf`.
    pub leeway_seconds: u64,
    /// The longest `exp - iat` accepted (at most 300).
    pub max_lifetime_seconds: u64,
    /// How often the JWKS is fetched again.
    pub jwks_refresh_seconds: u64,
    /// An unknown `kid` fetches the JWKS again at most this often.
    pub jwks_min_refetch_seconds: u64,
    /// Live assertion ids remembered to refuse replays; past it new assertions are refused
    /// (UNAVAILABLE) until old ones expire.
    pub replay_cache_max_entries: usize,
}

impl Default for ActorAssertionsConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            public_keys: Vec::new(),
            leeway_seconds: 30,
            max_lifetime_seconds: 300,
            jwks_refresh_seconds: 300,
            jwks_min_refetch_seconds: 30,
            replay_cache_max_entries: 200_000,
        }
    }
}

/// One static verification key of actor assertions: a PEM public key (inline or a file) or a
/// JWK; its algorithm follows from the key (Ed25519: EdDSA, P-256: ES256, RSA: RS256).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublicKeyConfig {
    /// The key id assertions name in their header.
    pub kid: String,
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo; RSA may also be `RSA PUBLIC KEY`).
    pub pem: Option<String>,
    /// A file holding such a PEM.
    pub pem_file: Option<PathBuf>,
    /// A public JWK, as JSON text.
    pub jwk: Option<String>,
}

impl ActorAssertionsConfig {
    fn validate(&self, p: &mut Vec<String>) {
        validate_issuer_keys(
            "actor_assertions",
            ("issuer", &self.issuer),
            &self.audience,
            (self.jwks_url.as_deref(), false),
            &self.public_keys,
            p,
        );
        if !(1..=300).contains(&self.max_lifetime_seconds) {
            p.push("actor_assertions.max_lifetime_seconds: must be between 1 and 300".into());
        }
        validate_jwks_timing(
            "actor_assertions",
            [
                self.leeway_seconds,
                self.jwks_refresh_seconds,
                self.jwks_min_refetch_seconds,
            ],
            p,
        );
        if self.replay_cache_max_entries == 0 {
            p.push("actor_assertions.replay_cache_max_entries: must be at least 1".into());
        }
    }
}

/// OAuth connect settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Redirect URIs StartConnect accepts (exact match), as registered at the providers.
    pub redirect_uris: Vec<String>,
    /// Timeout of each call to a provider.
    pub http_timeout_seconds: u64,
    /// Allow plain-http provider endpoints on 127.0.0.1/localhost (local development only).
    pub allow_insecure_loopback: bool,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            redirect_uris: Vec::new(),
            http_timeout_seconds: 10,
            allow_insecure_loopback: false,
        }
    }
}

/// One provider's client registration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// OAuth client id (env `CREDENTIAL_BROKER_PROVIDER_<ID>_CLIENT_ID` overrides).
    pub client_id: Option<String>,
    /// OAuth client secret (env `CREDENTIAL_BROKER_PROVIDER_<ID>_CLIENT_SECRET` overrides; prefer the env).
    pub client_secret: Option<SecretValue>,
    /// Values for URL placeholders such as `shop` (Shopify) or `subdomain` (Zendesk).
    pub placeholders: BTreeMap<String, String>,
}

/// A secret read from config; never printed.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The value, for use only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Least margin of `tokens.lease_seconds` over one provider attempt (a quarter of the attempt
/// when that is more): covers a renewal's round trip to the database.
pub const LEASE_MARGIN_SECONDS: u64 = 1;

/// Token issuance and refresh.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Default `min_valid_for` of GetAccessToken.
    pub default_min_valid_seconds: u64,
    /// Refresh ahead of expiry within this window (jittered).
    pub refresh_ahead_seconds: u64,
    /// How often the background refresher scans for due credentials (0 disables it).
    pub refresh_scan_interval_seconds: u64,
    /// Refresh-ahead refreshes run at once by one replica, at most.
    pub refresh_ahead_concurrency: usize,
    /// Cross-replica refresh lease, renewed every third of it while its holder lives (judged by
    /// the database clock): a crashed holder is noticed within it. At least one provider attempt
    /// (`oauth.http_timeout_seconds`) plus a margin.
    pub lease_seconds: u64,
    /// Provider attempts per refresh (transient failures).
    pub provider_attempts: u32,
    /// How long a provider's open circuit rejects refreshes before letting one through.
    pub breaker_cooldown_seconds: u64,
    /// Credentials whose token is kept in memory; past it the least useful are evicted.
    pub cache_max_entries: u64,
    /// Longest a cached token and its member list are served before the database is read
    /// again (a backstop should an invalidation be missed unnoticed).
    pub cache_max_age_seconds: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            default_min_valid_seconds: 225,
            refresh_ahead_seconds: 600,
            refresh_scan_interval_seconds: 15,
            refresh_ahead_concurrency: 8,
            lease_seconds: 15,
            provider_attempts: 3,
            breaker_cooldown_seconds: 30,
            cache_max_entries: 10_000,
            cache_max_age_seconds: 60,
        }
    }
}

/// One calling service.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Name recorded in the audit log (e.g. `web`, `executor-eu`).
    pub name: String,
    /// Built-in role: `executor`, `web` or `operator`.
    pub role: String,
    /// Hex SHA-256 of the service's bearer token (`credential-broker hash-token`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Identity in the service's client certificate (a DNS subject alternative name, or the
    /// common name) for mTLS; needs `[tls] client_ca_file`.
    #[serde(default)]
    pub mtls_identity: Option<String>,
    /// Accept the actor from plain `x-actor-*` metadata (no signed assertion) from this caller:
    /// for migrating to actor assertions only; logged at start.
    #[serde(default)]
    pub unsigned_actor: bool,
    /// The `sub` of the caller's workload token, e.g. `system:serviceaccount:NAMESPACE:NAME`
    /// for a Kubernetes service account; needs `[workload_identity]`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Whether this executor must present a run grant with GetAccessToken (`required`, the
    /// default) or may name the actor itself when it has none (`optional`, for migrating).
    #[serde(default)]
    pub run_grants: Option<RunGrantMode>,
    /// The caller's SPIFFE ID (`spiffe://trust-domain/path`): the URI SAN of its X.509-SVID
    /// (mTLS; needs `[tls] client_ca_file` holding the trust domain's roots) or the `sub` of its
    /// JWT-SVID (needs `[spiffe]`).
    #[serde(default)]
    pub spiffe_id: Option<String>,
}

/// Whether an executor must present a run grant (docs/api.md "Run grants").
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunGrantMode {
    /// GetAccessToken without `x-run-grant` is refused (`RUN_GRANT_REQUIRED`).
    Required,
    /// A presented grant is used; without one the actor comes from the call as before.
    Optional,
}

/// Run grants: lifetimes and memory.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunGrantsConfig {
    /// Lifetime of a grant whose request names none.
    pub default_lifetime_seconds: u64,
    /// Longest lifetime a request may ask for (at most 86400).
    pub max_lifetime_seconds: u64,
    /// Grants kept in memory for GetAccessToken (a miss reads the database).
    pub cache_max_entries: u64,
}

impl Default for RunGrantsConfig {
    fn default() -> Self {
        Self {
            default_lifetime_seconds: 900,
            max_lifetime_seconds: 86_400,
            cache_max_entries: 100_000,
        }
    }
}

/// Longest run grant lifetime the configuration accepts.
const MAX_RUN_GRANT_LIFETIME_SECONDS: u64 = 86_400;

/// TLS for the gRPC listener; with `client_ca_file`, callers may authenticate by certificate.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle that signs client certificates (enables mTLS caller identities).
    pub client_ca_file: Option<PathBuf>,
    /// The listener speaks plaintext off loopback because a service mesh sidecar terminates
    /// (m)TLS in front of it. Without it, bearer-token callers on a non-loopback listener need TLS.
    pub mesh_terminates_tls: bool,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// Audit log settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this many days are pruned (0 keeps them forever).
    pub retention_days: u64,
}

/// Lifecycle event log and watch settings (`[events]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// Events older than this many days are pruned (0 keeps them forever).
    pub retention_days: u64,
    /// Seconds between heartbeats on an idle WatchCredentialEvents stream.
    pub heartbeat_seconds: u64,
    /// Milliseconds between re-reads of the log by a watch that heard of no change (the change
    /// feed wakes it at once otherwise).
    pub watch_poll_ms: u64,
    /// Milliseconds between passes of the webhook dispatcher that heard of no change (retries
    /// fall due with time).
    pub webhook_poll_ms: u64,
    /// First webhook retry delay in seconds; doubles per failed attempt.
    pub webhook_backoff_seconds: u64,
    /// Longest webhook retry delay in seconds.
    pub webhook_max_backoff_seconds: u64,
    /// An endpoint failing for this many seconds without one success is disabled.
    pub webhook_disable_after_seconds: u64,
    /// Grants whose absolute end is this many hours away or less are marked EXPIRING with an
    /// `expiring` event.
    pub expiring_warning_hours: u64,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            retention_days: 90,
            heartbeat_seconds: 15,
            watch_poll_ms: 1000,
            webhook_poll_ms: 1000,
            webhook_backoff_seconds: 5,
            webhook_max_backoff_seconds: 3600,
            webhook_disable_after_seconds: 3 * 86_400,
            expiring_warning_hours: 7 * 24,
        }
    }
}

/// One webhook endpoint (`[[webhooks]]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Stable name of the endpoint (its delivery log and failure state are kept under it).
    pub id: String,
    /// The workspace whose events it receives.
    pub workspace_id: String,
    /// Where events are POSTed: https (plain http only to loopback with
    /// `outbound.allow_loopback`), public addresses unless `outbound.allow_private_networks`.
    pub url: String,
    /// Signing secrets `whsec_<base64>`, each signing every delivery: two during a rotation.
    pub secrets: Vec<SecretValue>,
    /// The event types it receives (`connected`, `needs_reconnect`, …); empty: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl WebhookSettings {
    /// Checks one endpoint; problems are pushed to `p` (never the secrets).
    fn validate(&self, outbound: &OutboundConfig, p: &mut Vec<String>) {
        let at = format!("webhooks[{}]", self.id);
        if self.id.is_empty() || self.workspace_id.is_empty() {
            p.push(format!("{at}: id and workspace_id must not be empty"));
        }
        if self
            .id
            .starts_with(cb_broker::webhook_endpoints::ENDPOINT_ID_PREFIX)
        {
            p.push(format!(
                "{at}: ids starting with {} are those of endpoints created through the API",
                cb_broker::webhook_endpoints::ENDPOINT_ID_PREFIX
            ));
        }
        match url::Url::parse(&self.url) {
            Ok(u) => {
                if let Err(e) = cb_oauth::outbound::check_url(&outbound.policy(), &u) {
                    p.push(format!("{at}.url: {e}"));
                }
            }
            Err(_) => p.push(format!("{at}.url: not a URL")),
        }
        if self.secrets.is_empty() || self.secrets.len() > 2 {
            p.push(format!(
                "{at}.secrets: one secret, or two during a rotation"
            ));
        }
        for (i, s) in self.secrets.iter().enumerate() {
            if let Err(e) = cb_broker::webhooks::WebhookSecret::parse(s.expose()) {
                p.push(format!("{at}.secrets[{i}]: {e}"));
            }
        }
        if let Err(e) = self.kinds() {
            p.push(format!("{at}.event_types: {e}"));
        }
    }

    /// The event kinds of `event_types`.
    pub fn kinds(&self) -> Result<Vec<cb_broker::health::EventKind>, String> {
        cb_broker::webhooks::parse_event_types(&self.event_types)
    }
}

impl EventsSettings {
    /// The webhook dispatcher's settings.
    pub fn webhooks(&self) -> cb_broker::webhooks::WebhookConfig {
        cb_broker::webhooks::WebhookConfig {
            backoff_base: std::time::Duration::from_secs(self.webhook_backoff_seconds.max(1)),
            backoff_max: std::time::Duration::from_secs(self.webhook_max_backoff_seconds.max(1)),
            disable_after: std::time::Duration::from_secs(self.webhook_disable_after_seconds),
            ..cb_broker::webhooks::WebhookConfig::default()
        }
    }

    /// The domain's view.
    pub fn domain(&self) -> cb_broker::events::EventsConfig {
        cb_broker::events::EventsConfig {
            heartbeat: std::time::Duration::from_secs(self.heartbeat_seconds.max(1)),
            poll: std::time::Duration::from_millis(self.watch_poll_ms.max(10)),
            retention: (self.retention_days > 0).then(|| {
                std::time::Duration::from_secs(self.retention_days.saturating_mul(86_400))
            }),
            expiring_warning: std::time::Duration::from_secs(
                self.expiring_warning_hours.saturating_mul(3600),
            ),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 400,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database: DatabaseConfig::default(),
            keys: KeysConfig::default(),
            log: LogConfig::default(),
            shutdown_grace_seconds: 20,
            callers: Vec::new(),
            tls: TlsConfig::default(),
            audit: AuditConfig::default(),
            events: EventsSettings::default(),
            webhooks: Vec::new(),
            oauth: OAuthConfig::default(),
            providers: BTreeMap::new(),
            custom_providers: Vec::new(),
            tokens: TokensConfig::default(),
            telemetry: TelemetryConfig::default(),
            health: HealthConfig::default(),
            limits: LimitsConfig::default(),
            actor_assertions: None,
            workload_identity: None,
            run_grants: RunGrantsConfig::default(),
            spiffe: None,
            outbound: OutboundConfig::default(),
        }
    }
}

/// Storage settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (one process) or `postgres://user:password@host/db` (replicas).
    pub url: DatabaseUrl,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl("sqlite://./data/broker.db".into()),
            max_connections: 10,
        }
    }
}

/// A database URL; may embed a password, so it never prints one.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with any password replaced by `***`: the one in the userinfo (parsed as a URL,
    /// so a password holding `@` is replaced whole) and `password` / `sslpassword` query
    /// parameters. A URL that does not parse keeps nothing before its last `@`.
    pub fn redacted(&self) -> String {
        const MASK: &str = "***";
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return match (self.0.split_once(':'), self.0.rsplit_once('@')) {
                (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{MASK}@{host}"),
                _ => self.0.clone(),
            };
        };
        let secret_param =
            |k: &str| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
        let query_secret = url.query_pairs().any(|(k, _)| secret_param(&k));
        if url.password().is_none() && !query_secret {
            return self.0.clone();
        }
        if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
            return format!("{}://{MASK}", url.scheme());
        }
        if query_secret {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if secret_param(&k) {
                        MASK.into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Which key provider wraps the per-credential data keys.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum KeyProviderKind {
    /// A local key file (development, single node).
    #[serde(rename = "local")]
    Local,
    /// An AWS KMS symmetric key (production).
    #[serde(rename = "aws-kms")]
    AwsKms,
}

impl KeyProviderKind {
    /// Parses the config spelling: `local` or `aws-kms`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Self::Local),
            "aws-kms" => Some(Self::AwsKms),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::AwsKms => "aws-kms",
        }
    }
}

impl fmt::Display for KeyProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key management settings. AWS credentials never come from here: the standard AWS chain
/// (environment, profile, web identity / IRSA, ECS, instance metadata) supplies them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// `local` (a key file; the development default) or `aws-kms`.
    pub provider: KeyProviderKind,
    /// The local key file (provider `local`); created on first start when missing.
    pub local_key_file: PathBuf,
    /// Provider `aws-kms` only: the local key file the credentials were sealed with before the
    /// move to KMS. Used only to OPEN data keys it wrapped (never to wrap new ones) until
    /// `credential-broker rotate-keys` has moved them all; never created.
    pub previous_local_key_file: Option<PathBuf>,
    /// Provider `aws-kms`: the key that wraps new data keys: key ARN, key id, or `alias/NAME`.
    pub aws_kms_key_id: Option<String>,
    /// Provider `aws-kms`: region; default the key ARN's region, else the AWS chain (`AWS_REGION`).
    pub aws_region: Option<String>,
    /// Provider `aws-kms`: endpoint override (VPC endpoint, or a KMS-compatible test server).
    pub aws_endpoint_url: Option<String>,
    /// Provider `aws-kms`: timeout of one KMS call attempt, connecting included.
    pub aws_timeout_seconds: u64,
    /// Provider `aws-kms`: attempts per KMS call, the first included (1 disables retries).
    pub aws_max_attempts: u32,
    /// Start even when the start-up self-check (a round trip through the key) fails, e.g. the
    /// KMS is unreachable: the broker then serves only what needs no new key operation —
    /// tokens and data keys already cached, which after a fresh start is nothing — and
    /// connects, imports and cache misses fail with UNAVAILABLE until the KMS answers again.
    pub start_degraded: bool,
    /// Bound of the in-memory cache of unwrapped data keys.
    pub dek_cache_max_entries: usize,
    /// Maximum age of a cached data key.
    pub dek_cache_max_age_seconds: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: KeyProviderKind::Local,
            local_key_file: PathBuf::from("./data/local-key.json"),
            previous_local_key_file: None,
            aws_kms_key_id: None,
            aws_region: None,
            aws_endpoint_url: None,
            aws_timeout_seconds: 5,
            aws_max_attempts: 3,
            start_degraded: false,
            dek_cache_max_entries: 10_000,
            dek_cache_max_age_seconds: 3600,
        }
    }
}

impl KeysConfig {
    /// The `aws-kms` provider settings (without credentials: the standard AWS chain supplies
    /// them); `None` unless the provider is `aws-kms` with a key id.
    pub fn aws_kms(&self) -> Option<cb_crypto::AwsKmsConfig> {
        if self.provider != KeyProviderKind::AwsKms {
            return None;
        }
        let key_id = self.aws_kms_key_id.as_deref()?.trim();
        Some(cb_crypto::AwsKmsConfig {
            region: self.aws_region.clone(),
            endpoint_url: self.aws_endpoint_url.clone(),
            timeout: std::time::Duration::from_secs(self.aws_timeout_seconds),
            max_attempts: self.aws_max_attempts,
            ..cb_crypto::AwsKmsConfig::new(key_id)
        })
    }

    /// The configured key, for messages: the key file or the KMS key id.
    pub fn describe(&self) -> String {
        match self.provider {
            KeyProviderKind::Local => format!("local key file {}", self.local_key_file.display()),
            KeyProviderKind::AwsKms => format!(
                "aws-kms key {}",
                self.aws_kms_key_id.as_deref().unwrap_or("(unset)")
            ),
        }
    }

    fn validate(&self, p: &mut Vec<String>) {
        let kms_settings: Vec<&str> = [
            ("aws_kms_key_id", self.aws_kms_key_id.is_some()),
            ("aws_region", self.aws_region.is_some()),
            ("aws_endpoint_url", self.aws_endpoint_url.is_some()),
            (
                "previous_local_key_file",
                self.previous_local_key_file.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match self.provider {
            KeyProviderKind::Local if !kms_settings.is_empty() => p.push(format!(
                "keys: {} only apply to keys.provider = \"aws-kms\", but keys.provider is \"local\": \
                 set keys.provider = \"aws-kms\" (env {ENV_PREFIX}KEYS_PROVIDER) or remove them",
                kms_settings.join(", ")
            )),
            KeyProviderKind::Local => {}
            KeyProviderKind::AwsKms => {
                if self.aws_kms_key_id.as_deref().is_none_or(|k| k.trim().is_empty()) {
                    p.push(format!(
                        "keys.aws_kms_key_id: required with keys.provider = \"aws-kms\": the KMS key \
                         ARN, key id or alias/NAME that wraps data keys (env {ENV_PREFIX}KEYS_AWS_KMS_KEY_ID)"
                    ));
                }
                if let Some(region) = &self.aws_region
                    && (region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                {
                    p.push(format!(
                        "keys.aws_region: {region:?} is not a region name like eu-west-1"
                    ));
                }
                if let Some(url) = &self.aws_endpoint_url
                    && !(url.starts_with("https://") || url.starts_with("http://"))
                {
                    p.push(format!(
                        "keys.aws_endpoint_url: {url:?} must be an http:// or https:// URL"
                    ));
                }
                if self.aws_timeout_seconds == 0 {
                    p.push("keys.aws_timeout_seconds: must be at least 1".into());
                }
                if !(1..=10).contains(&self.aws_max_attempts) {
                    p.push("keys.aws_max_attempts: must be between 1 and 10".into());
                }
            }
        }
        if self.dek_cache_max_entries == 0 {
            p.push("keys.dek_cache_max_entries: must be at least 1".into());
        }
    }
}

/// Log output.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `credential_broker=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Traces and metrics. Both are off by default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector for traces, e.g. `http://otel-collector:4317`; unset: no traces.
    /// When unset here, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME` when not set here).
    pub service_name: Option<String>,
    /// Address of the Prometheus scrape endpoint (`GET /metrics`), e.g. `0.0.0.0:9464`;
    /// unset: no endpoint (env `CREDENTIAL_BROKER_METRICS_LISTEN`).
    pub metrics_listen: Option<SocketAddr>,
    /// How often the credentials-by-status gauge is read from the database.
    pub credentials_gauge_seconds: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            metrics_listen: None,
            credentials_gauge_seconds: 30,
        }
    }
}

impl TelemetryConfig {
    /// The `service.name` of the spans.
    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or("credential-broker")
    }

    fn apply_env(&mut self, env: &dyn EnvSource, problems: &mut Vec<String>) {
        // The standard OpenTelemetry variables fill in what the file leaves unset.
        if self.otlp_endpoint.is_none() {
            self.otlp_endpoint = env
                .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .filter(|v| !v.trim().is_empty());
        }
        if self.service_name.is_none() {
            self.service_name = env.get("OTEL_SERVICE_NAME").filter(|v| !v.is_empty());
        }
        if env
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            self.otlp_endpoint = None;
        }
        if let Some(v) = env.get(&format!("{ENV_PREFIX}METRICS_LISTEN")) {
            match v.parse() {
                Ok(a) => self.metrics_listen = Some(a),
                Err(_) => problems.push(format!(
                    "{ENV_PREFIX}METRICS_LISTEN: {v:?} is not an address like 0.0.0.0:9464"
                )),
            }
        }
    }

    fn validate(&self, p: &mut Vec<String>) {
        // No TLS to the collector yet: the exporter has no trust roots (run a local agent).
        if let Some(e) = &self.otlp_endpoint
            && !e.starts_with("http://")
        {
            p.push(format!(
                "telemetry.otlp_endpoint: {e:?} must be a plain http:// URL of an OTLP/gRPC receiver (usually port 4317; TLS to the collector is not supported)"
            ));
        }
        if self.credentials_gauge_seconds == 0 {
            p.push("telemetry.credentials_gauge_seconds: must be at least 1".into());
        }
    }
}

/// The background checks that turn `grpc.health.v1` NOT_SERVING while a dependency is down.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the database is pinged.
    pub database_check_seconds: u64,
    /// How often the key provider (KMS) does a round trip.
    pub kms_check_seconds: u64,
    /// A check that takes longer than this counts as failed.
    pub check_timeout_seconds: u64,
    /// A second, plaintext listener that serves only `grpc.health.v1` (for probes that cannot
    /// speak TLS, such as the kubelet's gRPC probes, when the main listener uses TLS).
    pub listen: Option<SocketAddr>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            database_check_seconds: 5,
            kms_check_seconds: 30,
            check_timeout_seconds: 3,
            listen: None,
        }
    }
}

impl HealthConfig {
    fn validate(&self, p: &mut Vec<String>) {
        for (key, v) in [
            ("database_check_seconds", self.database_check_seconds),
            ("kms_check_seconds", self.kms_check_seconds),
            ("check_timeout_seconds", self.check_timeout_seconds),
        ] {
            if v == 0 {
                p.push(format!("health.{key}: must be at least 1"));
            }
        }
    }
}

/// Requests to URLs that workspaces choose: https only, no redirects, public addresses only unless
/// allowed here (`cb_oauth::outbound`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Allow loopback addresses, and plain http to them (development and tests).
    pub allow_loopback: bool,
    /// Allow private, shared and unique-local addresses (internal receivers or providers).
    pub allow_private_networks: bool,
    /// Time allowed for a whole request.
    pub timeout_seconds: u64,
    /// Largest response body read.
    pub max_response_bytes: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        let policy = OutboundPolicy::default();
        Self {
            allow_loopback: policy.allow_loopback,
            allow_private_networks: policy.allow_private_networks,
            timeout_seconds: policy.timeout.as_secs(),
            max_response_bytes: policy.max_response_bytes,
        }
    }
}

impl OutboundConfig {
    /// The policy the outbound client enforces.
    pub fn policy(&self) -> OutboundPolicy {
        OutboundPolicy {
            allow_loopback: self.allow_loopback,
            allow_private_networks: self.allow_private_networks,
            timeout: std::time::Duration::from_secs(self.timeout_seconds),
            max_response_bytes: self.max_response_bytes,
        }
    }

    fn validate(&self, p: &mut Vec<String>) {
        if self.timeout_seconds == 0 {
            p.push("outbound.timeout_seconds: must be at least 1".into());
        }
        if self.max_response_bytes == 0 {
            p.push("outbound.max_response_bytes: must be at least 1".into());
        }
    }
}

/// Limits that keep one caller or one request from exhausting the broker.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Calls one calling service may have in flight at once; more get RESOURCE_EXHAUSTED.
    /// 0: no limit.
    pub max_concurrent_per_caller: usize,
    /// Largest request message accepted (bytes, after decompression).
    pub max_request_bytes: usize,
    /// API calls in flight in the whole process, before authentication; more are shed with
    /// UNAVAILABLE. 0: no limit.
    pub max_concurrent_calls: usize,
    /// Open connections at most; more are closed at accept. 0: no cap.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// A new connection that has not sent its preface (or TLS hello) by then is closed.
    pub handshake_timeout_seconds: u64,
    /// A connection without calls for this long is closed. 0: never.
    pub idle_timeout_seconds: u64,
    /// HTTP/2 keepalive ping interval; a peer that does not answer within
    /// `keepalive_timeout_seconds` is dropped.
    pub keepalive_interval_seconds: u64,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_per_caller: 256,
            max_request_bytes: 1024 * 1024,
            max_concurrent_calls: 1024,
            max_connections: 4096,
            max_streams_per_connection: 256,
            handshake_timeout_seconds: 10,
            idle_timeout_seconds: 300,
            keepalive_interval_seconds: 30,
            keepalive_timeout_seconds: 10,
        }
    }
}

impl LimitsConfig {
    /// What the listener enforces on each connection.
    pub fn connections(&self) -> crate::runtime::listener::ConnectionLimits {
        crate::runtime::listener::ConnectionLimits {
            max_connections: self.max_connections,
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout_seconds),
            idle_timeout: (self.idle_timeout_seconds > 0)
                .then(|| std::time::Duration::from_secs(self.idle_timeout_seconds)),
        }
    }

    fn validate(&self, p: &mut Vec<String>) {
        if self.max_request_bytes < 1024 {
            p.push("limits.max_request_bytes: must be at least 1024".into());
        }
        for (key, v) in [
            (
                "max_streams_per_connection",
                u64::from(self.max_streams_per_connection),
            ),
            ("handshake_timeout_seconds", self.handshake_timeout_seconds),
            (
                "keepalive_interval_seconds",
                self.keepalive_interval_seconds,
            ),
            ("keepalive_timeout_seconds", self.keepalive_timeout_seconds),
        ] {
            if v == 0 {
                p.push(format!("limits.{key}: must be at least 1"));
            }
        }
    }
}

/// Everything wrong with a configuration, each problem on its own line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads `path` (if given), applies environment overrides, then validates.
    pub fn load(path: Option<&Path>, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(vec![format!("{}: cannot read: {e}", p.display())]))?;
                Self::parse(&text)
                    .map_err(|e| ConfigError(vec![format!("{}: {e}", p.display())]))?
            }
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; the error names the line, column and key.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let var = |name: &str| env.get(&format!("{ENV_PREFIX}{name}"));
        if let Some(v) = var("LISTEN") {
            match v.parse() {
                Ok(a) => self.listen = a,
                Err(_) => problems.push(format!(
                    "{ENV_PREFIX}LISTEN: {v:?} is not an address like 127.0.0.1:50051"
                )),
            }
        }
        if let Some(v) = var("DATABASE_URL") {
            self.database.url = DatabaseUrl(v);
        }
        if let Some(v) = var("DATABASE_MAX_CONNECTIONS") {
            match v.parse() {
                Ok(n) => self.database.max_connections = n,
                Err(_) => problems.push(format!(
                    "{ENV_PREFIX}DATABASE_MAX_CONNECTIONS: {v:?} is not a number"
                )),
            }
        }
        if let Some(v) = var("KEYS_PROVIDER") {
            match KeyProviderKind::parse(&v) {
                Some(k) => self.keys.provider = k,
                None => problems.push(format!(
                    "{ENV_PREFIX}KEYS_PROVIDER: {v:?} must be local or aws-kms"
                )),
            }
        }
        if let Some(v) = var("KEYS_LOCAL_KEY_FILE") {
            self.keys.local_key_file = PathBuf::from(v);
        }
        if let Some(v) = var("KEYS_PREVIOUS_LOCAL_KEY_FILE") {
            self.keys.previous_local_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = var("KEYS_AWS_KMS_KEY_ID") {
            self.keys.aws_kms_key_id = Some(v);
        }
        if let Some(v) = var("KEYS_AWS_REGION") {
            self.keys.aws_region = Some(v);
        }
        if let Some(v) = var("KEYS_AWS_ENDPOINT_URL") {
            self.keys.aws_endpoint_url = Some(v);
        }
        if let Some(v) = var("LOG_FORMAT") {
            match v.as_str() {
                "text" => self.log.format = LogFormat::Text,
                "json" => self.log.format = LogFormat::Json,
                _ => problems.push(format!(
                    "{ENV_PREFIX}LOG_FORMAT: {v:?} must be text or json"
                )),
            }
        }
        if let Some(v) = var("LOG_FILTER") {
            self.log.filter = v;
        }
        self.telemetry.apply_env(env, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            p.push(format!(
                "database.url: {:?} must start with sqlite:, postgres:// or postgresql://",
                self.database.url.redacted()
            ));
        }
        if self.database.max_connections == 0 {
            p.push("database.max_connections: must be at least 1".into());
        }
        self.keys.validate(&mut p);
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.callers.iter().enumerate() {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                p.push(format!(
                    "callers[{i}].name: must be non-empty letters, digits, - or _"
                ));
            }
            if !names.insert(c.name.as_str()) {
                p.push(format!("callers[{i}].name: {:?} is declared twice", c.name));
            }
            if ServiceRole::parse(&c.role).is_none() {
                p.push(format!(
                    "callers[{i}].role: {:?} must be executor, web or operator",
                    c.role
                ));
            }
            match (&c.token_sha256, &c.mtls_identity) {
                (None, None) if c.service_account.is_none() && c.spiffe_id.is_none() => p.push(format!(
                    "callers[{i}]: set token_sha256 (run `credential-broker hash-token`), mtls_identity, service_account or spiffe_id"
                )),
                (Some(h), _) if decode_sha256(h).is_none() => p.push(format!(
                    "callers[{i}].token_sha256: must be 64 hex characters (run `credential-broker hash-token`)"
                )),
                _ => {}
            }
            if c.service_account.is_some() && self.workload_identity.is_none() {
                p.push(format!(
                    "callers[{i}].service_account: needs [workload_identity] (issuer, audience, keys)"
                ));
            }
            if c.mtls_identity.is_some() && self.tls.client_ca_file.is_none() {
                p.push(format!("callers[{i}].mtls_identity: needs [tls] client_ca_file (and cert_file, key_file)"));
            }
            if let Some(id) = &c.spiffe_id {
                let valid = id
                    .strip_prefix("spiffe://")
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(td, path)| !td.is_empty() && !path.is_empty());
                if !valid {
                    p.push(format!(
                        "callers[{i}].spiffe_id: {id:?} must be spiffe://TRUST_DOMAIN/PATH"
                    ));
                }
                if let Some(sp) = &self.spiffe
                    && !id.starts_with(&sp.id_prefix())
                {
                    p.push(format!(
                        "callers[{i}].spiffe_id: not in trust domain {:?} ([spiffe])",
                        sp.trust_domain
                    ));
                }
                if self.spiffe.is_none() && self.tls.client_ca_file.is_none() {
                    p.push(format!(
                        "callers[{i}].spiffe_id: needs [spiffe] (JWT-SVIDs) or [tls] client_ca_file (X.509-SVIDs)"
                    ));
                }
            }
            if c.run_grants.is_some() && c.role != "executor" {
                p.push(format!(
                    "callers[{i}].run_grants: only executor callers present run grants"
                ));
            }
        }
        for (i, uri) in self.oauth.redirect_uris.iter().enumerate() {
            let ok = uri.starts_with("https://")
                || (self.oauth.allow_insecure_loopback
                    && (uri.starts_with("http://127.0.0.1")
                        || uri.starts_with("http://localhost")));
            if !ok {
                p.push(format!("oauth.redirect_uris[{i}]: {uri:?} must be https (or http on loopback with oauth.allow_insecure_loopback)"));
            }
        }
        if self.oauth.http_timeout_seconds == 0 {
            p.push("oauth.http_timeout_seconds: must be at least 1".into());
        }
        let t = &self.tokens;
        // The holder renews its lease every third of it; the lease must still outlast one
        // provider attempt with a margin, so that a holder whose renewals fail (a database blip)
        // is not taken over while its request (and the refresh token it sent) is in flight.
        let attempt = self.oauth.http_timeout_seconds;
        let needed = attempt + (attempt / 4).max(LEASE_MARGIN_SECONDS);
        if t.lease_seconds < needed {
            p.push(format!(
                "tokens.lease_seconds: {} must be at least oauth.http_timeout_seconds plus a margin ({needed}) so a leader is never taken over while one provider attempt is in flight",
                t.lease_seconds
            ));
        }
        if t.refresh_ahead_concurrency == 0 {
            p.push("tokens.refresh_ahead_concurrency: must be at least 1".into());
        }
        if t.cache_max_age_seconds == 0 {
            p.push("tokens.cache_max_age_seconds: must be at least 1".into());
        }
        if t.provider_attempts == 0 {
            p.push("tokens.provider_attempts: must be at least 1".into());
        }
        let g = &self.run_grants;
        if g.max_lifetime_seconds == 0 || g.max_lifetime_seconds > MAX_RUN_GRANT_LIFETIME_SECONDS {
            p.push(format!(
                "run_grants.max_lifetime_seconds: must be 1 to {MAX_RUN_GRANT_LIFETIME_SECONDS}"
            ));
        }
        if g.default_lifetime_seconds == 0 || g.default_lifetime_seconds > g.max_lifetime_seconds {
            p.push(
                "run_grants.default_lifetime_seconds: must be at least 1 and at most run_grants.max_lifetime_seconds"
                    .into(),
            );
        }
        for spec in &self.custom_providers {
            if let Err(problems) =
                cb_oauth::catalog::Catalog::validate(spec, self.oauth.allow_insecure_loopback)
            {
                for problem in problems {
                    p.push(format!("custom_providers {:?}: {problem}", spec.id));
                }
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            p.push("tls: cert_file and key_file go together".into());
        }
        if self.tls.client_ca_file.is_some() && !self.tls.enabled() {
            p.push("tls.client_ca_file: needs tls.cert_file and tls.key_file".into());
        }
        if self.plaintext_bearer_off_loopback() && !self.tls.mesh_terminates_tls {
            p.push(format!(
                "tls: bearer-token callers on {} (not loopback) without TLS would send their tokens \
                 in clear; set [tls] cert_file and key_file, or tls.mesh_terminates_tls = true if a \
                 service mesh terminates mTLS in front of the broker",
                self.listen
            ));
        }
        if self.callers.is_empty() && !self.listen.ip().is_loopback() {
            p.push(format!(
                "listen: {} is not a loopback address, and no caller authentication is configured; \
                 refusing to expose the broker unauthenticated (listen on 127.0.0.1)",
                self.listen
            ));
        }
        self.telemetry.validate(&mut p);
        self.health.validate(&mut p);
        self.outbound.validate(&mut p);
        let mut ids = std::collections::BTreeSet::new();
        for w in &self.webhooks {
            w.validate(&self.outbound, &mut p);
            if !ids.insert(w.id.as_str()) {
                p.push(format!("webhooks[{}]: the id is used twice", w.id));
            }
        }
        self.limits.validate(&mut p);
        if let Some(a) = &self.actor_assertions {
            a.validate(&mut p);
        }
        if let Some(w) = &self.workload_identity {
            w.validate(&mut p);
        }
        if let Some(sp) = &self.spiffe {
            sp.validate(&mut p);
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(p))
        }
    }

    /// Whether bearer tokens would cross a network in clear: token callers, a non-loopback
    /// listener and no TLS of our own.
    pub fn plaintext_bearer_off_loopback(&self) -> bool {
        !self.listen.ip().is_loopback()
            && !self.tls.enabled()
            && self
                .callers
                .iter()
                .any(|c| c.token_sha256.is_some() || c.service_account.is_some())
    }

    /// The configured calling services (empty: development mode).
    pub fn callers(&self) -> Callers {
        let mut callers = Callers::default();
        for c in &self.callers {
            let Some(role) = ServiceRole::parse(&c.role) else {
                continue;
            };
            let identity = ServiceIdentity {
                name: c.name.clone(),
                role,
            };
            if let Some(hash) = c.token_sha256.as_deref().and_then(decode_sha256) {
                callers.tokens.push(KnownCaller {
                    identity: identity.clone(),
                    token_sha256: hash,
                });
            }
            if let Some(subject) = &c.service_account {
                callers.workloads.push((subject.clone(), identity.clone()));
            }
            if let Some(id) = &c.spiffe_id {
                callers.spiffe.push((id.clone(), identity.clone()));
            }
            if let Some(subject) = &c.mtls_identity {
                callers.certificates.push((subject.clone(), identity));
            }
        }
        callers
    }
}

impl Config {
    /// The executors that must present a run grant: every executor-role caller whose
    /// `run_grants` is not `optional`.
    pub fn run_grant_required_callers(&self) -> std::collections::BTreeSet<String> {
        self.callers
            .iter()
            .filter(|c| {
                ServiceRole::parse(&c.role) == Some(ServiceRole::Executor)
                    && c.run_grants != Some(RunGrantMode::Optional)
            })
            .map(|c| c.name.clone())
            .collect()
    }

    /// The callers allowed to name the actor in plain metadata (`unsigned_actor = true`).
    pub fn unsigned_actor_callers(&self) -> std::collections::BTreeSet<String> {
        self.callers
            .iter()
            .filter(|c| c.unsigned_actor)
            .map(|c| c.name.clone())
            .collect()
    }
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An environment of `pairs`, for the functions that read one.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.database.url.expose(), "sqlite://./data/broker.db");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[database]\nurll = \"x\"\n").unwrap_err();
        assert!(e.contains("urll") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::load(
            None,
            &env(&[
                ("CREDENTIAL_BROKER_LISTEN", "127.0.0.1:1"),
                ("CREDENTIAL_BROKER_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.log.format, LogFormat::Json);
        let e = Config::load(None, &env(&[("CREDENTIAL_BROKER_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(e.to_string().contains("LOG_FORMAT"));
    }

    #[test]
    fn non_loopback_without_auth_is_refused() {
        let e =
            Config::load(None, &env(&[("CREDENTIAL_BROKER_LISTEN", "0.0.0.0:50051")])).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn callers_are_validated_and_allow_non_loopback() {
        let hash = crate::layers::auth::token_sha256_hex("s3cret");
        let ok = format!(
            "listen = \"0.0.0.0:50051\"\n[tls]\nmesh_terminates_tls = true\n[[callers]]\nname = \"web\"\nrole = \"web\"\ntoken_sha256 = \"{hash}\"\n"
        );
        let c = Config::parse(&ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.callers().tokens.len(), 1);
        assert!(c.plaintext_bearer_off_loopback());
        let bad = "[[callers]]\nname = \"web\"\nrole = \"admin\"\ntoken_sha256 = \"xyz\"\n";
        let e = Config::parse(bad)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("callers[0].role") && e.contains("callers[0].token_sha256"),
            "{e}"
        );
    }

    #[test]
    fn webhook_ids_of_the_api_are_not_for_the_configuration() {
        let toml = |id: &str| {
            format!(
                "[[webhooks]]\nid = \"{id}\"\nworkspace_id = \"ws1\"\n\
                 url = \"https://hooks.example.com/x\"\n\
                 secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n"
            )
        };
        Config::parse(&toml("ops")).unwrap().validate().unwrap();
        let e = Config::parse(&toml("whe_0192"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhooks[whe_0192]") && e.contains("API"), "{e}");
    }

    #[test]
    fn actor_assertions_and_workload_identity_are_validated() {
        let e = Config::parse(
            "[[callers]]\nname = \"x\"\nrole = \"executor\"\nservice_account = \"system:serviceaccount:a:b\"\n\
             [actor_assertions]\njwks_url = \"http://example.com/jwks\"\nmax_lifetime_seconds = 3600\n\
             [[actor_assertions.public_keys]]\nkid = \"k\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        for problem in [
            "callers[0].service_account: needs [workload_identity]",
            "actor_assertions.jwks_url: \"http://example.com/jwks\"",
            "actor_assertions.issuer: required",
            "actor_assertions.audience: required",
            "actor_assertions.jwks_url",
            "actor_assertions.max_lifetime_seconds",
            "actor_assertions.public_keys[0]: set exactly one of pem, pem_file, jwk",
        ] {
            assert!(e.contains(problem), "{problem} in {e}");
        }
        let ok = Config::parse(
            "listen = \"0.0.0.0:50051\"\n[tls]\nmesh_terminates_tls = true\n\
             [[callers]]\nname = \"x\"\nrole = \"executor\"\nservice_account = \"system:serviceaccount:a:b\"\n\
             [workload_identity]\nissuer = \"https://k8s\"\naudience = \"broker\"\njwks_url = \"https://k8s/keys\"\n",
        )
        .unwrap();
        ok.validate().unwrap();
        // Service-account tokens are bearer tokens too: off loopback they need TLS (or a mesh).
        assert!(ok.plaintext_bearer_off_loopback());
        assert_eq!(ok.callers().workloads.len(), 1);
        assert!(!ok.callers().is_development());
        for (url, accepted) in [
            ("http://localhost.example.com/keys", false),
            ("http://127.0.0.1@example.com/keys", false),
            ("http://127.0.0.1:8080/keys", true),
            ("https://k8s.example.com/keys", true),
        ] {
            let mut c = ok.clone();
            if let Some(w) = c.workload_identity.as_mut() {
                w.jwks_url = Some(url.into());
            }
            assert_eq!(c.validate().is_ok(), accepted, "{url}");
        }
    }

    #[test]
    fn bearer_tokens_off_loopback_need_tls_or_an_explicit_mesh() {
        let hash = crate::layers::auth::token_sha256_hex("s3cret");
        let callers =
            format!("[[callers]]\nname = \"web\"\nrole = \"web\"\ntoken_sha256 = \"{hash}\"\n");
        let plain = format!("listen = \"0.0.0.0:50051\"\n{callers}");
        let e = Config::parse(&plain)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mesh_terminates_tls") && e.contains("cert_file"),
            "{e}"
        );
        let tls = format!(
            "listen = \"0.0.0.0:50051\"\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n{callers}"
        );
        let c = Config::parse(&tls).unwrap();
        c.validate().unwrap();
        assert!(!c.plaintext_bearer_off_loopback());
        let loopback = Config::parse(&format!("listen = \"127.0.0.1:50051\"\n{callers}")).unwrap();
        loopback.validate().unwrap();
        assert!(!loopback.plaintext_bearer_off_loopback());
    }

    #[test]
    fn telemetry_is_off_by_default_and_follows_the_otel_variables() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.telemetry.otlp_endpoint, None);
        assert_eq!(c.telemetry.metrics_listen, None);
        assert_eq!(c.telemetry.service_name(), "credential-broker");
        let c = Config::load(
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_SERVICE_NAME", "broker-eu"),
                ("CREDENTIAL_BROKER_METRICS_LISTEN", "0.0.0.0:9464"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(c.telemetry.service_name(), "broker-eu");
        assert_eq!(c.telemetry.metrics_listen.map(|a| a.port()), Some(9464));
        // The file wins over the standard variables; OTEL_SDK_DISABLED turns export off.
        let mut file = Config::parse(
            "[telemetry]\notlp_endpoint = \"http://file:4317\"\nservice_name = \"from-file\"\n",
        )
        .unwrap();
        file.apply_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ]))
        .unwrap();
        assert_eq!(
            file.telemetry.otlp_endpoint.as_deref(),
            Some("http://file:4317")
        );
        assert_eq!(file.telemetry.service_name(), "from-file");
        file.apply_env(&env(&[("OTEL_SDK_DISABLED", "true")]))
            .unwrap();
        assert_eq!(file.telemetry.otlp_endpoint, None);
        let e = Config::load(
            None,
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
        let e =
            Config::parse("[limits]\nmax_request_bytes = 10\n[health]\nkms_check_seconds = 0\n")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("limits.max_request_bytes") && e.contains("health.kms_check_seconds"),
            "{e}"
        );
    }

    #[test]
    fn database_password_is_redacted() {
        let u = DatabaseUrl("postgres://app:hunter2@db/broker".into());
        assert_eq!(format!("{u:?}"), "postgres://app:***@db/broker");
        assert!(
            !format!(
                "{:?}",
                Config {
                    database: DatabaseConfig {
                        url: u,
                        max_connections: 1
                    },
                    ..Config::default()
                }
            )
            .contains("hunter2")
        );
    }

    #[test]
    fn database_password_with_an_at_sign_is_redacted_whole() {
        for (url, shown) in [
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:p%40ss:w@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgresql://:only-pw@h/db", "postgresql://:***@h/db"),
            (
                "postgres://u@h/db?sslmode=require&password=s3cr%40t",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("sqlite:///var/lib/cb/b@k.db", "sqlite:///var/lib/cb/b@k.db"),
            ("sqlite:data/broker.db", "sqlite:data/broker.db"),
            ("postgres://u:p@ss@[bad/db", "postgres://***@[bad/db"),
        ] {
            let redacted = DatabaseUrl(url.into()).redacted();
            assert_eq!(redacted, shown, "{url}");
            for secret in ["p@ss", "ss@", "only-pw", "s3cr", "p%40ss"] {
                assert!(!redacted.contains(secret), "{url} -> {redacted}");
            }
        }
    }

    #[test]
    fn aws_kms_keys_parse_with_env_overrides() {
        let file = "[keys]\nprovider = \"aws-kms\"\naws_kms_key_id = \"alias/credential-broker\"\n\
                    aws_region = \"eu-west-1\"\nstart_degraded = true\n";
        let c = Config::parse(file).unwrap();
        c.validate().unwrap();
        assert_eq!(c.keys.provider, KeyProviderKind::AwsKms);
        assert!(c.keys.start_degraded);
        let kms = c.keys.aws_kms().unwrap();
        assert_eq!(kms.key_id, "alias/credential-broker");
        assert_eq!(kms.region.as_deref(), Some("eu-west-1"));
        assert_eq!(kms.timeout, std::time::Duration::from_secs(5));
        assert_eq!(kms.max_attempts, 3);
        assert!(
            kms.static_credentials.is_none(),
            "AWS credentials come from the chain"
        );

        let c = Config::load(
            None,
            &env(&[
                ("CREDENTIAL_BROKER_KEYS_PROVIDER", "aws-kms"),
                (
                    "CREDENTIAL_BROKER_KEYS_AWS_KMS_KEY_ID",
                    "arn:aws:kms:us-east-1:1:key/k",
                ),
                ("CREDENTIAL_BROKER_KEYS_AWS_REGION", "us-east-1"),
                (
                    "CREDENTIAL_BROKER_KEYS_AWS_ENDPOINT_URL",
                    "http://127.0.0.1:5599",
                ),
                (
                    "CREDENTIAL_BROKER_KEYS_PREVIOUS_LOCAL_KEY_FILE",
                    "/keys/old.json",
                ),
            ]),
        )
        .unwrap();
        let kms = c.keys.aws_kms().unwrap();
        assert_eq!(kms.key_id, "arn:aws:kms:us-east-1:1:key/k");
        assert_eq!(kms.endpoint_url.as_deref(), Some("http://127.0.0.1:5599"));
        assert_eq!(
            c.keys.previous_local_key_file.as_deref(),
            Some(Path::new("/keys/old.json"))
        );
        assert_eq!(
            c.keys.describe(),
            "aws-kms key arn:aws:kms:us-east-1:1:key/k"
        );
        assert_eq!(Config::default().keys.aws_kms().map(|k| k.key_id), None);
    }

    #[test]
    fn keys_problems_say_what_is_missing() {
        let e = Config::load(
            None,
            &env(&[("CREDENTIAL_BROKER_KEYS_PROVIDER", "aws-kms")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("keys.aws_kms_key_id: required") && e.contains("KEYS_AWS_KMS_KEY_ID"),
            "{e}"
        );
        let e = Config::load(None, &env(&[("CREDENTIAL_BROKER_KEYS_PROVIDER", "vault")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be local or aws-kms"), "{e}");
        let e = Config::parse("[keys]\nprovider = \"vault\"\n").unwrap_err();
        assert!(e.contains("local") && e.contains("aws-kms"), "{e}");

        let local_with_kms =
            "[keys]\naws_kms_key_id = \"alias/x\"\nprevious_local_key_file = \"/k\"\n";
        let e = Config::parse(local_with_kms)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "aws_kms_key_id, previous_local_key_file only apply to keys.provider = \"aws-kms\""
            ),
            "{e}"
        );

        let bad = "[keys]\nprovider = \"aws-kms\"\naws_kms_key_id = \"alias/x\"\naws_region = \"eu west\"\n\
                   aws_endpoint_url = \"kms.local\"\naws_timeout_seconds = 0\naws_max_attempts = 0\n";
        let e = Config::parse(bad)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        for field in [
            "keys.aws_region",
            "keys.aws_endpoint_url",
            "keys.aws_timeout_seconds",
            "keys.aws_max_attempts",
        ] {
            assert!(e.contains(field), "{field} in {e}");
        }
    }

    #[test]
    fn the_lease_outlasts_one_provider_attempt_with_a_margin() {
        let with = |lease: u64, timeout: u64| {
            Config::parse(&format!(
                "[tokens]\nlease_seconds = {lease}\n[oauth]\nhttp_timeout_seconds = {timeout}\n"
            ))
            .unwrap()
            .validate()
        };
        Config::default().validate().unwrap();
        with(4, 3).unwrap();
        with(12, 10).unwrap();
        for (lease, timeout) in [(3, 3), (11, 10), (10, 10)] {
            let e = with(lease, timeout).unwrap_err().to_string();
            assert!(e.contains("tokens.lease_seconds"), "{lease}/{timeout}: {e}");
        }
    }
}
