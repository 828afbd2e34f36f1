//! The SQLite store: one process, one database file.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Sqlite};

use crate::Store;
use crate::error::{Backend, StoreError};
use crate::model::{AuditRow, CredentialQuery, CredentialRow, KeyUsage, MemberRow, NewAuditEvent};
use crate::sql::{self, CredentialRecord};

const BACKEND: Backend = Backend::Sqlite;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// [`Store`] on an SQLite database file (WAL, busy_timeout 5 s, foreign keys on).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://path` or `sqlite:path`, creating the file and its parent directory.
    /// An in-memory URL (`sqlite::memory:`) gets a single connection: each pooled connection
    /// would otherwise see its own empty database.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(|e| BACKEND.map(e))?
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
        let pool = pool
            .connect_with(options)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool (its connections must have foreign keys on).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The underlying pool, for tests and tools that inspect raw rows.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn credential(record: CredentialRecord) -> Result<CredentialRow, StoreError> {
    CredentialRow::try_from(record)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(())
    }

    async fn insert_credential(
        &self,
        row: &CredentialRow,
        members: &[MemberRow],
    ) -> Result<(), StoreError> {
        sql::check_new_credential(row, members)?;
        let map = |e| BACKEND.map(e);
        // IMMEDIATE takes the write lock up front, so busy_timeout applies instead of a
        // deferred transaction failing at its first write.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(map)?;
        sql::bind_insert_credential!(sqlx::query::<Sqlite>(sql::INSERT_CREDENTIAL), row)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        for m in members {
            sql::bind_member!(sqlx::query::<Sqlite>(sql::INSERT_MEMBER), m)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
        }
        tx.commit().await.map_err(map)
    }

    async fn get_credential(&self, id: &str) -> Result<Option<CredentialRow>, StoreError> {
        sqlx::query_as::<Sqlite, CredentialRecord>(sql::GET_CREDENTIAL)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?
            .map(credential)
            .transpose()
    }

    async fn find_credential_by_account(
        &self,
        workspace_id: &str,
        provider_id: &str,
        account_subject: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        sqlx::query_as::<Sqlite, CredentialRecord>(sql::FIND_CREDENTIAL_BY_ACCOUNT)
            .bind(workspace_id)
            .bind(provider_id)
            .bind(account_subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?
            .map(credential)
            .transpose()
    }

    async fn list_credentials(
        &self,
        q: &CredentialQuery,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let text = sql::list_credentials_sql(q);
        let mut query =
            sqlx::query_as::<Sqlite, CredentialRecord>(AssertSqlSafe(text)).bind(&q.workspace_id);
        if let Some(provider_id) = &q.provider_id {
            query = query.bind(provider_id);
        }
        if let Some(after_id) = &q.after_id {
            query = query.bind(after_id);
        }
        query
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?
            .into_iter()
            .map(credential)
            .collect()
    }

    async fn update_credential(
        &self,
        row: &CredentialRow,
        expected_version: i64,
    ) -> Result<CredentialRow, StoreError> {
        let updated = sql::bind_update_credential!(
            sqlx::query_as::<Sqlite, CredentialRecord>(sql::UPDATE_CREDENTIAL),
            row,
            expected_version
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| BACKEND.map(e))?;
        if let Some(record) = updated {
            return credential(record);
        }
        // Nothing matched: tell a missing row from a stale version. Credentials are never
        // deleted, so an existing row here means the version moved on.
        let exists = sqlx::query(sql::CREDENTIAL_EXISTS)
            .bind(&row.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Err(match exists {
            Some(_) => StoreError::VersionConflict {
                expected: expected_version,
            },
            None => StoreError::NotFound,
        })
    }

    async fn list_members(&self, credential_id: &str) -> Result<Vec<MemberRow>, StoreError> {
        sqlx::query_as::<Sqlite, MemberRow>(sql::LIST_MEMBERS)
            .bind(credential_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn get_member(
        &self,
        credential_id: &str,
        email: &str,
    ) -> Result<Option<MemberRow>, StoreError> {
        sqlx::query_as::<Sqlite, MemberRow>(sql::GET_MEMBER)
            .bind(credential_id)
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn upsert_member(&self, m: &MemberRow) -> Result<(), StoreError> {
        sql::bind_member!(sqlx::query::<Sqlite>(sql::UPSERT_MEMBER), m)
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(())
    }

    async fn delete_member(&self, credential_id: &str, email: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::DELETE_MEMBER)
            .bind(credential_id)
            .bind(email)
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError> {
        sql::bind_audit!(sqlx::query_scalar::<Sqlite, i64>(sql::APPEND_AUDIT), e)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn list_audit(
        &self,
        credential_id: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let query = match credential_id {
            Some(id) => sqlx::query_as::<Sqlite, AuditRow>(sql::LIST_AUDIT_FOR_CREDENTIAL)
                .bind(id)
                .bind(after_id),
            None => sqlx::query_as::<Sqlite, AuditRow>(sql::LIST_AUDIT_ALL).bind(after_id),
        };
        query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        sqlx::query_as::<Sqlite, KeyUsage>(sql::KEY_USAGE)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }
}
