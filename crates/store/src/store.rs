//! The one SQL implementation of [`Store`], for every [`Backend`]: each query and each
//! transaction is written here once; the backend supplies only what really differs.
//!
//! Every call runs in a `db <operation>` client span when it happens inside a traced
//! operation. Span fields are ids and names only, never a bound value (some are secrets).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::query_builder::Separated;
use sqlx::{Encode, Executor, FromRow, IntoArguments, Pool, QueryBuilder, Transaction, Type};
use tokio::sync::broadcast;
use tracing::Instrument;
use tracing::field::Empty;

use crate::Store;
use crate::backend::Backend;
use crate::error::StoreError;
use crate::model::{
    AuditQuery, AuditRow, ChangeEvent, ClaimedDelivery, ConnectSessionRow, CredentialEventRow,
    CredentialQuery, CredentialRow, DeliveryAttempt, DeliveryRow, EventQuery, KeyUsage,
    MemberChange, MemberRow, NewAuditEvent, NewCredentialEvent, OAuthAppRow, OAuthAppSecretRow,
    RefreshFailure, RefreshIntent, RunGrantRow, SecretDekRow, SecretKeyUsage, SecretKind,
    StatusQuery, UsageRecord, WebhookEndpointRow, WebhookSecretRow, WorkspaceProviderRow,
    WrappedDekRow, run_grant_change_id,
};
use crate::sql::{self, CredentialRecord, audit_columns, credential_columns};

/// [`Store`] on a SQL database: [`SqliteStore`](crate::SqliteStore) or
/// [`PgStore`](crate::PgStore).
///
/// Clones share the pool and the change fan-out. On SQLite changes are announced in-process
/// after commit (one process only); on PostgreSQL with `pg_notify` at commit, and a listener
/// (one extra connection, outside the pool) runs from the first
/// [`Store::subscribe_changes`] until the last clone is dropped.
pub struct SqlStore<DB: Backend> {
    pool: Pool<DB>,
    changes: Arc<DB::Changes>,
}

impl<DB: Backend> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            changes: Arc::clone(&self.changes),
        }
    }
}

impl<DB: Backend> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &DB::BACKEND)
            .field("pool", &self.pool)
            .field("changes", &self.changes)
            .finish()
    }
}

impl<DB: Backend> SqlStore<DB> {
    /// Opens a pool on `url` (see [`crate::open`] for the URL forms and options) and checks
    /// one connection. Does NOT migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Ok(Self::from_pool(DB::connect(url, max_connections).await?))
    }

    /// Wraps an existing pool (SQLite: its connections must have foreign keys on).
    pub fn from_pool(pool: Pool<DB>) -> Self {
        Self {
            pool,
            changes: Arc::new(DB::changes()),
        }
    }

    /// The underlying pool, for tests and tools that inspect raw rows.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Runs `call` in a `db <operation>` client span, recording a failure on it.
    async fn traced<T>(
        &self,
        operation: &'static str,
        credential_id: Option<&str>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Background upkeep (health pings, usage flushes, scans) would be a root trace every
        // few seconds: database spans only exist inside a traced operation.
        if tracing::Span::current().is_none() {
            return call.await;
        }
        let span = tracing::info_span!(
            "db",
            otel.name = %format_args!("db.{operation}"),
            otel.kind = "client",
            db.system = DB::DB_SYSTEM,
            db.operation = operation,
            credential_id = credential_id,
            otel.status_code = Empty,
            error = Empty,
        );
        let result = call.instrument(span.clone()).await;
        if let Err(e) = &result {
            // StoreError messages never contain bound values.
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(e));
        }
        result
    }
}

/// What a conditional credential write that matched no row means.
enum Unmatched {
    /// The row is missing or its version is no longer the expected one.
    StaleVersion(i64),
    /// The refresh lease is no longer held with this fence.
    LeaseLost,
}

fn map<DB: Backend>(e: sqlx::Error) -> StoreError {
    DB::DIALECT.map(e)
}

/// "Now" for lease statements: the database clock, or the caller's bound at `placeholder`.
fn db_now<DB: Backend>(placeholder: &'static str) -> &'static str {
    DB::DB_NOW_MS.unwrap_or(placeholder)
}

// The where clauses list what the queries bind and decode: Rust does not carry such bounds
// with the `Backend` trait, so each generic impl states the ones it uses.
impl<DB> SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> (i64,): FromRow<'t, DB::Row>,
{
    /// The row `select` finds on the pool, if any.
    async fn optional<O>(
        &self,
        select: QueryAs<'_, DB, O, DB::Arguments>,
    ) -> Result<Option<O>, StoreError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, DB::Row>,
    {
        select.fetch_optional(&self.pool).await.map_err(map::<DB>)
    }

    /// Every row `select` finds on the pool.
    async fn all<O>(&self, select: QueryAs<'_, DB, O, DB::Arguments>) -> Result<Vec<O>, StoreError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, DB::Row>,
    {
        select.fetch_all(&self.pool).await.map_err(map::<DB>)
    }

    /// The single column of every row `select` finds on the pool.
    async fn column<O>(
        &self,
        select: QueryScalar<'_, DB, O, DB::Arguments>,
    ) -> Result<Vec<O>, StoreError>
    where
        O: Send + Unpin,
        (O,): for<'r> FromRow<'r, DB::Row>,
    {
        select.fetch_all(&self.pool).await.map_err(map::<DB>)
    }

    /// The credential `select` (or `UPDATE ... RETURNING`) finds on the pool, if any.
    async fn credential(
        &self,
        select: QueryAs<'_, DB, CredentialRecord, DB::Arguments>,
    ) -> Result<Option<CredentialRow>, StoreError>
    where
        for<'t> CredentialRecord: FromRow<'t, DB::Row>,
    {
        self.optional(select)
            .await?
            .map(CredentialRow::try_from)
            .transpose()
    }

    /// Every credential `select` (or `UPDATE ... RETURNING`) finds on the pool.
    async fn credentials(
        &self,
        select: QueryAs<'_, DB, CredentialRecord, DB::Arguments>,
    ) -> Result<Vec<CredentialRow>, StoreError>
    where
        for<'t> CredentialRecord: FromRow<'t, DB::Row>,
    {
        let records = self.all(select).await?;
        records.into_iter().map(CredentialRow::try_from).collect()
    }

    /// Runs `statement` on the pool; how many rows it changed.
    async fn execute(&self, statement: Query<'_, DB, DB::Arguments>) -> Result<u64, StoreError> {
        let done = statement.execute(&self.pool).await.map_err(map::<DB>)?;
        Ok(DB::rows_affected(&done))
    }

    /// Runs `statement` on `conn` (in a transaction); how many rows it changed.
    async fn execute_on(
        conn: &mut DB::Connection,
        statement: Query<'_, DB, DB::Arguments>,
    ) -> Result<u64, StoreError> {
        let done = statement.execute(conn).await.map_err(map::<DB>)?;
        Ok(DB::rows_affected(&done))
    }

    /// Runs `statement` on the pool, for its effect only.
    async fn run(&self, statement: Query<'_, DB, DB::Arguments>) -> Result<(), StoreError> {
        self.execute(statement).await.map(drop)
    }

    /// Runs `statement` in a write transaction: when it changed a row, commits announcing the
    /// change of `credential_id` with `events`, else rolls back. Whether it changed a row.
    async fn write_announcing(
        &self,
        credential_id: &str,
        statement: Query<'_, DB, DB::Arguments>,
        events: &[NewCredentialEvent],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::execute_on(&mut tx, statement).await? == 0 {
            tx.rollback().await.map_err(map::<DB>)?;
            return Ok(false);
        }
        self.commit_announcing(tx, credential_id, events).await?;
        Ok(true)
    }

    /// The row a versioned `UPDATE ... RETURNING` wrote; none written: a version conflict
    /// when `exists` finds the row, else [`StoreError::NotFound`].
    async fn update_versioned<O>(
        &self,
        update: QueryAs<'_, DB, O, DB::Arguments>,
        expected: i64,
        exists: impl Future<Output = Result<bool, StoreError>>,
    ) -> Result<O, StoreError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, DB::Row>,
    {
        match self.optional(update).await? {
            Some(row) => Ok(row),
            None if exists.await? => Err(StoreError::VersionConflict { expected }),
            None => Err(StoreError::NotFound),
        }
    }

    /// Runs `statement` on the pool; whether it changed any row.
    async fn changed(&self, statement: Query<'_, DB, DB::Arguments>) -> Result<bool, StoreError> {
        Ok(self.execute(statement).await? > 0)
    }

    /// Opens a write transaction (SQLite: takes the database write lock up front).
    async fn begin_write(&self) -> Result<Transaction<'static, DB>, StoreError> {
        match DB::BEGIN_WRITE {
            Some(statement) => self.pool.begin_with(statement).await,
            None => self.pool.begin().await,
        }
        .map_err(map::<DB>)
    }

    /// Commits a transaction that changed `credential_id` and announces the change: inside
    /// the transaction where the database delivers it at commit, after commit otherwise.
    async fn commit_announcing(
        &self,
        mut tx: Transaction<'static, DB>,
        credential_id: &str,
        events: &[NewCredentialEvent],
    ) -> Result<(), StoreError> {
        Self::insert_events(&mut tx, events).await?;
        if let Some(notify) = DB::NOTIFY_CHANGE {
            Self::execute_on(&mut tx, sqlx::query(notify).bind(credential_id)).await?;
        }
        tx.commit().await.map_err(map::<DB>)?;
        DB::announce_committed(&self.changes, credential_id);
        Ok(())
    }

    /// Appends lifecycle events inside the caller's write transaction. Where concurrent
    /// transactions could commit ids out of order (PostgreSQL), event writers are serialized
    /// first, so a reader resuming after the last id it saw never skips a later commit.
    async fn insert_events(
        conn: &mut DB::Connection,
        events: &[NewCredentialEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if let Some(lock) = DB::LOCK_EVENTS {
            Self::execute_on(conn, sqlx::query(lock)).await?;
        }
        Self::insert_rows(conn, sql::INSERT_CREDENTIAL_EVENTS, events, push_event).await?;
        // Each event's webhook deliveries are born with it: none is lost between the two. (A
        // change writes a handful of events: one statement stays far below the bind limits.)
        let mut fan_out = QueryBuilder::<DB>::new(sql::FAN_OUT_DELIVERIES_HEAD);
        push_list(&mut fan_out, events.iter().map(|e| e.event_id.as_str()));
        Self::execute_on(conn, fan_out.build()).await.map(drop)
    }

    /// Inserts `rows` after `head` (`INSERT INTO … (columns) `), `push` writing one row of the
    /// `VALUES` list, in as few statements as the bind limits allow.
    async fn insert_rows<T>(
        conn: &mut DB::Connection,
        head: &'static str,
        rows: &[T],
        push: fn(Separated<'_, DB, &'static str>, &T),
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(sql::ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<DB>::new(head);
            insert.push_values(chunk, push);
            Self::execute_on(conn, insert.build()).await?;
        }
        Ok(())
    }

    /// Runs a conditional credential `UPDATE ... RETURNING` in a write transaction: commits
    /// (announcing the change) when it matched, else rolls back and answers what `unmatched`
    /// says.
    async fn write_credential(
        &self,
        id: &str,
        update: QueryAs<'_, DB, CredentialRecord, DB::Arguments>,
        unmatched: Unmatched,
        events: &[NewCredentialEvent],
    ) -> Result<CredentialRow, StoreError>
    where
        for<'t> CredentialRecord: FromRow<'t, DB::Row>,
    {
        let mut tx = self.begin_write().await?;
        let updated = update.fetch_optional(&mut *tx).await.map_err(map::<DB>)?;
        if let Some(record) = updated {
            self.commit_announcing(tx, id, events).await?;
            return CredentialRow::try_from(record);
        }
        let error = match unmatched {
            Unmatched::LeaseLost => StoreError::LeaseLost,
            Unmatched::StaleVersion(expected) => {
                // Tell a missing row from a stale version. Credentials are never deleted, so an
                // existing row here means the version moved on.
                let exists = sqlx::query(sql::CREDENTIAL_EXISTS)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map::<DB>)?;
                match exists {
                    Some(_) => StoreError::VersionConflict { expected },
                    None => StoreError::NotFound,
                }
            }
        };
        tx.rollback().await.map_err(map::<DB>)?;
        Err(error)
    }

    /// Inserts `members` in as few statements as the bind limits allow.
    async fn insert_members(
        conn: &mut DB::Connection,
        members: &[MemberRow],
    ) -> Result<(), StoreError> {
        Self::insert_rows(conn, sql::INSERT_MEMBERS, members, push_member).await
    }

    /// The body of `change_member`, inside the caller's write transaction.
    async fn apply_member_change(
        conn: &mut DB::Connection,
        change: &MemberChange,
    ) -> Result<(), StoreError> {
        let credential_id = change.credential_id();
        let locked = sqlx::query(DB::LOCK_CREDENTIAL)
            .bind(credential_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map::<DB>)?;
        if locked.is_none() {
            return Err(StoreError::NotFound);
        }
        let admins_before = Self::count_active_admins(conn, credential_id).await?;
        match change {
            MemberChange::Upsert(m) | MemberChange::Add(m) => {
                let mut insert = QueryBuilder::<DB>::new(sql::INSERT_MEMBERS);
                insert.push_values([m], push_member);
                if matches!(change, MemberChange::Upsert(_)) {
                    insert.push(sql::UPSERT_MEMBER_TAIL);
                }
                Self::execute_on(conn, insert.build()).await?;
            }
            MemberChange::Accept {
                credential_id,
                email,
                user_id,
                updated_at,
            } => {
                let update = (sql::ACCEPT_MEMBER, user_id.as_str(), *updated_at);
                Self::update_member(conn, credential_id, email, update).await?;
            }
            MemberChange::SetRole {
                credential_id,
                email,
                role,
                updated_at,
            } => {
                let update = (sql::SET_MEMBER_ROLE, role.as_str(), *updated_at);
                Self::update_member(conn, credential_id, email, update).await?;
            }
            MemberChange::Delete {
                credential_id,
                email,
            } => {
                let delete = sqlx::query(sql::DELETE_MEMBER)
                    .bind(credential_id.as_str())
                    .bind(email.as_str());
                if Self::execute_on(conn, delete).await? == 0 {
                    return Err(StoreError::NotFound);
                }
            }
        }
        let admins_after = Self::count_active_admins(conn, credential_id).await?;
        sql::check_last_admin(admins_before, admins_after)
    }

    /// Runs one conditional member UPDATE (bind: credential id, email, `value`, `at`); no row
    /// matched → [`StoreError::NotFound`].
    async fn update_member(
        conn: &mut DB::Connection,
        credential_id: &str,
        email: &str,
        (statement, value, at): (&'static str, &str, i64),
    ) -> Result<(), StoreError> {
        let update = sqlx::query(statement)
            .bind(credential_id)
            .bind(email)
            .bind(value)
            .bind(at);
        if Self::execute_on(conn, update).await? == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn count_active_admins(
        conn: &mut DB::Connection,
        credential_id: &str,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar::<DB, i64>(sql::COUNT_ACTIVE_ADMINS)
            .bind(credential_id)
            .fetch_one(conn)
            .await
            .map_err(map::<DB>)
    }

    /// Finishes a credential `SELECT` with keyset paging (ids after `after_id`, in id order,
    /// at most `limit`) and reads the page.
    async fn credential_page(
        &self,
        mut select: QueryBuilder<DB>,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CredentialRow>, StoreError>
    where
        for<'t> CredentialRecord: FromRow<'t, DB::Row>,
    {
        if let Some(after_id) = after_id {
            select.push(" AND id > ").push_bind(after_id);
        }
        select
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit));
        self.credentials(select.build_query_as()).await
    }

    /// Deletes with `batch` (bind: older_than, batch size) until a batch deletes fewer rows
    /// than its size, so no single statement holds locks on the whole backlog; traced as
    /// `operation`.
    async fn prune(
        &self,
        operation: &'static str,
        batch: &'static str,
        older_than: i64,
    ) -> Result<u64, StoreError> {
        self.traced(operation, None, self.prune_batches(batch, older_than))
            .await
    }

    async fn prune_batches(&self, batch: &'static str, older_than: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let delete = sqlx::query(batch)
                .bind(older_than)
                .bind(sql::PRUNE_BATCH_SIZE);
            let deleted = self.execute(delete).await?;
            total += deleted;
            if deleted < sql::PRUNE_BATCH_SIZE.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

/// One `credential_members` row of a `VALUES` list, in [`sql::INSERT_MEMBERS`] column order.
fn push_member<DB>(mut row: Separated<'_, DB, &'static str>, m: &MemberRow)
where
    DB: Backend,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    row.push_bind(m.credential_id.as_str())
        .push_bind(m.email.as_str())
        .push_bind(m.user_id.as_deref())
        .push_bind(m.role.as_str())
        .push_bind(m.state.as_str())
        .push_bind(m.invited_by.as_str())
        .push_bind(m.created_at)
        .push_bind(m.updated_at);
}

/// One `audit_events` row of a `VALUES` list, in [`sql::INSERT_AUDIT_EVENTS`] column order.
fn push_audit<DB>(mut row: Separated<'_, DB, &'static str>, e: &NewAuditEvent)
where
    DB: Backend,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    row.push_bind(e.at)
        .push_bind(e.service.as_str())
        .push_bind(e.actor.as_deref())
        .push_bind(e.action.as_str())
        .push_bind(e.credential_id.as_deref())
        .push_bind(e.outcome.as_str())
        .push_bind(e.detail.as_deref());
}

/// Appends `clause` and its bound value for each filter that is set (`clause` ends with the
/// operator, e.g. `" AND actor = "`).
fn push_filters<'t, DB, T>(
    select: &mut QueryBuilder<DB>,
    filters: impl IntoIterator<Item = (&'static str, Option<T>)>,
) where
    DB: Backend,
    T: Encode<'t, DB> + Type<DB>,
{
    for (clause, value) in filters {
        if let Some(value) = value {
            select.push(clause).push_bind(value);
        }
    }
}

/// Appends `(v1, v2, …)`, each value bound.
fn push_list<'t, DB, T>(query: &mut QueryBuilder<DB>, values: impl IntoIterator<Item = T>)
where
    DB: Backend,
    T: Encode<'t, DB> + Type<DB> + 't,
{
    query.push("(");
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    query.push(")");
}

/// One `credential_events` row of a `VALUES` list, in [`sql::INSERT_CREDENTIAL_EVENTS`] order.
fn push_event<DB>(mut row: Separated<'_, DB, &'static str>, e: &NewCredentialEvent)
where
    DB: Backend,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    row.push_bind(e.event_id.as_str())
        .push_bind(e.at)
        .push_bind(e.workspace_id.as_str())
        .push_bind(e.credential_id.as_deref())
        .push_bind(e.kind.as_str())
        .push_bind(e.actor.as_deref())
        .push_bind(e.cause.as_deref())
        .push_bind(e.detail.as_deref());
}

/// `SELECT` of every credential column, the caller appends the WHERE clause.
fn select_credentials<DB: Backend>(first_condition: &'static str) -> QueryBuilder<DB> {
    let mut select = QueryBuilder::new(concat!(
        "SELECT ",
        credential_columns!(),
        " FROM credentials WHERE "
    ));
    select.push(first_condition);
    select
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t [u8]>: Encode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
    for<'t> (i64,): FromRow<'t, DB::Row>,
    for<'t> (String,): FromRow<'t, DB::Row>,
    for<'t> (String, i64): FromRow<'t, DB::Row>,
    for<'t> CredentialRecord: FromRow<'t, DB::Row>,
    for<'t> MemberRow: FromRow<'t, DB::Row>,
    for<'t> AuditRow: FromRow<'t, DB::Row>,
    for<'t> KeyUsage: FromRow<'t, DB::Row>,
    for<'t> WrappedDekRow: FromRow<'t, DB::Row>,
    for<'t> SecretDekRow: FromRow<'t, DB::Row>,
    for<'t> SecretKeyUsage: FromRow<'t, DB::Row>,
    for<'t> ConnectSessionRow: FromRow<'t, DB::Row>,
    for<'t> RefreshIntent: FromRow<'t, DB::Row>,
    for<'t> RunGrantRow: FromRow<'t, DB::Row>,
    for<'t> OAuthAppRow: FromRow<'t, DB::Row>,
    for<'t> OAuthAppSecretRow: FromRow<'t, DB::Row>,
    for<'t> WorkspaceProviderRow: FromRow<'t, DB::Row>,
    for<'t> (Option<String>, Option<i64>): FromRow<'t, DB::Row>,
    for<'t> CredentialEventRow: FromRow<'t, DB::Row>,
    for<'t> sql::ClaimedRecord: FromRow<'t, DB::Row>,
    for<'t> DeliveryRow: FromRow<'t, DB::Row>,
    for<'t> WebhookEndpointRow: FromRow<'t, DB::Row>,
    for<'t> WebhookSecretRow: FromRow<'t, DB::Row>,
    for<'t> (Option<i64>,): FromRow<'t, DB::Row>,
{
    fn backend(&self) -> &'static str {
        DB::BACKEND
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.traced("migrate", None, async {
            DB::MIGRATOR
                .run(&self.pool)
                .await
                .map_err(|e| StoreError::Migration(e.to_string()))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.traced("ping", None, self.run(sqlx::query("SELECT 1")))
            .await
    }

    async fn insert_credential(
        &self,
        row: &CredentialRow,
        members: &[MemberRow],
    ) -> Result<(), StoreError> {
        self.insert_credential_with_events(row, members, &[]).await
    }

    async fn insert_credential_with_events(
        &self,
        row: &CredentialRow,
        members: &[MemberRow],
        events: &[NewCredentialEvent],
    ) -> Result<(), StoreError> {
        self.traced("insert_credential", Some(&row.id), async {
            sql::check_new_credential(row, members)?;
            let mut tx = self.begin_write().await?;
            let insert = sql::bind_insert_credential!(sqlx::query(sql::INSERT_CREDENTIAL), row);
            Self::execute_on(&mut tx, insert).await?;
            Self::insert_members(&mut tx, members).await?;
            self.commit_announcing(tx, &row.id, events).await
        })
        .await
    }

    async fn get_credential(&self, id: &str) -> Result<Option<CredentialRow>, StoreError> {
        let select = sqlx::query_as(sql::GET_CREDENTIAL).bind(id);
        self.traced("get_credential", Some(id), self.credential(select))
            .await
    }

    async fn find_credential_by_account(
        &self,
        workspace_id: &str,
        provider_id: &str,
        account_subject: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        let select = sqlx::query_as(sql::FIND_CREDENTIAL_BY_ACCOUNT)
            .bind(workspace_id)
            .bind(provider_id)
            .bind(account_subject);
        self.traced("find_credential_by_account", None, self.credential(select))
            .await
    }

    async fn live_credentials_of_account(
        &self,
        provider_id: &str,
        account_subject: &str,
    ) -> Result<Vec<String>, StoreError> {
        let select = sqlx::query_scalar(sql::LIVE_CREDENTIALS_OF_ACCOUNT)
            .bind(provider_id)
            .bind(account_subject);
        self.traced("live_credentials_of_account", None, self.column(select))
            .await
    }

    async fn list_credentials(
        &self,
        q: &CredentialQuery,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let mut select = select_credentials::<DB>("workspace_id = ");
        select.push_bind(q.workspace_id.as_str());
        push_filters(
            &mut select,
            [(" AND provider_id = ", q.provider_id.as_deref())],
        );
        if !q.include_disconnected {
            select.push(" AND status <> 'DISCONNECTED'");
        }
        push_filters(&mut select, [(" AND health = ", q.health.as_deref())]);
        let page = self.credential_page(select, q.after_id.as_deref(), q.limit);
        self.traced("list_credentials", None, page).await
    }

    async fn list_credentials_by_status(
        &self,
        q: &StatusQuery,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let mut select = select_credentials::<DB>("status = ");
        select.push_bind(q.status.as_str());
        push_filters(
            &mut select,
            [
                (" AND workspace_id = ", q.workspace_id.as_deref()),
                (" AND health = ", q.health.as_deref()),
            ],
        );
        let page = self.credential_page(select, q.after_id.as_deref(), q.limit);
        self.traced("list_credentials_by_status", None, page).await
    }

    async fn count_credentials_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let select = sqlx::query_as(sql::COUNT_CREDENTIALS_BY_STATUS);
        self.traced("count_credentials_by_status", None, self.all(select))
            .await
    }

    async fn update_credential(
        &self,
        row: &CredentialRow,
        expected_version: i64,
    ) -> Result<CredentialRow, StoreError> {
        self.update_credential_with_events(row, expected_version, &[])
            .await
    }

    async fn update_credential_with_events(
        &self,
        row: &CredentialRow,
        expected_version: i64,
        events: &[NewCredentialEvent],
    ) -> Result<CredentialRow, StoreError> {
        let update = sql::bind_update_credential!(
            sqlx::query_as(sql::UPDATE_CREDENTIAL),
            row,
            expected_version
        );
        let unmatched = Unmatched::StaleVersion(expected_version);
        let write = self.write_credential(&row.id, update, unmatched, events);
        self.traced("update_credential", Some(&row.id), write).await
    }

    async fn list_members(&self, credential_id: &str) -> Result<Vec<MemberRow>, StoreError> {
        let select = sqlx::query_as(sql::LIST_MEMBERS).bind(credential_id);
        self.traced("list_members", Some(credential_id), self.all(select))
            .await
    }

    async fn get_member(
        &self,
        credential_id: &str,
        email: &str,
    ) -> Result<Option<MemberRow>, StoreError> {
        let select = sqlx::query_as(sql::GET_MEMBER)
            .bind(credential_id)
            .bind(email);
        self.traced("get_member", Some(credential_id), self.optional(select))
            .await
    }

    async fn change_member(&self, change: &MemberChange) -> Result<(), StoreError> {
        self.change_member_with_events(change, &[]).await
    }

    async fn change_member_with_events(
        &self,
        change: &MemberChange,
        events: &[NewCredentialEvent],
    ) -> Result<(), StoreError> {
        let credential_id = change.credential_id();
        self.traced("change_member", Some(credential_id), async {
            let mut tx = self.begin_write().await?;
            // An error drops `tx`, which rolls back (and releases any row lock).
            Self::apply_member_change(&mut tx, change).await?;
            self.commit_announcing(tx, credential_id, events).await
        })
        .await
    }

    async fn record_refresh_failure(
        &self,
        id: &str,
        failure: &RefreshFailure,
        events: &[NewCredentialEvent],
    ) -> Result<Option<CredentialRow>, StoreError> {
        self.traced("record_refresh_failure", Some(id), async {
            let mut tx = self.begin_write().await?;
            let updated = sqlx::query_as::<DB, CredentialRecord>(sql::RECORD_REFRESH_FAILURE)
                .bind(id)
                .bind(failure.health.as_str())
                .bind(failure.cause.as_str())
                .bind(failure.error_code.as_deref())
                .bind(failure.at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map::<DB>)?;
            let Some(record) = updated else {
                tx.rollback().await.map_err(map::<DB>)?;
                return Ok(None);
            };
            self.commit_announcing(tx, id, events).await?;
            CredentialRow::try_from(record).map(Some)
        })
        .await
    }

    async fn grants_ending(
        &self,
        horizon: i64,
        limit: u32,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let select = sqlx::query_as(sql::GRANTS_ENDING)
            .bind(horizon)
            .bind(i64::from(limit));
        self.traced("grants_ending", None, self.credentials(select))
            .await
    }

    async fn mark_health(
        &self,
        id: &str,
        health: &str,
        cause: &str,
        at: i64,
        events: &[NewCredentialEvent],
    ) -> Result<bool, StoreError> {
        let update = sqlx::query(sql::MARK_HEALTH)
            .bind(id)
            .bind(health)
            .bind(cause)
            .bind(at);
        let write = self.write_announcing(id, update, events);
        self.traced("mark_health", Some(id), write).await
    }

    async fn list_credential_events(
        &self,
        q: &EventQuery,
    ) -> Result<Vec<CredentialEventRow>, StoreError> {
        self.traced("list_credential_events", None, async {
            let mut select = QueryBuilder::<DB>::new(sql::SELECT_CREDENTIAL_EVENTS);
            select.push_bind(q.after_id);
            push_filters(
                &mut select,
                [
                    (" AND workspace_id = ", q.workspace_id.as_deref()),
                    (" AND credential_id = ", q.credential_id.as_deref()),
                ],
            );
            if !q.kinds.is_empty() {
                select.push(" AND kind IN ");
                push_list(&mut select, q.kinds.iter().map(String::as_str));
            }
            if let Some((user_id, email)) = &q.member {
                select
                    .push(sql::EVENTS_OF_MEMBER_HEAD)
                    .push_bind(user_id.as_str())
                    .push(" OR email = ")
                    .push_bind(email.as_str())
                    .push("))");
            }
            select
                .push(" ORDER BY id LIMIT ")
                .push_bind(i64::from(q.limit));
            self.all(select.build_query_as()).await
        })
        .await
    }

    async fn upsert_webhook_endpoint(
        &self,
        id: &str,
        workspace_id: &str,
        url: &str,
        now: i64,
        event_types: Option<&str>,
    ) -> Result<(), StoreError> {
        let statement = sqlx::query(sql::UPSERT_WEBHOOK_ENDPOINT)
            .bind(id)
            .bind(workspace_id)
            .bind(url)
            .bind(now)
            .bind(event_types);
        self.traced("upsert_webhook_endpoint", None, self.run(statement))
            .await
    }

    async fn webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpointRow>, StoreError> {
        let select = sqlx::query_as(sql::WEBHOOK_ENDPOINT).bind(id);
        self.traced("webhook_endpoint", None, self.optional(select))
            .await
    }

    async fn list_webhook_endpoints(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<WebhookEndpointRow>, StoreError> {
        let select = sqlx::query_as(sql::LIST_WEBHOOK_ENDPOINTS).bind(workspace_id);
        self.traced("list_webhook_endpoints", None, self.all(select))
            .await
    }

    async fn insert_webhook_endpoint(
        &self,
        row: &WebhookEndpointRow,
        secret: &WebhookSecretRow,
    ) -> Result<(), StoreError> {
        self.traced("insert_webhook_endpoint", None, async {
            let mut tx = self.begin_write().await?;
            let endpoint = sqlx::query::<DB>(sql::INSERT_WEBHOOK_ENDPOINT)
                .bind(row.id.as_str())
                .bind(row.workspace_id.as_str())
                .bind(row.url.as_str())
                .bind(row.updated_at)
                .bind(row.event_types.as_deref())
                .bind(row.description.as_str());
            Self::execute_on(&mut tx, endpoint).await?;
            Self::execute_on(&mut tx, bind_webhook_secret::<DB>(secret)).await?;
            tx.commit().await.map_err(map::<DB>)
        })
        .await
    }

    async fn update_webhook_endpoint(
        &self,
        row: &WebhookEndpointRow,
        reset_failures: bool,
    ) -> Result<Option<WebhookEndpointRow>, StoreError> {
        let update = sqlx::query_as(sql::UPDATE_WEBHOOK_ENDPOINT)
            .bind(row.id.as_str())
            .bind(row.url.as_str())
            .bind(row.event_types.as_deref())
            .bind(row.description.as_str())
            .bind(row.updated_at)
            .bind(reset_failures);
        self.traced("update_webhook_endpoint", None, self.optional(update))
            .await
    }

    async fn delete_webhook_endpoint(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        self.traced("delete_webhook_endpoint", None, async {
            let retire = sqlx::query(sql::RETIRE_WEBHOOK_ENDPOINT).bind(id).bind(now);
            if !self.changed(retire).await? {
                return Ok(false);
            }
            self.changed(sqlx::query(sql::DELETE_WEBHOOK_ENDPOINT).bind(id))
                .await
        })
        .await
    }

    async fn insert_webhook_secret(&self, secret: &WebhookSecretRow) -> Result<(), StoreError> {
        let statement = bind_webhook_secret::<DB>(secret);
        self.traced("insert_webhook_secret", None, self.execute(statement))
            .await
            .map(drop)
    }

    async fn list_webhook_secrets(
        &self,
        endpoint_id: &str,
    ) -> Result<Vec<WebhookSecretRow>, StoreError> {
        let select = sqlx::query_as(sql::LIST_WEBHOOK_SECRETS).bind(endpoint_id);
        self.traced("list_webhook_secrets", None, self.all(select))
            .await
    }

    async fn delete_webhook_secret(
        &self,
        endpoint_id: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        let statement = sqlx::query(sql::DELETE_WEBHOOK_SECRET)
            .bind(endpoint_id)
            .bind(version);
        self.traced("delete_webhook_secret", None, self.changed(statement))
            .await
    }

    async fn claim_webhook_deliveries(
        &self,
        holder: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.traced("claim_webhook_deliveries", None, async {
            let statement = sql::claim_webhook_deliveries(DB::SKIP_LOCKED);
            sqlx::query::<DB>(sqlx::AssertSqlSafe(statement))
                .bind(holder)
                .bind(now)
                .bind(lease_ms)
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await
                .map_err(map::<DB>)?;
            let claimed = sqlx::query_as::<DB, sql::ClaimedRecord>(sql::CLAIMED_DELIVERIES)
                .bind(holder)
                .fetch_all(&self.pool)
                .await
                .map_err(map::<DB>)?;
            Ok(claimed
                .into_iter()
                .map(|r| ClaimedDelivery {
                    id: r.delivery_id,
                    endpoint_id: r.endpoint_id,
                    attempts: r.attempts,
                    event: r.event,
                })
                .collect())
        })
        .await
    }

    async fn finish_webhook_delivery(&self, a: &DeliveryAttempt) -> Result<bool, StoreError> {
        self.traced("finish_webhook_delivery", None, async {
            let mut tx = self.begin_write().await?;
            let attempt = if a.delivered {
                sqlx::query(sql::DELIVERY_SUCCEEDED)
                    .bind(a.id)
                    .bind(a.holder.as_str())
                    .bind(a.at)
                    .bind(a.status)
            } else {
                sqlx::query(sql::DELIVERY_FAILED)
                    .bind(a.id)
                    .bind(a.holder.as_str())
                    .bind(a.next_attempt_at)
                    .bind(a.status)
                    .bind(a.error.as_deref())
            };
            if Self::execute_on(&mut tx, attempt).await? == 0 {
                // The claim lapsed and another replica took the delivery: its answer counts.
                tx.rollback().await.map_err(map::<DB>)?;
                return Ok(false);
            }
            let endpoint = if a.delivered {
                sqlx::query(sql::ENDPOINT_SUCCEEDED).bind(a.endpoint_id.as_str())
            } else {
                sqlx::query(sql::ENDPOINT_FAILED)
                    .bind(a.endpoint_id.as_str())
                    .bind(a.at)
            };
            Self::execute_on(&mut tx, endpoint).await?;
            let disabled = if a.delivered {
                false
            } else {
                let disable = sqlx::query(sql::DISABLE_FAILING_ENDPOINT)
                    .bind(a.endpoint_id.as_str())
                    .bind(a.at)
                    .bind(a.disable_failing_since);
                Self::execute_on(&mut tx, disable).await? > 0
            };
            match (&a.disabled_event, disabled) {
                // The event commits with the disabling: watchers and the other endpoints of
                // the workspace learn of it exactly once. No credential changed.
                (Some(e), true) => {
                    self.commit_announcing(tx, "", std::slice::from_ref(e))
                        .await?
                }
                _ => tx.commit().await.map_err(map::<DB>)?,
            }
            Ok(disabled)
        })
        .await
    }

    async fn list_webhook_deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
        after_id: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let select = sqlx::query_as::<DB, DeliveryRow>(sql::LIST_WEBHOOK_DELIVERIES)
            .bind(endpoint_id)
            .bind(i64::from(limit))
            .bind(after_id);
        self.traced("list_webhook_deliveries", None, self.all(select))
            .await
    }

    async fn count_credentials_by_health(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let select = sqlx::query_as(sql::COUNT_CREDENTIALS_BY_HEALTH);
        self.traced("count_credentials_by_health", None, self.all(select))
            .await
    }

    async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError> {
        self.traced("append_audit", e.credential_id.as_deref(), async {
            let mut insert = QueryBuilder::<DB>::new(sql::INSERT_AUDIT_EVENTS);
            insert.push_values([e], push_audit).push(" RETURNING id");
            insert
                .build_query_scalar::<i64>()
                .fetch_one(&self.pool)
                .await
                .map_err(map::<DB>)
        })
        .await
    }

    async fn append_audit_batch(&self, events: &[NewAuditEvent]) -> Result<(), StoreError> {
        self.traced("append_audit_batch", None, async {
            if events.is_empty() {
                return Ok(());
            }
            let mut tx = self.begin_write().await?;
            Self::insert_rows(&mut tx, sql::INSERT_AUDIT_EVENTS, events, push_audit).await?;
            tx.commit().await.map_err(map::<DB>)
        })
        .await
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        self.traced("list_audit", None, async {
            // Each combination of filters is its own statement text, so each gets a plan that
            // uses the index for its filter instead of one generic plan for `($n IS NULL OR ...)`.
            let mut select = QueryBuilder::<DB>::new(concat!(
                "SELECT ",
                audit_columns!(),
                " FROM audit_events WHERE TRUE"
            ));
            let text_filters = [
                (" AND credential_id = ", q.credential_id.as_deref()),
                (" AND actor = ", q.actor.as_deref()),
                (" AND action = ", q.action.as_deref()),
                (" AND outcome = ", q.outcome.as_deref()),
            ];
            push_filters(&mut select, text_filters);
            let number_filters = [
                (" AND at >= ", q.start_at),
                (" AND at < ", q.end_at),
                (" AND id < ", q.before_id),
            ];
            push_filters(&mut select, number_filters);
            select
                .push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(q.limit));
            self.all(select.build_query_as()).await
        })
        .await
    }

    async fn prune_audit(&self, older_than: i64) -> Result<u64, StoreError> {
        self.prune("prune_audit", sql::PRUNE_AUDIT_BATCH, older_than)
            .await
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        let select = sqlx::query_as(sql::KEY_USAGE);
        self.traced("key_usage", None, self.all(select)).await
    }

    async fn dek_rows_not_on_key(
        &self,
        key_id: &str,
        key_version: i64,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WrappedDekRow>, StoreError> {
        let select = sqlx::query_as(sql::DEK_ROWS_NOT_ON_KEY)
            .bind(key_id)
            .bind(key_version)
            .bind(after_id.unwrap_or(""))
            .bind(i64::from(limit));
        self.traced("dek_rows_not_on_key", None, self.all(select))
            .await
    }

    async fn rewrap_dek(
        &self,
        old: &WrappedDekRow,
        new_wrapped: &[u8],
        new_key_id: &str,
        new_key_version: i64,
    ) -> Result<bool, StoreError> {
        let update = sqlx::query(sql::REWRAP_DEK)
            .bind(old.credential_id.as_str())
            .bind(old.dek_wrapped.as_slice())
            .bind(old.dek_key_id.as_str())
            .bind(old.dek_key_version)
            .bind(new_wrapped)
            .bind(new_key_id)
            .bind(new_key_version);
        self.traced("rewrap_dek", Some(&old.credential_id), self.changed(update))
            .await
    }

    async fn acquire_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<CredentialRow>, StoreError> {
        // One conditional UPDATE: SQLite runs one writer at a time; on PostgreSQL
        // concurrent acquirers queue on the row lock and each re-checks the WHERE clause
        // against the winner's committed row (READ COMMITTED), so only one matches.
        let select = sqlx::query_as(sql::ACQUIRE_REFRESH_LEASE)
            .bind(id)
            .bind(holder)
            .bind(now)
            .bind(lease_until);
        self.traced("acquire_refresh_lease", Some(id), self.credential(select))
            .await
    }

    async fn complete_refresh(
        &self,
        row: &CredentialRow,
        fence: i64,
    ) -> Result<CredentialRow, StoreError> {
        self.complete_refresh_with_events(row, fence, &[]).await
    }

    async fn complete_refresh_with_events(
        &self,
        row: &CredentialRow,
        fence: i64,
        events: &[NewCredentialEvent],
    ) -> Result<CredentialRow, StoreError> {
        let update = sql::bind_complete_refresh!(sqlx::query_as(sql::COMPLETE_REFRESH), row, fence);
        let write = self.write_credential(&row.id, update, Unmatched::LeaseLost, events);
        self.traced("complete_refresh", Some(&row.id), write).await
    }

    async fn release_refresh_lease(&self, id: &str, fence: i64) -> Result<bool, StoreError> {
        let update = sqlx::query(sql::RELEASE_REFRESH_LEASE).bind(id).bind(fence);
        self.traced("release_refresh_lease", Some(id), self.changed(update))
            .await
    }

    async fn take_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        lease_ms: i64,
        local_now: i64,
    ) -> Result<Option<CredentialRow>, StoreError> {
        let statement = sql::take_refresh_lease(db_now::<DB>("$4"));
        let update = sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(id)
            .bind(holder)
            .bind(lease_ms)
            .bind(local_now);
        // The same operation as `acquire_refresh_lease`, on the database clock: one span name.
        self.traced("acquire_refresh_lease", Some(id), self.credential(update))
            .await
    }

    async fn claim_due_refreshes(
        &self,
        holder: &str,
        local_now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let statement = sql::claim_due_refreshes(db_now::<DB>("$2"), DB::SKIP_LOCKED);
        let claim = sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(holder)
            .bind(local_now)
            .bind(lease_ms)
            .bind(i64::from(limit));
        self.traced("claim_due_refreshes", None, async {
            let mut rows = self.credentials(claim).await?;
            // RETURNING has no defined order.
            rows.sort_by(|a, b| (a.next_refresh_at, &a.id).cmp(&(b.next_refresh_at, &b.id)));
            Ok(rows)
        })
        .await
    }

    async fn renew_refresh_lease(
        &self,
        id: &str,
        fence: i64,
        lease_ms: i64,
        local_now: i64,
    ) -> Result<bool, StoreError> {
        let statement = sql::renew_refresh_lease(db_now::<DB>("$4"));
        let update = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(id)
            .bind(fence)
            .bind(lease_ms)
            .bind(local_now);
        self.traced("renew_refresh_lease", Some(id), self.changed(update))
            .await
    }

    async fn refresh_lease_lapsed(&self, id: &str, local_now: i64) -> Result<bool, StoreError> {
        let statement = sql::refresh_lease_lapsed(db_now::<DB>("$2"));
        let select = sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(id)
            .bind(local_now);
        self.traced("refresh_lease_lapsed", Some(id), async {
            let lapsed: Option<(i64,)> = self.optional(select).await?;
            Ok(lapsed.is_none_or(|(l,)| l != 0))
        })
        .await
    }

    async fn record_refresh_intent(
        &self,
        id: &str,
        intent: &RefreshIntent,
    ) -> Result<bool, StoreError> {
        let update = sqlx::query(sql::RECORD_REFRESH_INTENT)
            .bind(id)
            .bind(intent.fence)
            .bind(intent.holder.as_str())
            .bind(intent.started_at)
            .bind(intent.token_sha256.as_str());
        self.traced("record_refresh_intent", Some(id), self.changed(update))
            .await
    }

    async fn refresh_intent(&self, id: &str) -> Result<Option<RefreshIntent>, StoreError> {
        let select = sqlx::query_as(sql::GET_REFRESH_INTENT).bind(id);
        self.traced("refresh_intent", Some(id), self.optional(select))
            .await
    }

    async fn due_for_refresh(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        let select = sqlx::query_scalar(sql::DUE_FOR_REFRESH)
            .bind(now)
            .bind(i64::from(limit));
        self.traced("due_for_refresh", None, self.column(select))
            .await
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        self.traced("record_usage", None, async {
            if batch.is_empty() {
                return Ok(());
            }
            let merged = sql::merge_usage(batch);
            let mut tx = self.begin_write().await?;
            // One UPDATE per credential in key order: concurrent batches lock the rows in the
            // same order and cannot deadlock (a multi-row UPDATE has no defined row order).
            for (credential_id, at) in &merged.credentials {
                let touch = sqlx::query(sql::TOUCH_CREDENTIAL_USAGE)
                    .bind(*credential_id)
                    .bind(*at);
                Self::execute_on(&mut tx, touch).await?;
            }
            let workflows: Vec<_> = merged.workflows.iter().collect();
            for chunk in workflows.chunks(sql::ROWS_PER_INSERT) {
                let mut upsert = QueryBuilder::<DB>::new(sql::UPSERT_WORKFLOW_USAGE_HEAD);
                upsert.push_values(chunk, |mut row, ((credential_id, workflow_id), at)| {
                    row.push_bind(*credential_id)
                        .push_bind(*workflow_id)
                        .push_bind(**at);
                });
                upsert.push(sql::UPSERT_WORKFLOW_USAGE_TAIL);
                Self::execute_on(&mut tx, upsert.build()).await?;
            }
            tx.commit().await.map_err(map::<DB>)
        })
        .await
    }

    async fn recent_workflows(
        &self,
        credential_id: &str,
        limit: u32,
    ) -> Result<(Vec<(String, i64)>, u64), StoreError> {
        self.traced("recent_workflows", Some(credential_id), async {
            let recent = sqlx::query_as(sql::RECENT_WORKFLOWS)
                .bind(credential_id)
                .bind(i64::from(limit));
            let recent = self.all(recent).await?;
            let total = sqlx::query_scalar::<DB, i64>(sql::COUNT_WORKFLOWS)
                .bind(credential_id)
                .fetch_one(&self.pool)
                .await
                .map_err(map::<DB>)?;
            Ok((recent, total.unsigned_abs()))
        })
        .await
    }

    async fn insert_connect_session(&self, s: &ConnectSessionRow) -> Result<(), StoreError> {
        let insert = sql::bind_connect_session!(sqlx::query(sql::INSERT_CONNECT_SESSION), s);
        self.traced("insert_connect_session", None, self.run(insert))
            .await
    }

    async fn get_connect_session(
        &self,
        state_hash: &str,
    ) -> Result<Option<ConnectSessionRow>, StoreError> {
        let select = sqlx::query_as(sql::GET_CONNECT_SESSION).bind(state_hash);
        self.traced("get_connect_session", None, self.optional(select))
            .await
    }

    async fn consume_connect_session(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let update = sqlx::query(sql::CONSUME_CONNECT_SESSION)
            .bind(state_hash)
            .bind(now);
        self.traced("consume_connect_session", None, self.changed(update))
            .await
    }

    async fn prune_credential_events(&self, older_than: i64) -> Result<u64, StoreError> {
        self.prune(
            "prune_credential_events",
            sql::PRUNE_CREDENTIAL_EVENTS_BATCH,
            older_than,
        )
        .await
    }

    async fn prune_connect_sessions(&self, older_than: i64) -> Result<u64, StoreError> {
        self.prune(
            "prune_connect_sessions",
            sql::PRUNE_CONNECT_SESSIONS_BATCH,
            older_than,
        )
        .await
    }

    async fn insert_run_grant(&self, g: &RunGrantRow) -> Result<(), StoreError> {
        self.traced("insert_run_grant", None, async {
            let statement = sqlx::query::<DB>(sql::INSERT_RUN_GRANT)
                .bind(g.id.as_str())
                .bind(g.grant_sha256.as_str())
                .bind(g.user_id.as_str())
                .bind(g.email.as_str())
                .bind(g.workspace_id.as_deref())
                .bind(g.workspace_role.as_deref())
                .bind(g.workflow_id.as_str())
                .bind(g.execution_id.as_str())
                .bind(g.credential_ids.as_str())
                .bind(g.created_by.as_str())
                .bind(g.created_at)
                .bind(g.expires_at)
                .bind(g.revoked_at);
            self.run(statement).await
        })
        .await
    }

    async fn get_run_grant(&self, grant_sha256: &str) -> Result<Option<RunGrantRow>, StoreError> {
        let select =
            sqlx::query_as::<DB, RunGrantRow>(sql::GET_RUN_GRANT_BY_HASH).bind(grant_sha256);
        self.traced("get_run_grant", None, self.optional(select))
            .await
    }

    async fn get_run_grant_by_id(&self, id: &str) -> Result<Option<RunGrantRow>, StoreError> {
        let select = sqlx::query_as::<DB, RunGrantRow>(sql::GET_RUN_GRANT_BY_ID).bind(id);
        self.traced("get_run_grant_by_id", None, self.optional(select))
            .await
    }

    async fn revoke_run_grant(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        self.traced("revoke_run_grant", None, async {
            let mut tx = self.begin_write().await?;
            let hash = sqlx::query_scalar::<DB, String>(sql::REVOKE_RUN_GRANT)
                .bind(id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map::<DB>)?;
            match hash {
                Some(hash) => {
                    self.commit_announcing(tx, &run_grant_change_id(&hash), &[])
                        .await?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await
    }

    async fn prune_run_grants(&self, older_than: i64) -> Result<u64, StoreError> {
        self.prune("prune_run_grants", sql::PRUNE_RUN_GRANTS_BATCH, older_than)
            .await
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<ChangeEvent> {
        DB::subscribe(&self.changes, &self.pool)
    }

    async fn insert_oauth_app(
        &self,
        app: &OAuthAppRow,
        secret: &OAuthAppSecretRow,
    ) -> Result<(), StoreError> {
        self.traced("insert_oauth_app", None, async {
            let insert = sqlx::query(sql::INSERT_OAUTH_APP)
                .bind(app.id.as_str())
                .bind(app.workspace_id.as_str())
                .bind(app.provider_id.as_str())
                .bind(app.display_name.as_str())
                .bind(app.client_id.as_str())
                .bind(app.allowed_scopes.as_str())
                .bind(app.created_by.as_str())
                .bind(app.created_at)
                .bind(app.updated_at)
                .bind(app.row_version);
            let mut tx = self.begin_write().await?;
            Self::execute_on(&mut tx, insert).await?;
            Self::execute_on(&mut tx, bind_secret(sql::INSERT_OAUTH_APP_SECRET, secret)).await?;
            tx.commit().await.map_err(map::<DB>)
        })
        .await
    }

    async fn get_oauth_app(&self, id: &str) -> Result<Option<OAuthAppRow>, StoreError> {
        let select = sqlx::query_as::<DB, OAuthAppRow>(sql::GET_OAUTH_APP).bind(id);
        self.traced("get_oauth_app", None, self.optional(select))
            .await
    }

    async fn list_oauth_apps(
        &self,
        workspace_id: &str,
        provider_id: Option<&str>,
    ) -> Result<Vec<OAuthAppRow>, StoreError> {
        let select = sqlx::query_as::<DB, OAuthAppRow>(sql::LIST_OAUTH_APPS)
            .bind(workspace_id)
            .bind(provider_id);
        self.traced("list_oauth_apps", None, self.all(select)).await
    }

    async fn update_oauth_app(
        &self,
        app: &OAuthAppRow,
        expected_version: i64,
    ) -> Result<OAuthAppRow, StoreError> {
        let update = sqlx::query_as(sql::UPDATE_OAUTH_APP)
            .bind(app.id.as_str())
            .bind(expected_version)
            .bind(app.display_name.as_str())
            .bind(app.client_id.as_str())
            .bind(app.allowed_scopes.as_str())
            .bind(app.updated_at);
        let exists = async { Ok(self.get_oauth_app(&app.id).await?.is_some()) };
        let write = self.update_versioned(update, expected_version, exists);
        self.traced("update_oauth_app", None, write).await
    }

    async fn delete_oauth_app(&self, id: &str) -> Result<bool, StoreError> {
        self.traced("delete_oauth_app", None, async {
            let mut tx = self.begin_write().await?;
            Self::execute_on(&mut tx, sqlx::query(sql::DELETE_OAUTH_APP_SECRETS).bind(id)).await?;
            let deleted =
                Self::execute_on(&mut tx, sqlx::query(sql::DELETE_OAUTH_APP).bind(id)).await?;
            tx.commit().await.map_err(map::<DB>)?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn insert_workspace_provider(
        &self,
        row: &WorkspaceProviderRow,
    ) -> Result<(), StoreError> {
        let statement = sqlx::query(sql::INSERT_WORKSPACE_PROVIDER)
            .bind(row.workspace_id.as_str())
            .bind(row.id.as_str())
            .bind(row.definition.as_str())
            .bind(row.created_by.as_str())
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(row.row_version);
        self.traced("insert_workspace_provider", None, self.run(statement))
            .await
    }

    async fn get_workspace_provider(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<WorkspaceProviderRow>, StoreError> {
        let select = sqlx::query_as::<DB, WorkspaceProviderRow>(sql::GET_WORKSPACE_PROVIDER)
            .bind(workspace_id)
            .bind(id);
        self.traced("get_workspace_provider", None, self.optional(select))
            .await
    }

    async fn list_workspace_providers(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<WorkspaceProviderRow>, StoreError> {
        let select = sqlx::query_as::<DB, WorkspaceProviderRow>(sql::LIST_WORKSPACE_PROVIDERS)
            .bind(workspace_id);
        self.traced("list_workspace_providers", None, self.all(select))
            .await
    }

    async fn update_workspace_provider(
        &self,
        row: &WorkspaceProviderRow,
        expected_version: i64,
    ) -> Result<WorkspaceProviderRow, StoreError> {
        let update = sqlx::query_as(sql::UPDATE_WORKSPACE_PROVIDER)
            .bind(row.workspace_id.as_str())
            .bind(row.id.as_str())
            .bind(expected_version)
            .bind(row.definition.as_str())
            .bind(row.updated_at);
        let exists = async {
            let stored = self.get_workspace_provider(&row.workspace_id, &row.id);
            Ok(stored.await?.is_some())
        };
        let write = self.update_versioned(update, expected_version, exists);
        self.traced("update_workspace_provider", None, write).await
    }

    async fn delete_workspace_provider(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        let statement = sqlx::query(sql::DELETE_WORKSPACE_PROVIDER)
            .bind(workspace_id)
            .bind(id);
        self.traced("delete_workspace_provider", None, self.changed(statement))
            .await
    }

    async fn insert_oauth_app_secret(&self, secret: &OAuthAppSecretRow) -> Result<(), StoreError> {
        let statement = bind_secret(sql::INSERT_OAUTH_APP_SECRET, secret);
        self.traced("insert_oauth_app_secret", None, self.run(statement))
            .await
    }

    async fn list_oauth_app_secrets(
        &self,
        app_id: &str,
    ) -> Result<Vec<OAuthAppSecretRow>, StoreError> {
        let select =
            sqlx::query_as::<DB, OAuthAppSecretRow>(sql::LIST_OAUTH_APP_SECRETS).bind(app_id);
        self.traced("list_oauth_app_secrets", None, self.all(select))
            .await
    }

    async fn delete_oauth_app_secret(
        &self,
        app_id: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        let statement = sqlx::query(sql::DELETE_OAUTH_APP_SECRET)
            .bind(app_id)
            .bind(version);
        self.traced("delete_oauth_app_secret", None, self.changed(statement))
            .await
    }

    async fn set_credential_app(
        &self,
        credential_id: &str,
        app: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let statement = sqlx::query(sql::SET_CREDENTIAL_APP)
            .bind(credential_id)
            .bind(app.map(|(id, _)| id))
            .bind(app.map(|(_, v)| v));
        self.traced(
            "set_credential_app",
            Some(credential_id),
            self.run(statement),
        )
        .await
    }

    async fn credential_app(
        &self,
        credential_id: &str,
    ) -> Result<Option<(String, i64)>, StoreError> {
        self.traced("credential_app", Some(credential_id), async {
            let select = sqlx::query_as(sql::GET_CREDENTIAL_APP).bind(credential_id);
            let row: Option<(Option<String>, Option<i64>)> = self.optional(select).await?;
            Ok(match row {
                Some((Some(app), version)) => Some((app, version.unwrap_or(0))),
                _ => None,
            })
        })
        .await
    }

    async fn credentials_using_app(&self, app_id: &str) -> Result<Vec<String>, StoreError> {
        let select = sqlx::query_scalar(sql::CREDENTIALS_USING_APP).bind(app_id);
        self.traced("credentials_using_app", None, self.column(select))
            .await
    }

    async fn secret_key_usage(&self, kind: SecretKind) -> Result<Vec<SecretKeyUsage>, StoreError> {
        let select = sqlx::query_as(sql::secret_statements(kind).usage);
        self.traced("secret_key_usage", None, self.all(select))
            .await
    }

    async fn secret_deks_not_on_key(
        &self,
        kind: SecretKind,
        key_id: &str,
        key_version: i64,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<SecretDekRow>, StoreError> {
        let (after_owner, after_version) = after.unwrap_or(("", i64::MIN));
        let select = sqlx::query_as(sql::secret_statements(kind).not_on_key)
            .bind(key_id)
            .bind(key_version)
            .bind(after_owner)
            .bind(after_version)
            .bind(i64::from(limit));
        self.traced("secret_deks_not_on_key", None, self.all(select))
            .await
    }

    async fn rewrap_secret_dek(
        &self,
        kind: SecretKind,
        old: &SecretDekRow,
        new_wrapped: &[u8],
        new_key_id: &str,
        new_key_version: i64,
    ) -> Result<bool, StoreError> {
        let update = sqlx::query(sql::secret_statements(kind).rewrap)
            .bind(old.owner_id.as_str())
            .bind(old.version)
            .bind(old.dek_wrapped.as_slice())
            .bind(old.dek_key_id.as_str())
            .bind(old.dek_key_version)
            .bind(new_wrapped)
            .bind(new_key_id)
            .bind(new_key_version);
        self.traced("rewrap_secret_dek", None, self.changed(update))
            .await
    }

    fn change_feed(&self) -> Option<u64> {
        DB::feed_session(&self.changes)
    }
}

/// Binds an [`OAuthAppSecretRow`] in `INSERT_OAUTH_APP_SECRET` order.
fn bind_webhook_secret<'q, DB>(
    s: &'q WebhookSecretRow,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: Backend,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    sqlx::query::<DB>(sql::INSERT_WEBHOOK_SECRET)
        .bind(s.endpoint_id.as_str())
        .bind(s.version)
        .bind(s.sealed.ciphertext.as_slice())
        .bind(s.sealed.dek_wrapped.as_slice())
        .bind(s.sealed.dek_key_id.as_str())
        .bind(s.sealed.dek_key_version)
        .bind(s.created_at)
}

fn bind_secret<'q, DB>(
    statement: &'static str,
    s: &'q OAuthAppSecretRow,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: Backend,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    sqlx::query::<DB>(statement)
        .bind(s.app_id.as_str())
        .bind(s.version)
        .bind(s.sealed_secret.as_slice())
        .bind(s.dek_wrapped.as_slice())
        .bind(s.dek_key_id.as_str())
        .bind(s.dek_key_version)
        .bind(s.created_at)
}
