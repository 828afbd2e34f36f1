//! PostgreSQL: shared by every replica. Member changes lock the credential row, and changes
//! are announced with `pg_notify` inside the writing transaction (see [`crate::listener`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Pool, Postgres};
use tokio::sync::broadcast;

use crate::backend::Backend;
use crate::error::{Dialect, StoreError};
use crate::listener::ChangeHub;
use crate::model::ChangeEvent;

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

impl Backend for Postgres {
    const BACKEND: &'static str = "postgres";
    const DB_SYSTEM: &'static str = "postgresql";
    const DIALECT: Dialect = Dialect::Postgres;
    const BEGIN_WRITE: Option<&'static str> = None;
    // Serializes every member change of this credential until commit or rollback, so two
    // changes cannot both count the other's admin as still present.
    const LOCK_CREDENTIAL: &'static str = "SELECT id FROM credentials WHERE id = $1 FOR UPDATE";
    // Queued with the transaction, delivered to every listener at commit.
    const LOCK_EVENTS: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(7314002501)");
    const NOTIFY_CHANGE: Option<&'static str> =
        Some("SELECT pg_notify('cb_credential_changed', $1)");

    // One clock for every replica: skew between replicas cannot end a live lease early.
    const DB_NOW_MS: Option<&'static str> =
        Some("CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)");

    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const MIGRATOR: &'static Migrator = &MIGRATIONS;

    /// The listener (one extra connection, outside the pool) runs from the first subscription
    /// until the last clone of the store is dropped.
    type Changes = ChangeHub;

    /// `postgres://...`: a pool of `max_connections`, all opened at start and kept open: a
    /// burst (a refresh storm after a deploy) must not wait for new server processes first.
    async fn connect(url: &str, max_connections: u32) -> Result<Pool<Self>, StoreError> {
        let mut options = PgConnectOptions::from_str(url).map_err(|e| Self::DIALECT.map(e))?;
        if options.get_application_name().is_none() {
            // Lets operators tell our sessions apart in pg_stat_activity.
            options = options.application_name("credential-broker");
        }
        PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .min_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| Self::DIALECT.map(e))
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn changes() -> Self::Changes {
        ChangeHub::new()
    }

    fn announce_committed(_changes: &Self::Changes, _credential_id: &str) {
        // NOTIFY_CHANGE did it, for every replica.
    }

    fn feed_session(changes: &Self::Changes) -> Option<u64> {
        changes.session()
    }

    fn subscribe(changes: &Self::Changes, pool: &Pool<Self>) -> broadcast::Receiver<ChangeEvent> {
        changes.subscribe(pool)
    }
}
