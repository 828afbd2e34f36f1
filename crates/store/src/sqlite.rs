//! The SQLite store: one process, one database file.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Sqlite, SqliteConnection};
use tokio::sync::broadcast;

use crate::error::{Backend, StoreError};
use crate::model::{
    AuditQuery, AuditRow, ChangeEvent, ConnectSessionRow, CredentialQuery, CredentialRow, KeyUsage,
    MemberChange, MemberRow, NewAuditEvent, StatusQuery, UsageRecord, WrappedDekRow,
};
use crate::sql::{self, CredentialRecord};
use crate::{CHANGE_EVENT_CAPACITY, Store};

const BACKEND: Backend = Backend::Sqlite;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// [`Store`] on an SQLite database file (WAL, busy_timeout 5 s, foreign keys on).
///
/// Change notifications stay in this process: clones share one broadcast channel, and every
/// write through any clone is announced after it commits.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    changes: broadcast::Sender<ChangeEvent>,
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
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (its connections must have foreign keys on).
    pub fn from_pool(pool: SqlitePool) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_EVENT_CAPACITY);
        Self { pool, changes }
    }

    /// The underlying pool, for tests and tools that inspect raw rows.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn credential(record: CredentialRecord) -> Result<CredentialRow, StoreError> {
    CredentialRow::try_from(record)
}

impl SqliteStore {
    /// Announces a committed write. No receiver is not an error.
    fn announce(&self, credential_id: &str) {
        let _ = self
            .changes
            .send(ChangeEvent::Changed(credential_id.to_owned()));
    }
}

/// The body of `change_member`, inside the caller's `BEGIN IMMEDIATE` transaction.
async fn apply_member_change(
    tx: &mut SqliteConnection,
    change: &MemberChange,
) -> Result<(), StoreError> {
    let map = |e| BACKEND.map(e);
    let credential_id = change.credential_id();
    let exists = sqlx::query(sql::CREDENTIAL_EXISTS)
        .bind(credential_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let admins_before = count_active_admins(&mut *tx, credential_id).await?;
    match change {
        MemberChange::Upsert(m) => {
            sql::bind_member!(sqlx::query::<Sqlite>(sql::UPSERT_MEMBER), m)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
        }
        MemberChange::Delete {
            credential_id,
            email,
        } => {
            let done = sqlx::query(sql::DELETE_MEMBER)
                .bind(credential_id)
                .bind(email)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
    }
    let admins_after = count_active_admins(&mut *tx, credential_id).await?;
    sql::check_last_admin(admins_before, admins_after)
}

async fn count_active_admins(
    conn: &mut SqliteConnection,
    credential_id: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar::<Sqlite, i64>(sql::COUNT_ACTIVE_ADMINS)
        .bind(credential_id)
        .fetch_one(conn)
        .await
        .map_err(|e| BACKEND.map(e))
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
        tx.commit().await.map_err(map)?;
        self.announce(&row.id);
        Ok(())
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

    async fn list_credentials_by_status(
        &self,
        q: &StatusQuery,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let text = sql::list_credentials_by_status_sql(q);
        let mut query =
            sqlx::query_as::<Sqlite, CredentialRecord>(AssertSqlSafe(text)).bind(&q.status);
        if let Some(workspace_id) = &q.workspace_id {
            query = query.bind(workspace_id);
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

    async fn count_credentials_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as::<Sqlite, (String, i64)>(sql::COUNT_CREDENTIALS_BY_STATUS)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
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
            self.announce(&row.id);
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

    async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError> {
        sql::bind_audit!(sqlx::query_scalar::<Sqlite, i64>(sql::APPEND_AUDIT), e)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn append_audit_batch(&self, events: &[NewAuditEvent]) -> Result<(), StoreError> {
        let map = |e| BACKEND.map(e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(map)?;
        for e in events {
            sql::bind_audit!(sqlx::query_scalar::<Sqlite, i64>(sql::APPEND_AUDIT), e)
                .fetch_one(&mut *tx)
                .await
                .map_err(map)?;
        }
        tx.commit().await.map_err(map)
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let text = sql::list_audit_sql(q);
        sql::bind_audit_query!(sqlx::query_as::<Sqlite, AuditRow>(AssertSqlSafe(text)), q)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn prune_audit(&self, older_than: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(sql::PRUNE_AUDIT_BATCH)
                .bind(older_than)
                .bind(sql::PRUNE_BATCH_SIZE)
                .execute(&self.pool)
                .await
                .map_err(|e| BACKEND.map(e))?;
            total += done.rows_affected();
            if done.rows_affected() < sql::PRUNE_BATCH_SIZE.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        sqlx::query_as::<Sqlite, KeyUsage>(sql::KEY_USAGE)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn dek_rows_not_on_key(
        &self,
        key_id: &str,
        key_version: i64,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WrappedDekRow>, StoreError> {
        sqlx::query_as::<Sqlite, WrappedDekRow>(sql::DEK_ROWS_NOT_ON_KEY)
            .bind(key_id)
            .bind(key_version)
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn rewrap_dek(
        &self,
        old: &WrappedDekRow,
        new_wrapped: &[u8],
        new_key_id: &str,
        new_key_version: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::REWRAP_DEK)
            .bind(&old.credential_id)
            .bind(old.dek_wrapped.as_slice())
            .bind(&old.dek_key_id)
            .bind(old.dek_key_version)
            .bind(new_wrapped)
            .bind(new_key_id)
            .bind(new_key_version)
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn change_member(&self, change: &MemberChange) -> Result<(), StoreError> {
        let map = |e| BACKEND.map(e);
        // IMMEDIATE takes the database write lock before the admin count is read, so two
        // changes to one credential cannot both count the other's admin as still present.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(map)?;
        // An error drops `tx`, which rolls back.
        apply_member_change(&mut tx, change).await?;
        tx.commit().await.map_err(map)?;
        self.announce(change.credential_id());
        Ok(())
    }

    async fn acquire_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<CredentialRow>, StoreError> {
        sqlx::query_as::<Sqlite, CredentialRecord>(sql::ACQUIRE_REFRESH_LEASE)
            .bind(id)
            .bind(holder)
            .bind(now)
            .bind(lease_until)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?
            .map(credential)
            .transpose()
    }

    async fn complete_refresh(
        &self,
        row: &CredentialRow,
        fence: i64,
    ) -> Result<CredentialRow, StoreError> {
        let updated = sql::bind_complete_refresh!(
            sqlx::query_as::<Sqlite, CredentialRecord>(sql::COMPLETE_REFRESH),
            row,
            fence
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| BACKEND.map(e))?;
        let record = updated.ok_or(StoreError::LeaseLost)?;
        self.announce(&row.id);
        credential(record)
    }

    async fn release_refresh_lease(&self, id: &str, fence: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::RELEASE_REFRESH_LEASE)
            .bind(id)
            .bind(fence)
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn due_for_refresh(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<Sqlite, String>(sql::DUE_FOR_REFRESH)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let merged = sql::merge_usage(batch);
        let map = |e| BACKEND.map(e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(map)?;
        for (credential_id, at) in &merged.credentials {
            sqlx::query(sql::TOUCH_CREDENTIAL_USAGE)
                .bind(*credential_id)
                .bind(*at)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
        }
        for ((credential_id, workflow_id), at) in &merged.workflows {
            sqlx::query(sql::UPSERT_WORKFLOW_USAGE)
                .bind(*credential_id)
                .bind(*workflow_id)
                .bind(*at)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
        }
        tx.commit().await.map_err(map)
    }

    async fn recent_workflows(
        &self,
        credential_id: &str,
        limit: u32,
    ) -> Result<(Vec<(String, i64)>, u64), StoreError> {
        let map = |e| BACKEND.map(e);
        let recent = sqlx::query_as::<Sqlite, (String, i64)>(sql::RECENT_WORKFLOWS)
            .bind(credential_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map)?;
        let total = sqlx::query_scalar::<Sqlite, i64>(sql::COUNT_WORKFLOWS)
            .bind(credential_id)
            .fetch_one(&self.pool)
            .await
            .map_err(map)?;
        Ok((recent, total.unsigned_abs()))
    }

    async fn insert_connect_session(&self, s: &ConnectSessionRow) -> Result<(), StoreError> {
        sql::bind_connect_session!(sqlx::query::<Sqlite>(sql::INSERT_CONNECT_SESSION), s)
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(())
    }

    async fn get_connect_session(
        &self,
        state_hash: &str,
    ) -> Result<Option<ConnectSessionRow>, StoreError> {
        sqlx::query_as::<Sqlite, ConnectSessionRow>(sql::GET_CONNECT_SESSION)
            .bind(state_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn consume_connect_session(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::CONSUME_CONNECT_SESSION)
            .bind(state_hash)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn prune_connect_sessions(&self, older_than: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(sql::PRUNE_CONNECT_SESSIONS_BATCH)
                .bind(older_than)
                .bind(sql::PRUNE_BATCH_SIZE)
                .execute(&self.pool)
                .await
                .map_err(|e| BACKEND.map(e))?;
            total += done.rows_affected();
            if done.rows_affected() < sql::PRUNE_BATCH_SIZE.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<ChangeEvent> {
        self.changes.subscribe()
    }
}
