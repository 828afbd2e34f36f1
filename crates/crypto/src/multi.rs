//! Several key providers behind one: new DEKs are wrapped by the current provider, and DEKs
//! wrapped by any of them still unwrap. Used while moving from one provider to another (e.g.
//! `local` to `aws-kms`): rows not yet re-wrapped keep opening, and `rotate-keys` can unwrap
//! them with the old provider and wrap them with the new one.

use std::fmt;
use std::sync::Arc;

use crate::{CryptoError, DataKey, EncryptionContext, KeyProvider, KeyRef, WrappedDek};

/// A current provider plus decrypt-only providers for older keys.
///
/// Unwrapping tries the providers in order and moves on only when one answers
/// [`CryptoError::UnknownKey`], which every provider returns, without any I/O, for a DEK whose
/// recorded key is not one of its own, or [`CryptoError::Unavailable`] (a KMS that is down must
/// not stop a local key from opening its own DEKs; the KMS error is returned if nothing else
/// opens it). Any other error (wrong context, tampering, access denied) is final.
pub struct MultiKeyProvider {
    current: Arc<dyn KeyProvider>,
    decrypt_only: Vec<Arc<dyn KeyProvider>>,
}

impl fmt::Debug for MultiKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiKeyProvider")
            .field("current", &self.current.kind())
            .field(
                "decrypt_only",
                &self
                    .decrypt_only
                    .iter()
                    .map(|p| p.kind())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MultiKeyProvider {
    /// `current` wraps every new or re-wrapped DEK; `decrypt_only` only unwrap the DEKs they
    /// wrapped earlier.
    pub fn new(current: Arc<dyn KeyProvider>, decrypt_only: Vec<Arc<dyn KeyProvider>>) -> Self {
        Self {
            current,
            decrypt_only,
        }
    }

    /// Unwraps with the first provider that knows the DEK's key.
    async fn unwrap_any(
        &self,
        providers: &[&Arc<dyn KeyProvider>],
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        let mut unavailable = None;
        for provider in providers {
            match provider.unwrap_data_key(wrapped, ctx).await {
                Err(CryptoError::UnknownKey { .. }) => {}
                Err(e @ CryptoError::Unavailable(_)) => {
                    unavailable.get_or_insert(e);
                }
                other => return other,
            }
        }
        Err(unavailable.unwrap_or_else(|| CryptoError::UnknownKey {
            key_id: wrapped.key.key_id.clone(),
            version: wrapped.key.version,
        }))
    }
}

#[async_trait::async_trait]
impl KeyProvider for MultiKeyProvider {
    fn kind(&self) -> &'static str {
        self.current.kind()
    }

    fn current_key(&self) -> KeyRef {
        self.current.current_key()
    }

    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError> {
        self.current.generate_data_key(ctx).await
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        let all: Vec<_> = std::iter::once(&self.current)
            .chain(&self.decrypt_only)
            .collect();
        self.unwrap_any(&all, wrapped, ctx).await
    }

    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        self.current.wrap_data_key(dek, ctx).await
    }

    /// The current provider's own re-wrap when it knows the old key (KMS: `ReEncrypt`, so the
    /// DEK never leaves KMS); otherwise unwrap with the old provider and wrap with the current.
    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        match self.current.rewrap_data_key(wrapped, ctx).await {
            Err(CryptoError::UnknownKey { .. }) => {
                let others: Vec<_> = self.decrypt_only.iter().collect();
                let dek = self.unwrap_any(&others, wrapped, ctx).await?;
                self.current.wrap_data_key(&dek, ctx).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{CountingProvider, ctx, local, opened, unwrapped};
    use crate::{DekCacheConfig, Envelope, LocalKeyProvider};

    #[tokio::test]
    async fn wraps_with_current_and_unwraps_with_either() {
        let dir = tempfile::tempdir().unwrap();
        let old = Arc::new(local(&dir, "old.json"));
        let new = Arc::new(local(&dir, "new.json"));
        let c = ctx("c1");
        let (dek, old_wrapped) = old.generate_data_key(&c).await.unwrap();

        let multi = MultiKeyProvider::new(new.clone(), vec![old.clone()]);
        assert_eq!(multi.kind(), "local");
        assert_eq!(multi.current_key(), new.current_key());
        let (_, fresh) = multi.generate_data_key(&c).await.unwrap();
        assert_eq!(fresh.key, new.current_key());
        assert_eq!(unwrapped(&multi, &old_wrapped, &c).await, dek.expose());
        assert!(new.unwrap_data_key(&fresh, &c).await.is_ok());

        // Re-wrap moves the DEK from the old provider to the current one.
        let moved = multi.rewrap_data_key(&old_wrapped, &c).await.unwrap();
        assert_eq!(moved.key, new.current_key());
        assert_eq!(unwrapped(&*new, &moved, &c).await, dek.expose());
        // Still bound to its context through the move.
        assert!(matches!(
            multi.rewrap_data_key(&old_wrapped, &ctx("c2")).await,
            Err(CryptoError::Decrypt)
        ));
    }

    #[tokio::test]
    async fn unknown_everywhere_is_unknown_key_and_other_errors_are_final() {
        let dir = tempfile::tempdir().unwrap();
        let stranger = local(&dir, "stranger.json");
        let c = ctx("c1");
        let (_, foreign) = stranger.generate_data_key(&c).await.unwrap();
        let old = Arc::new(CountingProvider::new(local(&dir, "old.json")));
        let multi = MultiKeyProvider::new(Arc::new(local(&dir, "new.json")), vec![old.clone()]);
        assert!(matches!(
            multi.unwrap_data_key(&foreign, &c).await,
            Err(CryptoError::UnknownKey { version: 1, .. })
        ));
        assert!(matches!(
            multi.rewrap_data_key(&foreign, &c).await,
            Err(CryptoError::UnknownKey { .. })
        ));

        // A DEK of the current provider with the wrong context fails there: the old
        // provider is not asked.
        let (_, current) = multi.generate_data_key(&c).await.unwrap();
        let before = old.unwraps();
        assert!(matches!(
            multi.unwrap_data_key(&current, &ctx("c2")).await,
            Err(CryptoError::Decrypt)
        ));
        assert_eq!(old.unwraps(), before);
    }

    #[tokio::test]
    async fn an_unreachable_current_provider_does_not_stop_the_old_key() {
        use crate::{ConnectFn, DeferredKeyProvider};
        let dir = tempfile::tempdir().unwrap();
        let old = Arc::new(local(&dir, "old.json"));
        let c = ctx("c1");
        let (dek, old_wrapped) = old.generate_data_key(&c).await.unwrap();
        let down: ConnectFn =
            Box::new(|| Box::pin(async { Err(CryptoError::Unavailable("kms down".into())) }));
        let kms = DeferredKeyProvider::new(
            "aws-kms",
            KeyRef {
                key_id: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
                version: 0,
            },
            down,
            std::time::Duration::ZERO,
            None,
        );
        let multi = MultiKeyProvider::new(Arc::new(kms), vec![old.clone()]);
        assert_eq!(unwrapped(&multi, &old_wrapped, &c).await, dek.expose());
        // A DEK nobody else knows reports the outage, not "unknown key".
        let (_, foreign) = local(&dir, "stranger.json")
            .generate_data_key(&c)
            .await
            .unwrap();
        assert!(matches!(
            multi.unwrap_data_key(&foreign, &c).await,
            Err(CryptoError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn envelope_over_multi_opens_blobs_sealed_by_the_old_provider() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        let c = ctx("c1");
        let old_env = Envelope::new(
            Arc::new(LocalKeyProvider::load_or_create(&path).unwrap().0),
            DekCacheConfig::default(),
        );
        let blob = old_env.seal_new(&c, b"row", b"secret").await.unwrap();
        let multi = MultiKeyProvider::new(
            Arc::new(local(&dir, "new.json")),
            vec![Arc::new(LocalKeyProvider::load(&path).unwrap())],
        );
        let env = Envelope::new(Arc::new(multi), DekCacheConfig::default());
        assert_eq!(opened(&env, &blob, &c, b"row").await, b"secret");
    }
}
