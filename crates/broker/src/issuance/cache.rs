//! The hot path's memory: each credential's last good token with what authorization needs, in
//! a bounded concurrent cache (moka). Other use cases invalidate it on writes; change
//! notifications invalidate it for writes on other replicas.

use super::IssuedToken;
use crate::clock::Timestamp;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::Duration;

/// moka rejects a time-to-live over 1000 years; a longer configured age means "no age limit".
const LONGEST_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// One credential's token as kept in memory, with what authorization needs.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) workspace_id: String,
    pub(super) token: IssuedToken,
    /// The token's lifetime, when known: it caps what a request may demand.
    pub(super) lifetime: Option<Duration>,
    /// Active members allowed to use the credential: (email, bound user id).
    pub(super) users: Vec<(String, Option<String>)>,
}

impl Entry {
    /// Whether the token is good enough at `now` for a request of `min_valid`.
    pub(super) fn satisfies(&self, now: Timestamp, min_valid: Duration) -> bool {
        super::schedule::satisfies(self.token.expires_at, self.lifetime, now, min_valid)
    }
}

/// Limits of the token cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCacheConfig {
    /// Most credentials held at once; past it the least useful entries are evicted (a miss
    /// only costs a database read).
    pub max_entries: u64,
    /// How long an entry may be served before it is read again from the database, whatever
    /// its token's expiry.
    pub max_age: Duration,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// The in-memory token cache shared with the other use cases, which invalidate it on writes.
pub struct TokenCache {
    entries: Cache<String, Arc<Entry>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(TokenCacheConfig::default())
    }
}

impl TokenCache {
    /// A cache within these limits.
    pub fn new(config: TokenCacheConfig) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.max_age.min(LONGEST_AGE))
                .build(),
        }
    }

    /// Forgets one credential (after a write to it here or on another replica).
    pub fn invalidate(&self, id: &str) {
        self.entries.invalidate(id);
    }

    /// Forgets everything (change notifications may have been missed).
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.entries.get(id)
    }

    pub(super) fn put(&self, id: &str, e: Arc<Entry>) {
        self.entries.insert(id.to_owned(), e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::collections::BTreeMap;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry {
            workspace_id: "ws".into(),
            token: IssuedToken {
                access_token: SecretString::from("at"),
                token_type: "Bearer".into(),
                expires_at: None,
                scopes: vec![],
                extras: BTreeMap::new(),
            },
            lifetime: None,
            users: vec![],
        })
    }

    #[test]
    fn invalidation_forgets_one_or_all() {
        let cache = TokenCache::default();
        cache.put("a", entry());
        cache.put("b", entry());
        cache.invalidate("a");
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        cache.clear();
        assert!(cache.get("b").is_none());
    }

    #[test]
    fn the_cache_holds_at_most_max_entries() {
        let cache = TokenCache::new(TokenCacheConfig {
            max_entries: 10,
            max_age: Duration::from_secs(60),
        });
        for n in 0..100 {
            cache.put(&format!("c{n}"), entry());
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.entry_count() <= 10);
    }
}
