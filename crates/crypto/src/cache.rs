//! A bounded, time-limited cache of unwrapped DEKs, so hot reads skip the key provider. It is a
//! moka cache (concurrent, bounded, least recently used evicted first); every DEK that leaves it
//! goes through the eviction listener, which zeroizes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::primitives::{Canonical, sha256};
use crate::{DataKey, EncryptionContext, WrappedDek};

/// Limits of the DEK cache. `max_entries == 0` disables caching.
#[derive(Clone, Debug)]
pub struct DekCacheConfig {
    /// Most DEKs held at once; the least recently used is evicted first.
    pub max_entries: usize,
    /// How long a DEK stays cached after it was unwrapped.
    pub max_age: Duration,
}

impl Default for DekCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Cache statistics (hits, misses, entries) for metrics/tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to ask the key provider.
    pub misses: u64,
    /// DEKs currently cached.
    pub entries: usize,
}

type Digest = [u8; 32];

/// moka rejects a time-to-live over 1000 years; a longer configured age means "no age limit".
const LONGEST_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);

#[derive(Clone)]
struct Entry {
    dek: DataKey,
    /// Digest of the context the DEK was unwrapped with; a lookup with another context misses.
    ctx: Digest,
    /// On the injected monotonic clock: ages the entry in tests that move time.
    inserted: Instant,
}

/// The cache itself: lock-free reads, no lock held across an `.await`.
pub(crate) struct DekCache {
    config: DekCacheConfig,
    entries: Cache<Digest, Entry>,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn wrapped_digest(wrapped: &WrappedDek) -> Digest {
    sha256(
        &Canonical::new("credential-broker/v1|dek-cache|")
            .str(&wrapped.key.key_id)
            .u32(wrapped.key.version)
            .bytes(&wrapped.ciphertext)
            .finish(),
    )
}

fn ctx_digest(ctx: &EncryptionContext) -> Digest {
    sha256(
        &Canonical::new("credential-broker/v1|dek-cache-ctx|")
            .context(ctx)
            .finish(),
    )
}

/// Evicted, expired, replaced or forgotten: the cache's copy of the key is wiped now.
fn zeroize_evicted(_key: Arc<Digest>, entry: Entry, _cause: RemovalCause) {
    // DataKey zeroizes its bytes on drop.
    drop(entry);
}

impl DekCache {
    pub(crate) fn new(config: DekCacheConfig) -> Self {
        let entries = Cache::builder()
            .max_capacity(u64::try_from(config.max_entries).unwrap_or(u64::MAX))
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(config.max_age.min(LONGEST_AGE))
            .eviction_listener(zeroize_evicted)
            .build();
        Self {
            config,
            entries,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.inserted) >= self.config.max_age
    }

    /// The cached DEK for this wrapped DEK and context, counting a hit or a miss.
    pub(crate) fn get(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
        now: Instant,
    ) -> Option<DataKey> {
        let (key, ctx) = (wrapped_digest(wrapped), ctx_digest(ctx));
        let found = self.entries.get(&key).and_then(|e| {
            if self.expired(&e, now) {
                self.entries.invalidate(&key);
                None
            } else {
                (e.ctx == ctx).then(|| e.dek.clone())
            }
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches a DEK that the provider unwrapped (or generated) for this context.
    pub(crate) fn insert(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
        dek: &DataKey,
        now: Instant,
    ) {
        if self.config.max_entries == 0 {
            return;
        }
        let (key, ctx) = (wrapped_digest(wrapped), ctx_digest(ctx));
        self.entries.insert(
            key,
            Entry {
                dek: dek.clone(),
                ctx,
                inserted: now,
            },
        );
    }

    /// Drops the DEK for this wrapped DEK, whatever context it was cached under.
    pub(crate) fn forget(&self, wrapped: &WrappedDek) {
        self.entries.invalidate(&wrapped_digest(wrapped));
    }

    /// Counters, and the DEKs still usable at `now`.
    pub(crate) fn stats(&self, now: Instant) -> CacheStats {
        // Apply pending evictions first, so the count respects `max_entries`.
        self.entries.run_pending_tasks();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self
                .entries
                .iter()
                .filter(|(_, e)| !self.expired(e, now))
                .count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyRef;

    fn wrapped(n: u8) -> WrappedDek {
        WrappedDek {
            key: KeyRef {
                key_id: "local-test".into(),
                version: 1,
            },
            ciphertext: vec![n; 60],
        }
    }

    #[test]
    fn never_returns_a_dek_for_another_context() {
        let cache = DekCache::new(DekCacheConfig::default());
        let now = Instant::now();
        let ctx = EncryptionContext::for_credential("w", "c1", "token");
        cache.insert(&wrapped(1), &ctx, &DataKey::generate().unwrap(), now);
        let other = EncryptionContext::for_credential("w", "c2", "token");
        assert!(cache.get(&wrapped(1), &other, now).is_none());
        assert!(cache.get(&wrapped(1), &ctx, now).is_some());
    }

    /// A cache of `max_entries` keys, each kept for a minute.
    fn minute_cache(max_entries: usize) -> DekCache {
        DekCache::new(DekCacheConfig {
            max_entries,
            max_age: Duration::from_secs(60),
        })
    }

    #[test]
    fn entries_expire_after_max_age() {
        let cache = minute_cache(10);
        let ctx = EncryptionContext::new();
        let t0 = Instant::now();
        cache.insert(&wrapped(1), &ctx, &DataKey::generate().unwrap(), t0);
        cache.insert(
            &wrapped(2),
            &ctx,
            &DataKey::generate().unwrap(),
            t0 + Duration::from_secs(30),
        );
        let later = t0 + Duration::from_secs(61);
        assert!(cache.get(&wrapped(1), &ctx, later).is_none());
        assert!(cache.get(&wrapped(2), &ctx, later).is_some());
        assert_eq!(cache.stats(later).entries, 1);
    }

    #[test]
    fn zero_entries_disables_caching() {
        let cache = minute_cache(0);
        let ctx = EncryptionContext::new();
        let now = Instant::now();
        cache.insert(&wrapped(1), &ctx, &DataKey::generate().unwrap(), now);
        assert!(cache.get(&wrapped(1), &ctx, now).is_none());
    }
}
