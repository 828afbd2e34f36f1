//! A key provider that connects on first use, for a broker started while its KMS is unreachable
//! (`[keys] start_degraded`): every call fails with [`CryptoError::Unavailable`] until a
//! connection attempt succeeds, then the connected provider serves every call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::{CryptoError, DataKey, EncryptionContext, KeyProvider, KeyRef, WrappedDek};

/// A connection attempt: builds the real provider (e.g. `AwsKmsKeyProvider::connect`).
pub type ConnectFn = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn KeyProvider>, CryptoError>> + Send>>
        + Send
        + Sync,
>;

struct Attempts {
    /// When the last attempt failed, and why.
    last_failure: Option<(Instant, String)>,
}

/// Connects the real provider lazily and retries, at most once per `retry_after`, while it fails.
pub struct DeferredKeyProvider {
    kind: &'static str,
    /// Reported by [`KeyProvider::current_key`] until connected (the configured key id).
    placeholder: KeyRef,
    connect: ConnectFn,
    retry_after: Duration,
    connected: OnceLock<Arc<dyn KeyProvider>>,
    // A tokio mutex: held across the connection attempt so concurrent callers make one attempt.
    attempts: tokio::sync::Mutex<Attempts>,
}

impl fmt::Debug for DeferredKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredKeyProvider")
            .field("kind", &self.kind)
            .field("key", &self.placeholder)
            .field("connected", &self.connected.get().is_some())
            .finish()
    }
}

impl DeferredKeyProvider {
    /// A provider of `kind` for `placeholder` (the configured key), connected by `connect` on
    /// first use. `first_failure` is the error of an attempt already made (at start-up): the
    /// next attempt then waits `retry_after` like any retry.
    pub fn new(
        kind: &'static str,
        placeholder: KeyRef,
        connect: ConnectFn,
        retry_after: Duration,
        first_failure: Option<String>,
    ) -> Self {
        Self {
            kind,
            placeholder,
            connect,
            retry_after,
            connected: OnceLock::new(),
            attempts: tokio::sync::Mutex::new(Attempts {
                last_failure: first_failure.map(|e| (Instant::now(), e)),
            }),
        }
    }

    /// Whether a connection attempt has succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected.get().is_some()
    }

    async fn provider(&self) -> Result<Arc<dyn KeyProvider>, CryptoError> {
        if let Some(p) = self.connected.get() {
            return Ok(p.clone());
        }
        let mut attempts = self.attempts.lock().await;
        if let Some(p) = self.connected.get() {
            return Ok(p.clone());
        }
        if let Some((at, why)) = &attempts.last_failure
            && at.elapsed() < self.retry_after
        {
            return Err(CryptoError::Unavailable(format!(
                "{} key {} is not connected yet (last attempt: {why})",
                self.kind, self.placeholder.key_id
            )));
        }
        match (self.connect)().await {
            Ok(p) => {
                tracing::warn!(
                    kind = self.kind,
                    key_id = %p.current_key().key_id,
                    "key provider connected: leaving degraded mode"
                );
                attempts.last_failure = None;
                Ok(self.connected.get_or_init(|| p).clone())
            }
            Err(e) => {
                tracing::warn!(kind = self.kind, error = %e, "key provider still unreachable");
                attempts.last_failure = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl KeyProvider for DeferredKeyProvider {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn current_key(&self) -> KeyRef {
        self.connected
            .get()
            .map_or_else(|| self.placeholder.clone(), |p| p.current_key())
    }

    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError> {
        self.provider().await?.generate_data_key(ctx).await
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        self.provider().await?.unwrap_data_key(wrapped, ctx).await
    }

    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        self.provider().await?.wrap_data_key(dek, ctx).await
    }

    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        self.provider().await?.rewrap_data_key(wrapped, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::LocalKeyProvider;
    use crate::test_support::ctx;

    #[tokio::test]
    async fn unavailable_until_connected_then_delegates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let real = Arc::new(LocalKeyProvider::load_or_create(&path).unwrap().0);
        let up = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (up2, attempts2, real2) = (up.clone(), attempts.clone(), real.clone());
        let connect: ConnectFn = Box::new(move || {
            let (up, real) = (up2.clone(), real2.clone());
            attempts2.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if up.load(Ordering::SeqCst) {
                    Ok(real as Arc<dyn KeyProvider>)
                } else {
                    Err(CryptoError::Unavailable("kms down".into()))
                }
            })
        });
        let placeholder = KeyRef {
            key_id: "alias/cb".into(),
            version: 0,
        };
        let deferred = DeferredKeyProvider::new(
            "aws-kms",
            placeholder.clone(),
            connect,
            Duration::ZERO,
            Some("kms down at start".into()),
        );
        assert_eq!(deferred.current_key(), placeholder);
        let c = ctx("c1");
        assert!(matches!(
            deferred.generate_data_key(&c).await,
            Err(CryptoError::Unavailable(_))
        ));
        assert!(!deferred.is_connected());

        up.store(true, Ordering::SeqCst);
        let (dek, wrapped) = deferred.generate_data_key(&c).await.unwrap();
        assert!(deferred.is_connected());
        assert_eq!(deferred.current_key(), real.current_key());
        assert_eq!(
            deferred
                .unwrap_data_key(&wrapped, &c)
                .await
                .unwrap()
                .expose(),
            dek.expose()
        );
        // Connected once; later calls do not reconnect.
        up.store(false, Ordering::SeqCst);
        deferred.wrap_data_key(&dek, &c).await.unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failed_attempts_are_not_repeated_within_retry_after() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        let connect: ConnectFn = Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(CryptoError::Unavailable("down".into())) })
        });
        let deferred = DeferredKeyProvider::new(
            "aws-kms",
            KeyRef {
                key_id: "alias/cb".into(),
                version: 0,
            },
            connect,
            Duration::from_secs(3600),
            None,
        );
        let c = ctx("c1");
        assert!(deferred.generate_data_key(&c).await.is_err());
        let err = deferred
            .generate_data_key(&c)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("alias/cb") && err.contains("down"), "{err}");
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}
