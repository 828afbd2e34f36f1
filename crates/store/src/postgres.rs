//! The PostgreSQL store: shared by every replica.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgConnection, Postgres};
use tokio::sync::broadcast;

use crate::Store;
use crate::error::{Backend, StoreError};
use crate::listener::ChangeHub;
use crate::model::{
    AuditQuery, AuditRow, ChangeEvent, ConnectSessionRow, CredentialQuery, CredentialRow, KeyUsage,
    MemberChange, MemberRow, NewAuditEvent, StatusQuery, UsageRecord, WrappedDekRow,
};
use crate::sql::{self, CredentialRecord};

const BACKEND: Backend = Backend::Postgres;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// [`Store`] on a PostgreSQL database, through a connection pool.
///
/// Clones share the pool and the change listener; the listener (one extra connection, outside
/// the pool) runs from the first [`Store::subscribe_changes`] until the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    changes: Arc<ChangeHub>,
}

impl PgStore {
    /// Connects a pool of up to `max_connections` to `postgres://...` and checks one connection.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url).map_err(|e| BACKEND.map(e))?;
        if options.get_application_name().is_none() {
            // Lets operators tell our sessions apart in pg_stat_activity.
            options = options.application_name("credential-broker");
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            changes: Arc::new(ChangeHub::new()),
        }
    }

    /// The underlying pool, for tests and tools that inspect raw rows.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn credential(record: CredentialRecord) -> Result<CredentialRow, StoreError> {
    CredentialRow::try_from(record)
}

/// Queues the change notification for `credential_id`; delivered when the transaction commits.
async fn notify_change(conn: &mut PgConnection, credential_id: &str) -> Result<(), StoreError> {
    sqlx::query(sql::NOTIFY_CHANGE)
        .bind(credential_id)
        .execute(conn)
        .await
        .map_err(|e| BACKEND.map(e))?;
    Ok(())
}

async fn count_active_admins(
    conn: &mut PgConnection,
    credential_id: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar::<Postgres, i64>(sql::COUNT_ACTIVE_ADMINS)
        .bind(credential_id)
        .fetch_one(conn)
        .await
        .map_err(|e| BACKEND.map(e))
}

/// The body of `change_member`, inside the caller's transaction.
async fn apply_member_change(
    tx: &mut PgConnection,
    change: &MemberChange,
) -> Result<(), StoreError> {
    let map = |e| BACKEND.map(e);
    let credential_id = change.credential_id();
    // Serializes every member change of this credential until commit or rollback, so two
    // changes cannot both count the other's admin as still present.
    let locked = sqlx::query(sql::LOCK_CREDENTIAL_FOR_UPDATE)
        .bind(credential_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?;
    if locked.is_none() {
        return Err(StoreError::NotFound);
    }
    let admins_before = count_active_admins(&mut *tx, credential_id).await?;
    match change {
        MemberChange::Upsert(m) => {
            sql::bind_member!(sqlx::query::<Postgres>(sql::UPSERT_MEMBER), m)
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
    sql::check_last_admin(admins_before, admins_after)?;
    notify_change(tx, credential_id).await
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
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
        let mut tx = self.pool.begin().await.map_err(map)?;
        sql::bind_insert_credential!(sqlx::query::<Postgres>(sql::INSERT_CREDENTIAL), row)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        for m in members {
            sql::bind_member!(sqlx::query::<Postgres>(sql::INSERT_MEMBER), m)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
        }
        notify_change(&mut tx, &row.id).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_credential(&self, id: &str) -> Result<Option<CredentialRow>, StoreError> {
        sqlx::query_as::<Postgres, CredentialRecord>(sql::GET_CREDENTIAL)
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
        sqlx::query_as::<Postgres, CredentialRecord>(sql::FIND_CREDENTIAL_BY_ACCOUNT)
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
            sqlx::query_as::<Postgres, CredentialRecord>(AssertSqlSafe(text)).bind(&q.workspace_id);
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
            sqlx::query_as::<Postgres, CredentialRecord>(AssertSqlSafe(text)).bind(&q.status);
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
        sqlx::query_as::<Postgres, (String, i64)>(sql::COUNT_CREDENTIALS_BY_STATUS)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn update_credential(
        &self,
        row: &CredentialRow,
        expected_version: i64,
    ) -> Result<CredentialRow, StoreError> {
        let map = |e| BACKEND.map(e);
        let mut tx = self.pool.begin().await.map_err(map)?;
        let updated = sql::bind_update_credential!(
            sqlx::query_as::<Postgres, CredentialRecord>(sql::UPDATE_CREDENTIAL),
            row,
            expected_version
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?;
        if let Some(record) = updated {
            notify_change(&mut tx, &row.id).await?;
            tx.commit().await.map_err(map)?;
            return credential(record);
        }
        tx.rollback().await.map_err(map)?;
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
        sqlx::query_as::<Postgres, MemberRow>(sql::LIST_MEMBERS)
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
        sqlx::query_as::<Postgres, MemberRow>(sql::GET_MEMBER)
            .bind(credential_id)
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError> {
        sql::bind_audit!(sqlx::query_scalar::<Postgres, i64>(sql::APPEND_AUDIT), e)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn append_audit_batch(&self, events: &[NewAuditEvent]) -> Result<(), StoreError> {
        let map = |e| BACKEND.map(e);
        let mut tx = self.pool.begin().await.map_err(map)?;
        for e in events {
            sql::bind_audit!(sqlx::query_scalar::<Postgres, i64>(sql::APPEND_AUDIT), e)
                .fetch_one(&mut *tx)
                .await
                .map_err(map)?;
        }
        tx.commit().await.map_err(map)
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let text = sql::list_audit_sql(q);
        sql::bind_audit_query!(sqlx::query_as::<Postgres, AuditRow>(AssertSqlSafe(text)), q)
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
        sqlx::query_as::<Postgres, KeyUsage>(sql::KEY_USAGE)
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
        sqlx::query_as::<Postgres, WrappedDekRow>(sql::DEK_ROWS_NOT_ON_KEY)
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
        let mut tx = self.pool.begin().await.map_err(map)?;
        // An error drops `tx`, which rolls back (and releases the row lock).
        apply_member_change(&mut tx, change).await?;
        tx.commit().await.map_err(map)
    }

    async fn acquire_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<CredentialRow>, StoreError> {
        // Concurrent acquirers queue on the row lock; each re-checks the WHERE clause against
        // the winner's committed row (READ COMMITTED re-evaluation), so only one matches.
        sqlx::query_as::<Postgres, CredentialRecord>(sql::ACQUIRE_REFRESH_LEASE)
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
        let map = |e| BACKEND.map(e);
        let mut tx = self.pool.begin().await.map_err(map)?;
        let updated = sql::bind_complete_refresh!(
            sqlx::query_as::<Postgres, CredentialRecord>(sql::COMPLETE_REFRESH),
            row,
            fence
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?;
        let Some(record) = updated else {
            tx.rollback().await.map_err(map)?;
            return Err(StoreError::LeaseLost);
        };
        notify_change(&mut tx, &row.id).await?;
        tx.commit().await.map_err(map)?;
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
        sqlx::query_scalar::<Postgres, String>(sql::DUE_FOR_REFRESH)
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
        // Sorted keys: concurrent batches lock rows in the same order and cannot deadlock.
        let merged = sql::merge_usage(batch);
        let map = |e| BACKEND.map(e);
        let mut tx = self.pool.begin().await.map_err(map)?;
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
        let recent = sqlx::query_as::<Postgres, (String, i64)>(sql::RECENT_WORKFLOWS)
            .bind(credential_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map)?;
        let total = sqlx::query_scalar::<Postgres, i64>(sql::COUNT_WORKFLOWS)
            .bind(credential_id)
            .fetch_one(&self.pool)
            .await
            .map_err(map)?;
        Ok((recent, total.unsigned_abs()))
    }

    async fn insert_connect_session(&self, s: &ConnectSessionRow) -> Result<(), StoreError> {
        sql::bind_connect_session!(sqlx::query::<Postgres>(sql::INSERT_CONNECT_SESSION), s)
            .execute(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))?;
        Ok(())
    }

    async fn get_connect_session(
        &self,
        state_hash: &str,
    ) -> Result<Option<ConnectSessionRow>, StoreError> {
        sqlx::query_as::<Postgres, ConnectSessionRow>(sql::GET_CONNECT_SESSION)
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
        self.changes.subscribe(&self.pool)
    }
}
