//! SQLite: one process, one database file. Writes take the database lock up front and
//! changes are announced in-process.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Pool, Sqlite};
use tokio::sync::broadcast;

use crate::CHANGE_EVENT_CAPACITY;
use crate::backend::Backend;
use crate::error::{Dialect, StoreError};
use crate::model::ChangeEvent;

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

impl Backend for Sqlite {
    const BACKEND: &'static str = "sqlite";
    const DB_SYSTEM: &'static str = "sqlite";
    const DIALECT: Dialect = Dialect::Sqlite;
    // IMMEDIATE takes the database write lock up front: busy_timeout applies instead of a
    // deferred transaction failing at its first write, and two member changes cannot both
    // count the other's admin as still present.
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    // BEGIN IMMEDIATE already serializes every writer.
    const LOCK_CREDENTIAL: &'static str = "SELECT id FROM credentials WHERE id = $1";
    const LOCK_EVENTS: Option<&'static str> = None;
    const NOTIFY_CHANGE: Option<&'static str> = None;

    // One process: its own clock is the only one.
    const DB_NOW_MS: Option<&'static str> = None;

    // One writer at a time: nothing to skip.
    const SKIP_LOCKED: &'static str = "";
    const MIGRATOR: &'static Migrator = &MIGRATIONS;

    /// Clones of a store share one channel; only this process's writes are announced.
    type Changes = broadcast::Sender<ChangeEvent>;

    /// `sqlite://path` or `sqlite:path` (WAL, busy_timeout 5 s, foreign keys on), creating the
    /// file and its parent directory. An in-memory URL (`sqlite::memory:`) gets a single
    /// connection: each pooled connection would otherwise see its own empty database.
    async fn connect(url: &str, max_connections: u32) -> Result<Pool<Self>, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Self::DIALECT.map(e))?
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let mut pool = SqlitePoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if in_memory {
            pool = pool
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else {
            // synchronous stays FULL: a rotated refresh token lost on power failure
            // cannot be recovered from the provider.
            options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                tokio::fs::create_dir_all(parent).await.map_err(|e| {
                    StoreError::Unavailable(format!("cannot create database directory: {e}"))
                })?;
            }
            pool = pool.max_connections(max_connections.max(1));
        }
        pool.connect_with(options)
            .await
            .map_err(|e| Self::DIALECT.map(e))
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn changes() -> Self::Changes {
        broadcast::channel(CHANGE_EVENT_CAPACITY).0
    }

    fn announce_committed(changes: &Self::Changes, credential_id: &str) {
        // No receiver is not an error: nobody caches right now.
        let _ = changes.send(ChangeEvent::Changed(credential_id.to_owned()));
    }

    fn feed_session(_changes: &Self::Changes) -> Option<u64> {
        // Every write of the one process is announced in-process.
        Some(0)
    }

    fn subscribe(changes: &Self::Changes, _pool: &Pool<Self>) -> broadcast::Receiver<ChangeEvent> {
        changes.subscribe()
    }
}
