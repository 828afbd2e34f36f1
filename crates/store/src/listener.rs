//! PostgreSQL change notifications: one LISTEN connection per store, fanned out to every
//! subscriber through a broadcast channel.
//!
//! Writers call `pg_notify('cb_credential_changed', id)` inside their transaction, so a
//! notification is delivered exactly when (and only if) the write commits, to every replica.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::CHANGE_EVENT_CAPACITY;
use crate::error::Dialect;
use crate::model::ChangeEvent;
use crate::sql;

/// First pause before reconnecting a listener that failed; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The broadcast channel of one store and the task that feeds it. Shared by the clones of a
/// store; dropping the last clone aborts the task, which closes its connection.
pub struct ChangeHub {
    sender: broadcast::Sender<ChangeEvent>,
    task: Mutex<Option<JoinHandle<()>>>,
    feed: Arc<FeedState>,
}

/// Whether the listener is LISTENing, and in which session (bumped at every (re)connection).
#[derive(Default)]
struct FeedState {
    live: AtomicBool,
    session: AtomicU64,
}

impl FeedState {
    /// LISTEN is (re-)established: a new session, in which every commit is delivered.
    fn up(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
        self.live.store(true, Ordering::SeqCst);
    }

    fn down(&self) {
        self.live.store(false, Ordering::SeqCst);
    }
}

impl ChangeHub {
    pub(crate) fn new() -> Self {
        let (sender, _) = broadcast::channel(CHANGE_EVENT_CAPACITY);
        Self {
            sender,
            task: Mutex::new(None),
            feed: Arc::new(FeedState::default()),
        }
    }

    /// The current session while LISTENing, `None` while down or not started.
    pub(crate) fn session(&self) -> Option<u64> {
        self.feed
            .live
            .load(Ordering::SeqCst)
            .then(|| self.feed.session.load(Ordering::SeqCst))
    }

    /// A new receiver; starts the listener on the current runtime if it is not running.
    pub(crate) fn subscribe(&self, pool: &PgPool) -> broadcast::Receiver<ChangeEvent> {
        // Subscribe first: the listener's first Resync must reach this receiver.
        let receiver = self.sender.subscribe();
        self.ensure_listening(pool);
        receiver
    }

    fn ensure_listening(&self, pool: &PgPool) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "subscribe_changes called outside a tokio runtime: no change notifications \
                 until it is called again inside one"
            );
            return;
        };
        let options = (*pool.connect_options()).clone();
        *task = Some(runtime.spawn(listen(options, self.sender.clone(), self.feed.clone())));
    }
}

impl Drop for ChangeHub {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for ChangeHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listening = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        f.debug_struct("ChangeHub")
            .field("subscribers", &self.sender.receiver_count())
            .field("listening", &listening)
            .finish()
    }
}

/// Runs until aborted: LISTENs on its own connection (not one of the store pool's), forwards
/// every notification, and reconnects with backoff, announcing `Resync` whenever
/// notifications may have been missed and once LISTEN is (re-)established.
async fn listen(
    options: PgConnectOptions,
    sender: broadcast::Sender<ChangeEvent>,
    feed: Arc<FeedState>,
) {
    let name = format!(
        "{}-listener",
        options
            .get_application_name()
            .unwrap_or("credential-broker")
    );
    let options = options.application_name(&name);
    // A pool of one only serves reconnects (what `PgListener::connect` does with a URL).
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    let mut backoff = MIN_BACKOFF;
    loop {
        match start(&pool).await {
            Ok(mut listener) => {
                backoff = MIN_BACKOFF;
                // From here on every commit is delivered; anything before may have been missed.
                feed.up();
                let _ = sender.send(ChangeEvent::Resync);
                forward(&mut listener, &sender, &feed).await;
                feed.down();
                let _ = sender.send(ChangeEvent::Resync);
            }
            Err(e) => {
                tracing::warn!(
                    error = %Dialect::Postgres.map(e),
                    retry_in_ms = backoff.as_millis(),
                    "cannot listen for credential changes"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn start(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(sql::CHANGE_CHANNEL).await?;
    Ok(listener)
}

/// Forwards notifications until the listener fails.
async fn forward(
    listener: &mut PgListener,
    sender: &broadcast::Sender<ChangeEvent>,
    feed: &FeedState,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                // No receiver is not an error: nobody caches right now.
                let _ = sender.send(ChangeEvent::Changed(notification.payload().to_owned()));
            }
            Ok(None) => {
                // The connection dropped and the listener re-established it (LISTEN included)
                // before returning: notifications sent in between are lost.
                tracing::warn!("credential change listener reconnected; announcing a resync");
                feed.up();
                let _ = sender.send(ChangeEvent::Resync);
            }
            Err(e) => {
                tracing::warn!(
                    error = %Dialect::Postgres.map(e),
                    "credential change listener failed; reconnecting"
                );
                return;
            }
        }
    }
}
