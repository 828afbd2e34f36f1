//! A bounded, time-limited cache of unwrapped DEKs, so hot reads skip the key provider.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::primitives::{Canonical, sha256};
use crate::{DataKey, EncryptionContext, WrappedDek};

/// Limits of the DEK cache. `max_entries == 0` disables caching.
#[derive(Clone, Debug)]
pub struct DekCacheConfig {
    /// Most DEKs held at once; the oldest is evicted first.
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

struct Entry {
    dek: DataKey,
    /// Digest of the context the DEK was unwrapped with; a lookup with another context misses.
    ctx: Digest,
    inserted: Instant,
    seq: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    /// Insertion order (seq → entry key): the front is both the oldest and the first to expire.
    order: BTreeMap<u64, Digest>,
    next_seq: u64,
    hits: u64,
    misses: u64,
}

impl State {
    fn remove(&mut self, key: &Digest) {
        // Dropping the Entry drops its DataKey, which zeroizes it.
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.seq);
        }
    }

    fn remove_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_first() {
            self.entries.remove(&key);
        }
    }

    fn expire(&mut self, now: Instant, max_age: Duration) {
        while let Some(key) = self.order.first_key_value().map(|(_, k)| *k) {
            match self.entries.get(&key) {
                Some(e) if now.saturating_duration_since(e.inserted) < max_age => break,
                _ => self.remove_oldest(),
            }
        }
    }
}

/// The cache itself; the lock is never held across an `.await`.
pub(crate) struct DekCache {
    config: DekCacheConfig,
    state: Mutex<State>,
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

impl DekCache {
    pub(crate) fn new(config: DekCacheConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked, so keep using it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached DEK for this wrapped DEK and context, counting a hit or a miss.
    pub(crate) fn get(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
        now: Instant,
    ) -> Option<DataKey> {
        let (key, ctx) = (wrapped_digest(wrapped), ctx_digest(ctx));
        let mut state = self.lock();
        state.expire(now, self.config.max_age);
        let found = state
            .entries
            .get(&key)
            .filter(|e| e.ctx == ctx)
            .map(|e| e.dek.clone());
        match found {
            Some(_) => state.hits += 1,
            None => state.misses += 1,
        }
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
        let mut state = self.lock();
        state.expire(now, self.config.max_age);
        state.remove(&key);
        while state.entries.len() >= self.config.max_entries {
            state.remove_oldest();
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.order.insert(seq, key);
        state.entries.insert(
            key,
            Entry {
                dek: dek.clone(),
                ctx,
                inserted: now,
                seq,
            },
        );
    }

    /// Drops the DEK for this wrapped DEK, whatever context it was cached under.
    pub(crate) fn forget(&self, wrapped: &WrappedDek) {
        let key = wrapped_digest(wrapped);
        self.lock().remove(&key);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            hits: state.hits,
            misses: state.misses,
            entries: state.entries.len(),
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

    #[test]
    fn entries_expire_after_max_age() {
        let cache = DekCache::new(DekCacheConfig {
            max_entries: 10,
            max_age: Duration::from_secs(60),
        });
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
        assert_eq!(cache.stats().entries, 1);
    }

    #[test]
    fn zero_entries_disables_caching() {
        let cache = DekCache::new(DekCacheConfig {
            max_entries: 0,
            max_age: Duration::from_secs(60),
        });
        let ctx = EncryptionContext::new();
        let now = Instant::now();
        cache.insert(&wrapped(1), &ctx, &DataKey::generate().unwrap(), now);
        assert!(cache.get(&wrapped(1), &ctx, now).is_none());
    }
}
