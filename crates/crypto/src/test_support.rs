//! Helpers shared by the crate's tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{
    CryptoError, DataKey, EncryptionContext, Envelope, KeyProvider, KeyRef, LocalKeyProvider,
    SealedBlob, WrappedDek,
};

/// A fresh local key file `name` inside `dir`.
pub(crate) fn local(dir: &tempfile::TempDir, name: &str) -> LocalKeyProvider {
    LocalKeyProvider::load_or_create(&dir.path().join(name))
        .unwrap()
        .0
}

/// The context of credential `id` in workspace "w1".
pub(crate) fn ctx(id: &str) -> EncryptionContext {
    EncryptionContext::for_credential("w1", id, "oauth-token")
}

/// The plaintext `env` opens `blob` (row `aad`, context `ctx`) to.
pub(crate) async fn opened(
    env: &Envelope,
    blob: &SealedBlob,
    ctx: &EncryptionContext,
    aad: &[u8],
) -> Vec<u8> {
    env.open(blob, ctx, aad).await.unwrap().expose().to_vec()
}

/// The DEK `provider` unwraps `wrapped` (context `ctx`) to.
pub(crate) async fn unwrapped(
    provider: &dyn KeyProvider,
    wrapped: &WrappedDek,
    ctx: &EncryptionContext,
) -> Vec<u8> {
    let dek = provider.unwrap_data_key(wrapped, ctx).await.unwrap();
    dek.expose().to_vec()
}

/// Wraps a provider and counts unwrap calls, to prove the cache's hot path skips it.
pub(crate) struct CountingProvider<P> {
    inner: P,
    unwraps: AtomicUsize,
}

impl<P> CountingProvider<P> {
    pub(crate) fn new(inner: P) -> Self {
        Self {
            inner,
            unwraps: AtomicUsize::new(0),
        }
    }

    pub(crate) fn unwraps(&self) -> usize {
        self.unwraps.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<P: KeyProvider> KeyProvider for CountingProvider<P> {
    fn kind(&self) -> &'static str {
        "counting"
    }

    fn current_key(&self) -> KeyRef {
        self.inner.current_key()
    }

    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError> {
        self.inner.generate_data_key(ctx).await
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap_data_key(wrapped, ctx).await
    }

    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        self.inner.wrap_data_key(dek, ctx).await
    }
}
