//! What differs between the SQL backends, and nothing else: how to connect and migrate, how a
//! write transaction starts, how a credential row is locked, how changes are announced, and
//! which error codes mean "unavailable". [`SqlStore`](crate::SqlStore) holds every query once.

use std::fmt;
use std::future::Future;

use sqlx::Pool;
use sqlx::migrate::{Migrate, Migrator};
use tokio::sync::broadcast;

use crate::error::{Dialect, StoreError};
use crate::model::ChangeEvent;

/// A database [`SqlStore`](crate::SqlStore) runs on: implemented for [`sqlx::Sqlite`] and
/// [`sqlx::Postgres`] only (the trait cannot be named outside this crate).
pub trait Backend: sqlx::Database<Connection: Migrate> {
    /// What [`Store::backend`](crate::Store::backend) answers.
    const BACKEND: &'static str;
    /// The OpenTelemetry `db.system` of this database.
    const DB_SYSTEM: &'static str;
    /// How this database reports errors.
    const DIALECT: Dialect;
    /// Statement that opens a write transaction; `None` is the driver's plain `BEGIN`.
    const BEGIN_WRITE: Option<&'static str>;
    /// Reads a credential's id inside a write transaction and holds it until commit, so that
    /// member changes of one credential are serialized. Bind: id.
    const LOCK_CREDENTIAL: &'static str;
    /// Statement run inside a writing transaction before it appends lifecycle events, holding
    /// until commit, so event ids commit in increasing order; `None` where writers are
    /// serialized anyway (SQLite).
    const LOCK_EVENTS: Option<&'static str>;
    /// Statement run inside a writing transaction to announce a change on commit (to every
    /// process on the database). Bind: credential id. `None`: announced after commit instead.
    const NOTIFY_CHANGE: Option<&'static str>;

    /// The current time in ms as an SQL expression on the database clock, shared by every
    /// replica (leases are judged by it); `None`: the caller's clock, bound as a parameter.
    const DB_NOW_MS: Option<&'static str>;

    /// Appended to the sub-select of a batch claim: rows another transaction is claiming are
    /// skipped rather than waited for (`""` where writers are serialized anyway).
    const SKIP_LOCKED: &'static str;

    /// This backend's embedded migrations.
    const MIGRATOR: &'static Migrator;

    /// The change fan-out shared by the clones of one store.
    type Changes: Send + Sync + fmt::Debug + 'static;

    /// Opens a pool on `url` with up to `max_connections`.
    fn connect(
        url: &str,
        max_connections: u32,
    ) -> impl Future<Output = Result<Pool<Self>, StoreError>> + Send;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// A fresh change fan-out.
    fn changes() -> Self::Changes;

    /// Announces a committed write of `credential_id` to this process's subscribers, where the
    /// database does not (see [`Backend::NOTIFY_CHANGE`]).
    fn announce_committed(changes: &Self::Changes, credential_id: &str);

    /// The session of the change feed while it delivers every process's changes (see
    /// [`Store::change_feed`](crate::Store::change_feed)).
    fn feed_session(changes: &Self::Changes) -> Option<u64>;

    /// A new subscriber of the change fan-out.
    fn subscribe(changes: &Self::Changes, pool: &Pool<Self>) -> broadcast::Receiver<ChangeEvent>;
}
