//! The refresh lease while it is held: a heartbeat that renews it (so a dead leader is noticed
//! within one short lease, judged by the database clock), the refresh intent recorded before
//! the provider call, and the token sets the provider answered that could not be written yet.

use super::lock;
use crate::clock::Clock;
use cb_store::{CredentialRow, Store};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Hex SHA-256 of a refresh token: what a refresh intent records (never the token).
pub(super) fn token_sha256(token: &SecretString) -> String {
    cb_crypto::sha256_hex(token.expose_secret().as_bytes())
}

/// Milliseconds of a duration, for the store's integer columns.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct KeeperState {
    /// The database said another holder has the lease (fence moved) or it was released.
    lost: AtomicBool,
    /// When the last successful renewal was sent (real time: the injected clock may stand still).
    renewed: Mutex<Instant>,
}

/// Keeps a lease alive while its holder works: renews it every third of its duration until
/// dropped. It is held as long as the last renewal sent is younger than the lease.
pub(super) struct LeaseKeeper {
    state: Arc<KeeperState>,
    lease: Duration,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts renewing lease `fence` of `id`, just taken.
    pub(super) fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        id: &str,
        fence: i64,
        lease: Duration,
    ) -> Self {
        let state = Arc::new(KeeperState {
            lost: AtomicBool::new(false),
            renewed: Mutex::new(Instant::now()),
        });
        let (s, id) = (state.clone(), id.to_owned());
        let task = tokio::spawn(async move {
            let period = lease / 3;
            loop {
                tokio::time::sleep(period).await;
                let sent = Instant::now();
                let local_now = clock.now().as_millis();
                match store
                    .renew_refresh_lease(&id, fence, millis(lease), local_now)
                    .await
                {
                    Ok(true) => *lock(&s.renewed) = sent,
                    Ok(false) => {
                        tracing::warn!(credential_id = %id, fence, "refresh lease taken over or released while held");
                        s.lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(credential_id = %id, error = %e, "refresh lease could not be renewed")
                    }
                }
            }
        });
        Self { state, lease, task }
    }

    /// Whether the lease is still ours: not taken over, and renewed less than a lease ago.
    pub(super) fn held(&self) -> bool {
        !self.state.lost.load(Ordering::SeqCst)
            && Instant::now() < *lock(&self.state.renewed) + self.lease
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lease the refresh-ahead claim took, with its heartbeat. Dropped unused (the credential no
/// longer needed a refresh, or a flight in this process already runs it), it is released.
pub(super) struct Claim {
    row: Option<CredentialRow>,
    keeper: Option<LeaseKeeper>,
    store: Arc<dyn Store>,
}

impl Claim {
    /// Starts the heartbeat of a lease just claimed.
    pub(super) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        row: CredentialRow,
        lease: Duration,
    ) -> Self {
        let keeper = LeaseKeeper::start(store.clone(), clock, &row.id, row.lease.fence, lease);
        Self {
            row: Some(row),
            keeper: Some(keeper),
            store,
        }
    }

    /// The claimed credential's id.
    pub(super) fn id(&self) -> &str {
        self.row.as_ref().map_or("", |r| r.id.as_str())
    }

    /// The fence of the claimed lease.
    pub(super) fn fence(&self) -> i64 {
        self.row.as_ref().map_or(0, |r| r.lease.fence)
    }

    /// Uses the lease: its heartbeat goes to the refresh, which releases it.
    pub(super) fn into_keeper(mut self) -> Option<LeaseKeeper> {
        self.row = None;
        self.keeper.take()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Outside a runtime (process teardown) the lease is left to lapse.
        if let (Some(row), Ok(runtime)) = (self.row.take(), tokio::runtime::Handle::try_current()) {
            let store = self.store.clone();
            runtime.spawn(async move {
                let _ = store.release_refresh_lease(&row.id, row.lease.fence).await;
            });
        }
    }
}

/// A token set the provider answered whose write failed (the database stayed away while the
/// lease lasted). Kept sealed in memory: the next leader in this process writes it instead of
/// calling the provider again with the refresh token it replaced.
#[derive(Clone)]
pub(super) struct Pending {
    /// The sealed token ciphertext the refresh started from: the pending set applies only
    /// while the row still holds it.
    pub(super) base: Vec<u8>,
    /// The row to write (refresh-owned columns, the new set sealed).
    pub(super) row: CredentialRow,
    /// The fence of the lease it was obtained under.
    pub(super) fence: i64,
}

/// Pending token sets by credential id.
#[derive(Default)]
pub(super) struct PendingWrites(Mutex<HashMap<String, Pending>>);

impl PendingWrites {
    pub(super) fn get(&self, id: &str) -> Option<Pending> {
        lock(&self.0).get(id).cloned()
    }

    pub(super) fn put(&self, id: &str, p: Pending) {
        lock(&self.0).insert(id.to_owned(), p);
    }

    pub(super) fn remove(&self, id: &str) {
        lock(&self.0).remove(id);
    }
}
