//! Persistence for the credential broker: one [`Store`] trait, two implementations
//! ([`SqliteStore`] for a single process, [`PgStore`] for replicas sharing PostgreSQL).
//!
//! The store is deliberately thin: it reads and writes rows, enforces uniqueness and optimistic
//! concurrency, and leaves every business rule to the domain. It never logs or reports bound
//! values, because some of them are secrets.

mod error;
mod model;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

pub use error::StoreError;
pub use model::{
    AuditRow, CredentialQuery, CredentialRow, KeyUsage, LeaseColumns, MemberRow, NewAuditEvent,
    SealedColumns,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Repository of credentials, their members and the audit trail.
///
/// Every backend passes the same conformance suite (`tests/e2e/store_conformance.rs`).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Applies pending migrations; running it again is a no-op.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts a credential (row_version must be 1) and its first members in ONE transaction.
    /// Duplicate id or an active twin (same workspace/provider/account_subject not
    /// DISCONNECTED) → [`StoreError::Duplicate`]. Every member must reference `row.id`.
    async fn insert_credential(
        &self,
        row: &CredentialRow,
        members: &[MemberRow],
    ) -> Result<(), StoreError>;

    /// Reads one credential by id.
    async fn get_credential(&self, id: &str) -> Result<Option<CredentialRow>, StoreError>;

    /// Finds the non-disconnected credential for (workspace, provider, account_subject).
    async fn find_credential_by_account(
        &self,
        workspace_id: &str,
        provider_id: &str,
        account_subject: &str,
    ) -> Result<Option<CredentialRow>, StoreError>;

    /// Lists a workspace's credentials ordered by id, one keyset page at a time.
    async fn list_credentials(&self, q: &CredentialQuery)
    -> Result<Vec<CredentialRow>, StoreError>;

    /// Optimistic write of every mutable column (everything except id, workspace_id,
    /// provider_id, created_by, created_at, lease columns and row_version) WHERE id = row.id
    /// AND row_version = expected_version; sets row_version = expected_version + 1 and returns
    /// the stored row. Missing id → [`StoreError::NotFound`]; version mismatch →
    /// [`StoreError::VersionConflict`]; becoming the active twin of another credential →
    /// [`StoreError::Duplicate`].
    async fn update_credential(
        &self,
        row: &CredentialRow,
        expected_version: i64,
    ) -> Result<CredentialRow, StoreError>;

    /// Lists a credential's members ordered by email.
    async fn list_members(&self, credential_id: &str) -> Result<Vec<MemberRow>, StoreError>;

    /// Reads one member.
    async fn get_member(
        &self,
        credential_id: &str,
        email: &str,
    ) -> Result<Option<MemberRow>, StoreError>;

    /// Inserts or replaces (every column) the member (credential_id, email).
    /// Unknown credential → [`StoreError::NotFound`].
    async fn upsert_member(&self, m: &MemberRow) -> Result<(), StoreError>;

    /// Removes a member; `false` when there was none.
    async fn delete_member(&self, credential_id: &str, email: &str) -> Result<bool, StoreError>;

    /// Appends an audit event and returns its id (increasing).
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError>;

    /// Reads audit events with id > `after_id`, ordered by id, optionally for one credential.
    async fn list_audit(
        &self,
        credential_id: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError>;

    /// Counts sealed credentials per key-encryption key version, ordered by key id and
    /// version (startup checks and key rotation).
    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError>;
}

/// Opens a store from a URL: `sqlite://path/to/file.db` or `sqlite:path` (creates the file and
/// parent dir if missing; WAL; busy_timeout 5 s; foreign keys on) or `postgres://...` /
/// `postgresql://...` (pool of `max_connections`). Does NOT migrate.
pub async fn open(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, max_connections).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, max_connections).await?))
    } else {
        // The URL itself is not echoed: it may carry a password.
        Err(StoreError::Database(
            "unsupported database url: expected sqlite: or postgres://".into(),
        ))
    }
}
