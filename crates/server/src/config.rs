//! Configuration: one TOML file (unknown keys rejected) plus `CREDENTIAL_BROKER_*` environment
//! overrides, read through [`EnvSource`] so tests inject values instead of mutating the process.

use serde::Deserialize;
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database: DatabaseConfig::default(),
            keys: KeysConfig::default(),
            log: LogConfig::default(),
            shutdown_grace_seconds: 20,
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
        if !self.listen.ip().is_loopback() {
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
