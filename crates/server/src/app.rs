//! Building and running the server: storage, keys, services, health, reflection, shutdown.

use crate::config::Config;
use crate::grpc::credential::CredentialApi;
use crate::grpc::membership::MembershipApi;
use cb_broker::clock::{Clock, SystemClock};
use cb_broker::credential::Credential;
use cb_broker::service::CredentialService;
use cb_crypto::{DekCacheConfig, Envelope, LocalKeyProvider};
use cb_proto::v1::credential_service_server::CredentialServiceServer;
use cb_proto::v1::membership_service_server::MembershipServiceServer;
use cb_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why the broker could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Configuration problems.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

/// Replaceable parts for tests (time); production uses the defaults.
#[derive(Clone)]
pub struct BuildOptions {
    /// Source of "now".
    pub clock: Arc<dyn Clock>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
        }
    }
}

/// Opens and migrates the configured database.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    let url = config.database.url.redacted();
    let db_err = |source| StartupError::Database {
        url: url.clone(),
        source,
    };
    let store = cb_store::open(
        config.database.url.expose(),
        config.database.max_connections,
    )
    .await
    .map_err(db_err)?;
    store.migrate().await.map_err(db_err)?;
    Ok(store)
}

/// Loads (or, on first start, creates) the configured key-encryption key.
pub fn open_envelope(config: &Config) -> Result<Arc<Envelope>, StartupError> {
    let path = &config.keys.local_key_file;
    let (provider, created) =
        LocalKeyProvider::load_or_create(path).map_err(|e| StartupError::Keys(e.to_string()))?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "DEVELOPMENT KEY: generated a new local key-encryption key; tokens are only as safe as this file. \
             Back it up, and use a KMS in production"
        );
    }
    tracing::info!(path = %path.display(), fingerprint = %provider.fingerprint(), "local key loaded");
    let cache = DekCacheConfig {
        max_entries: config.keys.dek_cache_max_entries,
        max_age: Duration::from_secs(config.keys.dek_cache_max_age_seconds),
    };
    Ok(Arc::new(Envelope::new(Arc::new(provider), cache)))
}

/// Refuses to start when stored tokens were sealed by a key the configured provider cannot use:
/// better a clear failure now than errors at first use.
async fn check_keys_open_stored_tokens(
    store: &dyn Store,
    service: &CredentialService,
    config: &Config,
) -> Result<(), StartupError> {
    let usage = store
        .key_usage()
        .await
        .map_err(|source| StartupError::Database {
            url: config.database.url.redacted(),
            source,
        })?;
    for k in usage {
        let row = store
            .get_credential(&k.sample_credential_id)
            .await
            .ok()
            .flatten();
        let opened = match row.map(Credential::from_row) {
            Some(Ok(c)) => service
                .open_tokens(&c)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => Ok(()), // the row changed since the scan; nothing to check
        };
        if let Err(e) = opened {
            return Err(StartupError::Keys(format!(
                "{} stored credential(s) are sealed with key {} version {}, which the configured key file {} cannot open ({e}); \
                 start with the key file that sealed them",
                k.credentials,
                k.key_id,
                k.key_version,
                config.keys.local_key_file.display()
            )));
        }
    }
    Ok(())
}

/// A started broker.
pub struct Application {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Application {
    /// Opens storage and keys, checks them, binds the listener and starts serving.
    pub async fn start(config: &Config, options: BuildOptions) -> Result<Self, StartupError> {
        config.validate()?;
        let store = open_store(config).await?;
        let envelope = open_envelope(config)?;
        let service = Arc::new(CredentialService::new(
            store.clone(),
            envelope,
            options.clock,
        ));
        check_keys_open_stored_tokens(store.as_ref(), &service, config).await?;

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<CredentialServiceServer<CredentialApi>>()
            .await;
        health
            .set_serving::<MembershipServiceServer<MembershipApi>>()
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(cb_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(StartupError::Reflection)?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(StartupError::Reflection)?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: config.listen,
            source,
        })?;
        let (tx, rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(CredentialServiceServer::new(CredentialApi::new(service)))
            .add_service(MembershipServiceServer::new(MembershipApi));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = rx.await;
        }));
        tracing::info!(addr = %local_addr, database = %config.database.url.redacted(), "credential broker listening");
        Ok(Self {
            local_addr,
            shutdown: Some(tx),
            server,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting calls and waits up to `grace` for in-flight calls to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(grace, &mut self.server).await {
            Ok(Ok(Ok(()))) => tracing::info!("stopped"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
            Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Err(_) => {
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "in-flight calls did not finish in time"
                );
                self.server.abort();
            }
        }
    }
}
