//! The PostgreSQL store: shared by every replica.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres};

use crate::Store;
use crate::error::{Backend, StoreError};
use crate::model::{AuditRow, CredentialQuery, CredentialRow, KeyUsage, MemberRow, NewAuditEvent};
use crate::sql::{self, CredentialRecord};

const BACKEND: Backend = Backend::Postgres;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// [`Store`] on a PostgreSQL database, through a connection pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
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
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool, for tests and tools that inspect raw rows.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn credential(record: CredentialRecord) -> Result<CredentialRow, StoreError> {
    CredentialRow::try_from(record)
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

    async fn update_credential(
        &self,
        row: &CredentialRow,
        expected_version: i64,
    ) -> Result<CredentialRow, StoreError> {
        let updated = sql::bind_update_credential!(
            sqlx::query_as::<Postgres, CredentialRecord>(sql::UPDATE_CREDENTIAL),
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

    async fn upsert_member(&self, m: &MemberRow) -> Result<(), StoreError> {
        sql::bind_member!(sqlx::query::<Postgres>(sql::UPSERT_MEMBER), m)
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
        sql::bind_audit!(sqlx::query_scalar::<Postgres, i64>(sql::APPEND_AUDIT), e)
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
            Some(id) => sqlx::query_as::<Postgres, AuditRow>(sql::LIST_AUDIT_FOR_CREDENTIAL)
                .bind(id)
                .bind(after_id),
            None => sqlx::query_as::<Postgres, AuditRow>(sql::LIST_AUDIT_ALL).bind(after_id),
        };
        query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        sqlx::query_as::<Postgres, KeyUsage>(sql::KEY_USAGE)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| BACKEND.map(e))
    }
}
