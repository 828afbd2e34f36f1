//! The store's error type and the one place sqlx errors are translated into it.
//!
//! Messages never carry bound parameter values: they may be tokens or personal data.

use sqlx::error::{DatabaseError, ErrorKind};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row does not exist (also: a member refers to a credential that does not exist).
    #[error("row not found")]
    NotFound,
    /// Optimistic concurrency: the row's version is no longer `expected`.
    #[error("row was changed concurrently (expected version {expected})")]
    VersionConflict {
        /// The version the caller based its write on.
        expected: i64,
    },
    /// A unique constraint was violated; names what was duplicated
    /// (`credential id`, `credential account`, `member email`, `connect session`).
    #[error("unique constraint violated: {0}")]
    Duplicate(String),
    /// The database cannot be reached right now (connection refused, pool timeout, io, busy).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(String),
    /// A member change would leave the credential without an active admin; nothing changed.
    #[error("the credential must keep at least one active admin")]
    LastAdmin,
    /// A refresh result was not written: the lease expired and another holder took it over
    /// (the fencing token moved on), or the credential was disconnected meanwhile.
    #[error(
        "the refresh lease was lost (expired and taken over, or the credential was disconnected)"
    )]
    LeaseLost,
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Which database produced an error; error codes differ between them.
#[derive(Clone, Copy, Debug)]
pub enum Dialect {
    /// SQLite extended result codes.
    Sqlite,
    /// PostgreSQL SQLSTATE codes.
    Postgres,
}

impl Dialect {
    /// Maps a sqlx error from this backend to a [`StoreError`].
    pub(crate) fn map(self, err: sqlx::Error) -> StoreError {
        match err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => self.map_database(db.as_ref()),
            sqlx::Error::PoolTimedOut => {
                StoreError::Unavailable("timed out waiting for a database connection".into())
            }
            sqlx::Error::PoolClosed => StoreError::Unavailable("connection pool is closed".into()),
            sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable("database worker thread crashed".into())
            }
            sqlx::Error::Io(e) => StoreError::Unavailable(format!("io error: {e}")),
            sqlx::Error::Tls(e) => StoreError::Unavailable(format!("tls error: {e}")),
            // The server hung up mid-conversation (a connection accepted and closed by a proxy
            // or a restarting server reads as a garbled answer): the database is unreachable.
            sqlx::Error::Protocol(e) => StoreError::Unavailable(format!("protocol error: {e}")),
            sqlx::Error::Migrate(e) => StoreError::Migration(e.to_string()),
            // The remaining variants (configuration, protocol, decode, ...) describe types and
            // settings, not the values bound to a statement.
            other => StoreError::Database(other.to_string()),
        }
    }

    fn map_database(self, db: &dyn DatabaseError) -> StoreError {
        match db.kind() {
            ErrorKind::UniqueViolation => {
                // Postgres names the constraint; SQLite only lists the columns in its message.
                let hint = db.constraint().unwrap_or_else(|| db.message());
                return StoreError::Duplicate(duplicate_subject(hint).to_owned());
            }
            // The parent row is gone: a credential (members, usage) or an app or endpoint
            // (their secrets).
            ErrorKind::ForeignKeyViolation => return StoreError::NotFound,
            _ => {}
        }
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        // Only the message: Postgres puts row values in DETAIL, which is left out on purpose.
        let text = format!("{} (code {code})", db.message());
        if self.is_unavailable(&code) {
            StoreError::Unavailable(text)
        } else {
            StoreError::Database(text)
        }
    }

    fn is_unavailable(self, code: &str) -> bool {
        match self {
            // Extended result codes; the primary code is the low byte.
            // BUSY (5) / LOCKED (6) after busy_timeout, IOERR (10), CANTOPEN (14).
            Dialect::Sqlite => code
                .parse::<i32>()
                .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14)),
            // Connection exceptions (08), insufficient resources (53), shutdown / starting (57P0x).
            Dialect::Postgres => {
                code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0")
            }
        }
    }
}

/// Names what a unique violation was about, from a constraint name or an SQLite message.
fn duplicate_subject(hint: &str) -> &'static str {
    if hint.contains("connect_sessions") {
        // connect_sessions_pkey / "connect_sessions.state_hash"
        "connect session"
    } else if hint.contains("account") {
        // credentials_active_account_uq / "credentials.account_subject"
        "credential account"
    } else if hint.contains("credential_members") {
        "member email"
    } else if hint.contains("credentials") {
        "credential id"
    } else if hint.contains("run_grants") {
        "run grant"
    } else if hint.contains("oauth_app_secrets") {
        // before oauth_apps, which it contains
        "OAuth app secret version"
    } else if hint.contains("oauth_apps") {
        "OAuth app"
    } else if hint.contains("webhook_endpoint_secrets") {
        "webhook secret version"
    } else if hint.contains("webhook_endpoints") {
        "webhook endpoint"
    } else if hint.contains("workspace_providers") {
        "workspace provider"
    } else {
        "unknown constraint"
    }
}
