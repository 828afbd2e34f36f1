//! Envelope encryption of credential rows: per-credential DEKs wrapped by the key provider.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::cache::{CacheStats, DekCache, DekCacheConfig};
use crate::primitives::{self, Canonical};
use crate::{CryptoError, DataKey, EncryptionContext, KeyProvider, SecretBytes, WrappedDek};

/// A sealed blob as stored in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBlob {
    /// nonce || ciphertext || tag, under the DEK.
    pub ciphertext: Vec<u8>,
    /// The DEK, wrapped by the key provider.
    pub wrapped_dek: WrappedDek,
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Envelope encryption with a bounded DEK cache.
pub struct Envelope {
    provider: Arc<dyn KeyProvider>,
    cache: DekCache,
    clock: Clock,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("provider", &self.provider.kind())
            .field("cache", &self.cache.stats((self.clock)()))
            .finish()
    }
}

/// AAD of a blob: the caller's row AAD and the credential's context.
fn blob_aad(ctx: &EncryptionContext, aad: &[u8]) -> Vec<u8> {
    Canonical::new("credential-broker/v1|blob|")
        .context(ctx)
        .bytes(aad)
        .finish()
}

fn seal_with(
    dek: &DataKey,
    ctx: &EncryptionContext,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = primitives::aead_key(dek.expose())?;
    primitives::seal(&key, &blob_aad(ctx, aad), plaintext)
}

fn open_with(
    dek: &DataKey,
    ctx: &EncryptionContext,
    aad: &[u8],
    sealed: &[u8],
) -> Result<SecretBytes, CryptoError> {
    let key = primitives::aead_key(dek.expose())?;
    let mut plain = primitives::open(&key, &blob_aad(ctx, aad), sealed)?;
    Ok(SecretBytes::new(std::mem::take(&mut *plain)))
}

impl Envelope {
    /// An envelope over `provider` with a DEK cache of the given limits.
    pub fn new(provider: Arc<dyn KeyProvider>, cache: DekCacheConfig) -> Self {
        Self {
            provider,
            cache: DekCache::new(cache),
            clock: Arc::new(Instant::now),
        }
    }

    /// Replaces the monotonic clock that ages cache entries (tests move time instead of sleeping).
    pub fn with_clock(mut self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The key provider.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// Seals under a NEW per-credential DEK (first seal of a credential).
    pub async fn seal_new(
        &self,
        ctx: &EncryptionContext,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<SealedBlob, CryptoError> {
        let (dek, wrapped_dek) = self.provider.generate_data_key(ctx).await?;
        let ciphertext = seal_with(&dek, ctx, aad, plaintext)?;
        self.cache.insert(&wrapped_dek, ctx, &dek, (self.clock)());
        Ok(SealedBlob {
            ciphertext,
            wrapped_dek,
        })
    }

    /// Seals new plaintext under the credential's EXISTING DEK (e.g. after a token refresh):
    /// same wrapped_dek, fresh nonce.
    pub async fn reseal(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<SealedBlob, CryptoError> {
        let dek = self.data_key(wrapped, ctx).await?;
        Ok(SealedBlob {
            ciphertext: seal_with(&dek, ctx, aad, plaintext)?,
            wrapped_dek: wrapped.clone(),
        })
    }

    /// Opens; wrong aad/ctx, tampering, or a blob from another row → [`CryptoError::Decrypt`].
    pub async fn open(
        &self,
        blob: &SealedBlob,
        ctx: &EncryptionContext,
        aad: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        let dek = self.data_key(&blob.wrapped_dek, ctx).await?;
        open_with(&dek, ctx, aad, &blob.ciphertext)
    }

    /// Re-wraps a DEK under the provider's current key without touching the ciphertext (rotation).
    pub async fn rewrap(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        self.provider.rewrap_data_key(wrapped, ctx).await
    }

    /// Forgets a DEK from the cache (crypto-shredding on disconnect).
    pub fn forget(&self, wrapped: &WrappedDek) {
        self.cache.forget(wrapped);
    }

    /// Cache statistics (hits, misses, entries) for metrics/tests.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats((self.clock)())
    }

    /// Round trip through the provider (generate + unwrap + seal/open) — start-up self check.
    pub async fn self_check(&self) -> Result<(), CryptoError> {
        let ctx = EncryptionContext::new().with("purpose", "self-check");
        let (dek, wrapped) = self.provider.generate_data_key(&ctx).await?;
        let unwrapped = self.provider.unwrap_data_key(&wrapped, &ctx).await?;
        if unwrapped.expose() != dek.expose() {
            return Err(CryptoError::Provider(
                "self check: unwrapped data key differs from the generated one".into(),
            ));
        }
        let sealed = seal_with(&dek, &ctx, b"self-check", b"self-check")?;
        let opened = open_with(&unwrapped, &ctx, b"self-check", &sealed)?;
        if opened.expose() != b"self-check" {
            return Err(CryptoError::Provider(
                "self check: round trip failed".into(),
            ));
        }
        Ok(())
    }

    /// The plaintext DEK, from the cache or else from the provider (then cached).
    async fn data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        if let Some(dek) = self.cache.get(wrapped, ctx, (self.clock)()) {
            return Ok(dek);
        }
        let dek = self.provider.unwrap_data_key(wrapped, ctx).await?;
        self.cache.insert(wrapped, ctx, &dek, (self.clock)());
        Ok(dek)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::LocalKeyProvider;
    use crate::test_support::{CountingProvider, ctx, local, opened};

    fn envelope(provider: Arc<dyn KeyProvider>) -> Envelope {
        Envelope::new(provider, DekCacheConfig::default())
    }

    #[tokio::test]
    async fn seal_open_reseal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let env = envelope(Arc::new(local(&dir, "k.json")));
        let c = ctx("c1");
        let blob = env
            .seal_new(&c, b"row-1", b"refresh-token-1")
            .await
            .unwrap();
        assert_eq!(opened(&env, &blob, &c, b"row-1").await, b"refresh-token-1");

        let again = env
            .reseal(&blob.wrapped_dek, &c, b"row-1", b"refresh-token-2")
            .await
            .unwrap();
        assert_eq!(again.wrapped_dek, blob.wrapped_dek);
        assert_eq!(again.ciphertext.len(), blob.ciphertext.len());
        assert_ne!(again.ciphertext[..12], blob.ciphertext[..12]);
        assert_eq!(opened(&env, &again, &c, b"row-1").await, b"refresh-token-2");

        let same = env
            .reseal(&blob.wrapped_dek, &c, b"row-1", b"refresh-token-1")
            .await
            .unwrap();
        assert_ne!(
            same.ciphertext, blob.ciphertext,
            "fresh nonce on every seal"
        );
        env.self_check().await.unwrap();
    }

    #[tokio::test]
    async fn wrong_row_context_or_tampering_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let env = envelope(Arc::new(local(&dir, "k.json")));
        let c = ctx("c1");
        let blob = env.seal_new(&c, b"row-1", b"secret").await.unwrap();
        let is_decrypt =
            |r: Result<SecretBytes, CryptoError>| matches!(r, Err(CryptoError::Decrypt));

        assert!(is_decrypt(env.open(&blob, &c, b"row-2").await));
        assert!(is_decrypt(env.open(&blob, &ctx("c2"), b"row-1").await));

        let mut flipped = blob.clone();
        flipped.ciphertext[20] ^= 1;
        assert!(is_decrypt(env.open(&flipped, &c, b"row-1").await));

        // Bypass the cache so the tampered wrapped DEK reaches the provider.
        env.forget(&blob.wrapped_dek);
        let mut flipped = blob.clone();
        flipped.wrapped_dek.ciphertext[20] ^= 1;
        assert!(is_decrypt(env.open(&flipped, &c, b"row-1").await));

        // Another credential's blob moved into this row.
        let other = env.seal_new(&c, b"row-2", b"other").await.unwrap();
        let swapped = SealedBlob {
            ciphertext: other.ciphertext,
            wrapped_dek: blob.wrapped_dek.clone(),
        };
        assert!(is_decrypt(env.open(&swapped, &c, b"row-1").await));
        assert_eq!(opened(&env, &blob, &c, b"row-1").await, b"secret");
        let msg = CryptoError::Decrypt.to_string();
        assert!(!msg.contains("secret"));
    }

    #[tokio::test]
    async fn reloaded_key_file_opens_old_blobs_and_other_file_is_unknown_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx("c1");
        let blob = envelope(Arc::new(local(&dir, "k.json")))
            .seal_new(&c, b"row", b"secret")
            .await
            .unwrap();
        let reloaded = LocalKeyProvider::load(&dir.path().join("k.json")).unwrap();
        let env = envelope(Arc::new(reloaded));
        assert_eq!(opened(&env, &blob, &c, b"row").await, b"secret");

        let other = envelope(Arc::new(local(&dir, "other.json")));
        assert!(matches!(
            other.open(&blob, &c, b"row").await,
            Err(CryptoError::UnknownKey { version: 1, .. })
        ));
    }

    #[tokio::test]
    async fn add_version_and_rewrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let c = ctx("c1");
        let first = Arc::new(local(&dir, "k.json"));
        let v1_fingerprint = first.fingerprint();
        let v1 = envelope(first);
        let old = v1.seal_new(&c, b"row", b"old").await.unwrap();
        assert_eq!(old.wrapped_dek.key.version, 1);

        let key = LocalKeyProvider::add_version(&path).unwrap();
        assert_eq!(key.version, 2);
        assert_eq!(key.key_id, old.wrapped_dek.key.key_id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let provider = LocalKeyProvider::load(&path).unwrap();
        assert_ne!(provider.fingerprint(), v1_fingerprint);
        let v2 = envelope(Arc::new(provider));
        let new = v2.seal_new(&c, b"row2", b"new").await.unwrap();
        assert_eq!(new.wrapped_dek.key, key);
        assert_eq!(opened(&v2, &old, &c, b"row").await, b"old");

        let rewrapped = v2.rewrap(&old.wrapped_dek, &c).await.unwrap();
        assert_eq!(rewrapped.key.version, 2);
        let moved = SealedBlob {
            ciphertext: old.ciphertext.clone(),
            wrapped_dek: rewrapped,
        };
        let fresh = envelope(Arc::new(LocalKeyProvider::load(&path).unwrap()));
        assert_eq!(opened(&fresh, &moved, &c, b"row").await, b"old");
        // The rewrapped DEK is still bound to its context.
        assert!(fresh.rewrap(&moved.wrapped_dek, &ctx("c2")).await.is_err());
    }

    #[tokio::test]
    async fn cache_hot_path_skips_provider_and_forget_evicts() {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(CountingProvider::new(local(&dir, "k.json")));
        let env = envelope(counting.clone());
        let c = ctx("c1");
        let blob = env.seal_new(&c, b"row", b"secret").await.unwrap();
        env.open(&blob, &c, b"row").await.unwrap();
        env.open(&blob, &c, b"row").await.unwrap();
        env.reseal(&blob.wrapped_dek, &c, b"row", b"next")
            .await
            .unwrap();
        assert_eq!(counting.unwraps(), 0);
        assert_eq!(
            env.cache_stats(),
            CacheStats {
                hits: 3,
                misses: 0,
                entries: 1
            }
        );

        env.forget(&blob.wrapped_dek);
        assert_eq!(env.cache_stats().entries, 0);
        env.open(&blob, &c, b"row").await.unwrap();
        env.open(&blob, &c, b"row").await.unwrap();
        assert_eq!(counting.unwraps(), 1);
        assert_eq!(
            env.cache_stats(),
            CacheStats {
                hits: 4,
                misses: 1,
                entries: 1
            }
        );
    }

    #[tokio::test]
    async fn cache_respects_max_entries_and_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(CountingProvider::new(local(&dir, "k.json")));
        let now = Arc::new(Mutex::new(Instant::now()));
        let clock = now.clone();
        let config = DekCacheConfig {
            max_entries: 2,
            max_age: Duration::from_secs(60),
        };
        let env =
            Envelope::new(counting.clone(), config).with_clock(move || *clock.lock().unwrap());

        let mut blobs = Vec::new();
        for i in 0..3 {
            let c = ctx(&format!("c{i}"));
            blobs.push((env.seal_new(&c, b"row", b"secret").await.unwrap(), c));
        }
        assert_eq!(env.cache_stats().entries, 2);
        // c0 was evicted as the oldest: opening it needs the provider.
        env.open(&blobs[0].0, &blobs[0].1, b"row").await.unwrap();
        assert_eq!(counting.unwraps(), 1);
        assert_eq!(env.cache_stats().entries, 2);

        env.open(&blobs[0].0, &blobs[0].1, b"row").await.unwrap();
        assert_eq!(counting.unwraps(), 1);
        *now.lock().unwrap() += Duration::from_secs(61);
        env.open(&blobs[0].0, &blobs[0].1, b"row").await.unwrap();
        assert_eq!(
            counting.unwraps(),
            2,
            "expired entry must be unwrapped again"
        );
        assert_eq!(env.cache_stats().entries, 1);
    }
}
