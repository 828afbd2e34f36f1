//! Why the broker (or an operator command) could not start: one error type that the runtime
//! wiring, the key checks and the CLI commands all return, so none imports another for it.

use std::net::SocketAddr;

/// Why the broker could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Configuration problems.
    #[error(transparent)]
    Config(#[from] crate::runtime::config::ConfigError),
    /// The database could not be opened or migrated.
    #[error("database {url}: {source}")]
    Database {
        /// Redacted URL.
        url: String,
        /// Cause.
        source: cb_store::StoreError,
    },
    /// The key file could not be loaded or does not match the stored credentials.
    #[error("keys: {0}")]
    Keys(String),
    /// The provider catalog or provider settings are invalid.
    #[error("providers: {0}")]
    Providers(String),
    /// The TLS files could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// An operator command (`providers --check`, `credentials`) found a problem.
    #[error("{0}")]
    Command(String),
    /// The embedded API descriptors are broken (a build problem).
    #[error("reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}
