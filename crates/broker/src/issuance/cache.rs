//! The hot path's memory: each credential's last good token with what authorization needs, in
//! a bounded concurrent cache (moka). Other use cases invalidate it on writes; change
//! notifications invalidate it for writes on other replicas.
//!
//! An entry cannot outlive an invalidation: every invalidation bumps a generation, and an entry
//! is only put if the generation its leader saw before reading the database is still current
//! (checked again after the insert, so an invalidation racing the put removes it).

use crate::clock::Timestamp;
use moka::sync::Cache;
use secrecy::SecretString;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Generation counters, shared by the ids that hash to the same slot: bounded memory, and a
/// collision only costs a spurious miss.
const GENERATION_SLOTS: usize = 4096;

/// What a leader saw before reading the database: the cache-wide epoch (bumped by
/// [`TokenCache::clear`]) and its credential's slot (bumped by [`TokenCache::invalidate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Generation {
    epoch: u64,
    slot: u64,
}

/// moka rejects a time-to-live over 1000 years; a longer configured age means "no age limit".
const LONGEST_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A token set as read from the database, before it becomes an [`Entry`].
#[derive(Debug)]
pub(super) struct TokenParts {
    pub(super) access_token: SecretString,
    pub(super) token_type: String,
    pub(super) expires_at: Option<Timestamp>,
    pub(super) scopes: Vec<String>,
    pub(super) extras: BTreeMap<String, String>,
}

/// An active member: email and, when the membership is bound to one, the user id.
type Member = (Box<str>, Option<Box<str>>);

/// One credential's token as kept in memory, with what authorization needs. Compact on
/// purpose (boxed slices and strings, no maps, no spare capacity): the cache's memory is
/// entries × this (docs/operations.md "Memory").
#[derive(Debug)]
pub(super) struct Entry {
    workspace_id: Box<str>,
    access_token: SecretString,
    /// "Bearer" (nearly every provider) is not allocated per entry.
    token_type: Cow<'static, str>,
    expires_at: Option<Timestamp>,
    scopes: Box<[Box<str>]>,
    extras: Box<[(Box<str>, Box<str>)]>,
    /// The token's lifetime, when known: it caps what a request may demand.
    lifetime: Option<Duration>,
    /// Active members allowed to use the credential: (email, bound user id).
    users: Box<[Member]>,
    /// When the row and the members were read (the injected clock): the snapshot's age.
    pub(super) loaded_at: Timestamp,
}

impl Entry {
    /// An entry for `token` of a credential in `workspace_id`, usable by `users`.
    pub(super) fn new(
        workspace_id: &str,
        token: TokenParts,
        lifetime: Option<Duration>,
        users: impl IntoIterator<Item = (String, Option<String>)>,
        loaded_at: Timestamp,
    ) -> Self {
        let token_type = match token.token_type.as_str() {
            "Bearer" => Cow::Borrowed("Bearer"),
            _ => Cow::Owned(token.token_type),
        };
        Self {
            workspace_id: workspace_id.into(),
            access_token: token.access_token,
            token_type,
            expires_at: token.expires_at,
            scopes: token
                .scopes
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            extras: token
                .extras
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
            lifetime,
            users: users
                .into_iter()
                .map(|(email, user)| (email.into_boxed_str(), user.map(String::into_boxed_str)))
                .collect(),
            loaded_at,
        }
    }

    pub(super) fn access_token(&self) -> &SecretString {
        &self.access_token
    }

    pub(super) fn token_type(&self) -> &str {
        &self.token_type
    }

    pub(super) fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }

    pub(super) fn scopes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }

    pub(super) fn extras(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.extras.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The workspace the credential belongs to.
    pub(super) fn workspace_id(&self) -> &str {
        &self.workspace_id
    }

    /// Whether the member with `email` (and, if the membership is bound to one, `user_id`) is
    /// an active member.
    pub(super) fn has_member(&self, email: &str, user_id: &str) -> bool {
        self.users
            .iter()
            .any(|(e, user)| e.as_ref() == email && user.as_deref().is_none_or(|u| u == user_id))
    }

    /// Whether the token is good enough at `now` for a request of `min_valid`.
    pub(super) fn satisfies(&self, now: Timestamp, min_valid: Duration) -> bool {
        super::schedule::satisfies(self.expires_at, self.lifetime, now, min_valid)
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
    epoch: AtomicU64,
    slots: Box<[AtomicU64]>,
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
            epoch: AtomicU64::new(0),
            slots: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, id: &str) -> &AtomicU64 {
        // A fixed-key hasher: the slot of an id is the same for every caller.
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(id);
        &self.slots[usize::try_from(hash % GENERATION_SLOTS as u64).unwrap_or(0)]
    }

    /// Forgets one credential (after a write to it here or on another replica); a put of a
    /// value read before this call is refused.
    pub fn invalidate(&self, id: &str) {
        self.slot(id).fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(id);
    }

    /// Forgets everything (change notifications may have been missed); puts of values read
    /// before this call are refused.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// The generation of `id` now: take it before reading what will be put.
    pub(super) fn generation(&self, id: &str) -> Generation {
        Generation {
            epoch: self.epoch.load(Ordering::SeqCst),
            slot: self.slot(id).load(Ordering::SeqCst),
        }
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.entries.get(id)
    }

    /// Puts an entry read when the generation was `seen`, unless an invalidation came since.
    /// Returns whether it stays.
    pub(super) fn put(&self, id: &str, e: Arc<Entry>, seen: Generation) -> bool {
        if self.generation(id) != seen {
            return false;
        }
        self.entries.insert(id.to_owned(), e);
        // An invalidation between the check and the insert may have missed the entry.
        if self.generation(id) != seen {
            self.entries.invalidate(id);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::new(
            "ws",
            TokenParts {
                access_token: SecretString::from("at"),
                token_type: "Bearer".into(),
                expires_at: None,
                scopes: vec![],
                extras: BTreeMap::new(),
            },
            None,
            [],
            Timestamp::from_millis(0),
        ))
    }

    #[test]
    fn an_invalidation_after_the_read_refuses_the_put() {
        let cache = TokenCache::default();
        let seen = cache.generation("a");
        cache.invalidate("a");
        assert!(!cache.put("a", entry(), seen));
        assert!(cache.get("a").is_none());
        let seen = cache.generation("a");
        cache.clear();
        assert!(!cache.put("a", entry(), seen));
        assert!(cache.get("a").is_none());
        // Another credential's invalidation does not matter (unless it shares the slot).
        let seen = cache.generation("a");
        let other = (0..)
            .map(|n| format!("c{n}"))
            .find(|id| !std::ptr::eq(cache.slot(id), cache.slot("a")))
            .unwrap();
        cache.invalidate(&other);
        assert!(cache.put("a", entry(), seen));
        assert!(cache.get("a").is_some());
    }

    #[test]
    fn invalidation_forgets_one_or_all() {
        let cache = TokenCache::default();
        cache.put("a", entry(), cache.generation("a"));
        cache.put("b", entry(), cache.generation("b"));
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
            let id = format!("c{n}");
            cache.put(&id, entry(), cache.generation(&id));
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.entry_count() <= 10);
    }

    /// A credential as big as real ones get: Google-sized tokens, three scopes, two extras,
    /// five members with bound user ids.
    fn realistic_entry(n: usize) -> Arc<Entry> {
        Arc::new(Entry::new(
            &format!("ws-{n:030}"),
            TokenParts {
                access_token: SecretString::from(format!("ya29.{n:0>250}")),
                token_type: "Bearer".into(),
                expires_at: Some(Timestamp::from_millis(0)),
                scopes: (0..3)
                    .map(|s| format!("https://www.googleapis.com/auth/scope{s}"))
                    .collect(),
                extras: (0..2)
                    .map(|x| (format!("extra{x}"), format!("value-{n:020}")))
                    .collect(),
            },
            Some(Duration::from_secs(3600)),
            (0..5).map(|u| {
                (
                    format!("member{u}@example.com"),
                    Some(format!("user-{n:020}")),
                )
            }),
            Timestamp::from_millis(0),
        ))
    }

    /// Resident memory of this process, in bytes (Linux).
    fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = status.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    /// The bound on entries is a bound on memory: an entry (moka's bookkeeping included) takes
    /// about 2.1 KiB (2.9 KiB before entries were compacted), measured as resident memory grown
    /// per entry (docs/operations.md); 2.5 KiB keeps 100,000 hot credentials within 256 MiB. Measured
    /// in a process of its own: tests running beside it would blur the number.
    #[test]
    fn an_entry_takes_at_most_two_and_a_half_kilobytes() {
        const MEASURE: &str = "CB_MEASURE_TOKEN_CACHE";
        if std::env::var_os(MEASURE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "issuance::cache::tests::an_entry_takes_at_most_two_and_a_half_kilobytes",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(MEASURE, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            let Some(per_entry) = text
                .lines()
                .find_map(|l| l.strip_prefix("token cache: "))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                return; // no /proc here: nothing measured
            };
            assert!(per_entry <= 2560, "{per_entry} bytes per entry");
            return;
        }
        const N: u64 = 20_000;
        let cache = TokenCache::new(TokenCacheConfig {
            max_entries: N,
            max_age: Duration::from_secs(3600),
        });
        let Some(before) = resident_bytes() else {
            return;
        };
        for n in 0..N as usize {
            let id = format!("0194f5c2-7e1a-7c3b-9a4f-{n:012}");
            cache.put(&id, realistic_entry(n), cache.generation(&id));
        }
        cache.entries.run_pending_tasks();
        assert_eq!(cache.entries.entry_count(), N);
        let per_entry = resident_bytes().unwrap_or(before).saturating_sub(before) / N;
        eprintln!("token cache: {per_entry} bytes per entry");
    }
}
