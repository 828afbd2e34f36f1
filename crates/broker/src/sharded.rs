//! A map split into shards, each behind its own lock, chosen by the key's hash: recorders on the
//! hot path (audit buffer, usage) rarely wait for each other, and none takes a process-wide lock.
//! Keys are hashed with foldhash (randomly seeded, several times faster than SipHash on short
//! keys); lookups may use a borrowed form of the key ([`Equivalent`]), so a key already present
//! costs no allocation.

pub(crate) use hashbrown::Equivalent;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};

/// Shards of every [`ShardedMap`]: enough that two cores rarely pick the same one.
const SHARDS: usize = 64;

/// The hasher of the shards' maps and of the shard choice.
pub(crate) type FastState = hashbrown::DefaultHashBuilder;

/// One shard's map.
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V, FastState>;

/// A concurrent map of `K` to `V` in [`SHARDS`] locked shards.
pub(crate) struct ShardedMap<K, V> {
    shards: Box<[Mutex<Map<K, V>>]>,
    hasher: FastState,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            hasher: FastState::default(),
        }
    }
}

/// Locks a shard. A panic while holding one of these short critical sections leaves
/// consistent data, so a poisoned lock is taken over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The locked shard that holds `key` (or would): `key` is `K` or a form of it that hashes
    /// the same (`K: Borrow<Q>`, or `Q: Equivalent<K>`).
    pub(crate) fn shard<Q>(&self, key: &Q) -> MutexGuard<'_, Map<K, V>>
    where
        Q: Hash + ?Sized,
    {
        let n = usize::try_from(self.hasher.hash_one(key)).unwrap_or_default();
        lock(&self.shards[n % self.shards.len()])
    }

    /// Empties every shard, one at a time, and returns what they held.
    pub(crate) fn take(&self) -> Vec<(K, V)> {
        let mut all = Vec::new();
        for shard in &self.shards {
            all.extend(std::mem::take(&mut *lock(shard)));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_writers_lose_nothing_and_take_empties_the_map() {
        let map = Arc::new(ShardedMap::<String, u64>::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for k in 0..1000 {
                        *map.shard(format!("k{}", k % 100).as_str())
                            .entry(format!("k{}", k % 100))
                            .or_default() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut all = map.take();
        all.sort();
        assert_eq!(all.len(), 100);
        assert!(all.iter().all(|(_, n)| *n == 40));
        assert!(map.take().is_empty());
    }
}
