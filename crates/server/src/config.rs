//! Configuration: one TOML file (unknown keys rejected) plus `CREDENTIAL_BROKER_*` environment
//! overrides, read through [`EnvSource`] so tests inject values instead of mutating the process.

use crate::auth::{Callers, KnownCaller, ServiceIdentity};
use cb_broker::access::ServiceRole;
use cb_oauth::catalog::ProviderSpec;
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
    /// Audit log settings.
    pub audit: AuditConfig,
    /// OAuth connect settings.
    pub oauth: OAuthConfig,
    /// Client credentials (and URL placeholders) per provider id.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Additional OAuth 2.0 providers (or overrides of built-in ones), in the catalog's format.
    pub custom_providers: Vec<ProviderSpec>,
    /// Token issuance and refresh.
    pub tokens: TokensConfig,
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
    /// Cross-replica refresh lease; must exceed every provider attempt together.
    pub lease_seconds: u64,
    /// Provider attempts per refresh (transient failures).
    pub provider_attempts: u32,
    /// How long a provider's open circuit rejects refreshes before letting one through.
    pub breaker_cooldown_seconds: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            default_min_valid_seconds: 225,
            refresh_ahead_seconds: 600,
            refresh_scan_interval_seconds: 15,
            lease_seconds: 60,
            provider_attempts: 3,
            breaker_cooldown_seconds: 30,
        }
    }
}

/// One calling service.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// Name recorded in the audit log (e.g. `web`, `executor-eu`).
    pub name: String,
    /// Built-in role: `executor`, `web` or `operator`.
    pub role: String,
    /// Hex SHA-256 of the service's bearer token (`credential-broker hash-token`).
    pub token_sha256: String,
}

/// Audit log settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this many days are pruned (0 keeps them forever).
    pub retention_days: u64,
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
            audit: AuditConfig::default(),
            oauth: OAuthConfig::default(),
            providers: BTreeMap::new(),
            custom_providers: Vec::new(),
            tokens: TokensConfig::default(),
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
    /// The URL with any password replaced.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Key management settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// `local` (a key file; the development default).
    pub provider: String,
    /// The local key file; created on first start when missing.
    pub local_key_file: PathBuf,
    /// Bound of the in-memory cache of unwrapped data keys.
    pub dek_cache_max_entries: usize,
    /// Maximum age of a cached data key.
    pub dek_cache_max_age_seconds: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: "local".into(),
            local_key_file: PathBuf::from("./data/local-key.json"),
            dek_cache_max_entries: 10_000,
            dek_cache_max_age_seconds: 3600,
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
            self.keys.provider = v;
        }
        if let Some(v) = var("KEYS_LOCAL_KEY_FILE") {
            self.keys.local_key_file = PathBuf::from(v);
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
        if self.keys.provider != "local" {
            p.push(format!(
                "keys.provider: {:?} is not supported; use \"local\"",
                self.keys.provider
            ));
        }
        if self.keys.dek_cache_max_entries == 0 {
            p.push("keys.dek_cache_max_entries: must be at least 1".into());
        }
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
            if decode_sha256(&c.token_sha256).is_none() {
                p.push(format!(
                    "callers[{i}].token_sha256: must be 64 hex characters (run `credential-broker hash-token`)"
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
        let provider_time = self
            .oauth
            .http_timeout_seconds
            .saturating_mul(u64::from(t.provider_attempts.max(1)));
        if t.lease_seconds <= provider_time {
            p.push(format!(
                "tokens.lease_seconds: {} must exceed oauth.http_timeout_seconds × tokens.provider_attempts ({provider_time}) so a slow refresh never outlives its lease",
                t.lease_seconds
            ));
        }
        if t.provider_attempts == 0 {
            p.push("tokens.provider_attempts: must be at least 1".into());
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
        if self.callers.is_empty() && !self.listen.ip().is_loopback() {
            p.push(format!(
                "listen: {} is not a loopback address, and no caller authentication is configured; \
                 refusing to expose the broker unauthenticated (listen on 127.0.0.1)",
                self.listen
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(p))
        }
    }

    /// The configured calling services (empty: development mode).
    pub fn callers(&self) -> Callers {
        Callers(
            self.callers
                .iter()
                .filter_map(|c| {
                    Some(KnownCaller {
                        identity: ServiceIdentity {
                            name: c.name.clone(),
                            role: ServiceRole::parse(&c.role)?,
                        },
                        token_sha256: decode_sha256(&c.token_sha256)?,
                    })
                })
                .collect(),
        )
    }
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
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
        let hash = crate::auth::token_sha256_hex("s3cret");
        let ok = format!(
            "listen = \"0.0.0.0:50051\"\n[[callers]]\nname = \"web\"\nrole = \"web\"\ntoken_sha256 = \"{hash}\"\n"
        );
        let c = Config::parse(&ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.callers().0.len(), 1);
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
}
