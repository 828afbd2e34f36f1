//! Persistence for the credential broker: one [`Store`] trait and one SQL implementation,
//! [`SqlStore`], on two databases ([`SqliteStore`] for a single process, [`PgStore`] for
//! replicas sharing PostgreSQL). What differs between them sits behind a small backend trait
//! (`backend.rs`, implemented in `sqlite.rs` and `postgres.rs`).
//!
//! The store is deliberately thin: it reads and writes rows, enforces uniqueness and optimistic
//! concurrency, and leaves every business rule to the domain. It never logs or reports bound
//! values, because some of them are secrets.

mod backend;
mod error;
mod listener;
mod model;
mod postgres;
mod sql;
mod sqlite;
mod store;

use std::sync::Arc;

pub use error::StoreError;
pub use model::{
    AuditQuery, AuditRow, ChangeEvent, ClaimedDelivery, ConnectSessionRow, CredentialEventRow,
    CredentialQuery, CredentialRow, DeliveryAttempt, DeliveryRow, EventQuery, HealthColumns,
    KeyUsage, LeaseColumns, MemberChange, MemberRow, NewAuditEvent, NewCredentialEvent,
    OAuthAppRow, OAuthAppSecretRow, RUN_GRANT_CHANGE_PREFIX, RefreshFailure, RefreshIntent,
    RunGrantRow, SealedColumns, SecretDekRow, SecretKeyUsage, SecretKind, StatusQuery, UsageRecord,
    WebhookEndpointRow, WebhookSecretRow, WorkspaceProviderRow, WrappedDekRow, run_grant_change_id,
};
pub use store::SqlStore;

/// [`Store`] on an SQLite database file (WAL, busy_timeout 5 s, foreign keys on). Change
/// notifications stay in this process.
pub type SqliteStore = SqlStore<sqlx::Sqlite>;

/// [`Store`] on a PostgreSQL database, through a connection pool; changes are announced to
/// every replica.
pub type PgStore = SqlStore<sqlx::Postgres>;

/// How many change events a slow subscriber may fall behind before it sees
/// [`tokio::sync::broadcast::error::RecvError::Lagged`].
pub const CHANGE_EVENT_CAPACITY: usize = 1024;

/// Repository of credentials, their members, the audit trail, refresh leases, usage, connect
/// sessions and change notifications.
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
    /// Announces the new credential (see [`Store::subscribe_changes`]).
    async fn insert_credential(
        &self,
        row: &CredentialRow,
        members: &[MemberRow],
    ) -> Result<(), StoreError>;

    /// [`Store::insert_credential`] that also appends `events` in the same transaction.
    async fn insert_credential_with_events(
        &self,
        row: &CredentialRow,
        members: &[MemberRow],
        events: &[NewCredentialEvent],
    ) -> Result<(), StoreError>;

    /// [`Store::update_credential`] that also appends `events` in the same transaction.
    async fn update_credential_with_events(
        &self,
        row: &CredentialRow,
        expected_version: i64,
        events: &[NewCredentialEvent],
    ) -> Result<CredentialRow, StoreError>;

    /// [`Store::complete_refresh`] that also appends `events` in the same transaction.
    async fn complete_refresh_with_events(
        &self,
        row: &CredentialRow,
        fence: i64,
        events: &[NewCredentialEvent],
    ) -> Result<CredentialRow, StoreError>;

    /// [`Store::change_member`] that also appends `events` in the same transaction.
    async fn change_member_with_events(
        &self,
        change: &MemberChange,
        events: &[NewCredentialEvent],
    ) -> Result<(), StoreError>;

    /// Records a refresh failure that leaves the status and the tokens alone (a provider
    /// outage, a rejected client): health, cause, error code, one more failure; `since` moves
    /// only when the health changes. No row_version bump. Appends `events` in the same
    /// transaction and announces the change. Returns the stored row; `None` for an unknown or
    /// DISCONNECTED credential (nothing written).
    async fn record_refresh_failure(
        &self,
        id: &str,
        failure: &RefreshFailure,
        events: &[NewCredentialEvent],
    ) -> Result<Option<CredentialRow>, StoreError>;

    /// ACTIVE credentials whose grant ends (`refresh_token_expires_at`) at or before `horizon`
    /// and whose health is not `EXPIRING` yet, soonest first, at most `limit`.
    async fn grants_ending(
        &self,
        horizon: i64,
        limit: u32,
    ) -> Result<Vec<CredentialRow>, StoreError>;

    /// Sets a health that is not a refresh failure (`EXPIRING`): cause and since, failures kept,
    /// only when the credential is ACTIVE and its health differs; `events` are appended in the
    /// same transaction only then. Returns whether it changed (of racing replicas, one does).
    async fn mark_health(
        &self,
        id: &str,
        health: &str,
        cause: &str,
        at: i64,
        events: &[NewCredentialEvent],
    ) -> Result<bool, StoreError>;

    /// Events matching every filter of `q` with `id > q.after_id`, oldest first, at most
    /// `q.limit`. Ids appear in commit order (PostgreSQL: event-writing transactions are
    /// serialized), so a reader resuming after the last id it saw misses nothing.
    async fn list_credential_events(
        &self,
        q: &EventQuery,
    ) -> Result<Vec<CredentialEventRow>, StoreError>;

    /// Deletes events with `at < older_than` (retention) in bounded batches; returns how many.
    async fn prune_credential_events(&self, older_than: i64) -> Result<u64, StoreError>;

    /// Declares (or updates) a webhook endpoint. A changed URL or workspace re-enables it and
    /// forgets its failures. Events written from now on get a delivery to it if their kind is
    /// in `event_types` (comma-separated; `None`: every kind).
    async fn upsert_webhook_endpoint(
        &self,
        id: &str,
        workspace_id: &str,
        url: &str,
        now: i64,
        event_types: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Claims up to `limit` due webhook deliveries for `holder` until `now + lease_ms`: pending,
    /// `next_attempt_at <= now`, lease free or lapsed, endpoint enabled, and no earlier pending
    /// delivery of the same endpoint and credential (deliveries are ordered per credential). On
    /// PostgreSQL rows a concurrent claim is taking are skipped (`FOR UPDATE SKIP LOCKED`), so
    /// replicas never send one delivery concurrently. Oldest first, with their events.
    async fn claim_webhook_deliveries(
        &self,
        holder: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Records an attempt under its claim: delivered, or rescheduled at `next_attempt_at`; the
    /// endpoint's failing period starts at its first failure and ends with a success; an
    /// endpoint failing since `disable_failing_since` or earlier is disabled, and its
    /// `disabled_event` appended in the same transaction. Returns whether this call disabled it.
    async fn finish_webhook_delivery(&self, a: &DeliveryAttempt) -> Result<bool, StoreError>;

    /// An endpoint's delivery log after delivery `after_id` (0: from the start), oldest first,
    /// at most `limit`.
    async fn list_webhook_deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
        after_id: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError>;

    /// A webhook endpoint, configured or API-managed (`None`: unknown).
    async fn webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpointRow>, StoreError>;

    /// A workspace's webhook endpoints (configured and API-managed), by id.
    async fn list_webhook_endpoints(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<WebhookEndpointRow>, StoreError>;

    /// Inserts an API-managed endpoint (`row.source` is ignored: `API`; failure state empty)
    /// with its first secret, in one transaction. An existing id → [`StoreError::Duplicate`].
    async fn insert_webhook_endpoint(
        &self,
        row: &WebhookEndpointRow,
        secret: &WebhookSecretRow,
    ) -> Result<(), StoreError>;

    /// Writes an API-managed endpoint's `url`, `event_types`, `description` and `updated_at`;
    /// `reset_failures` also forgets its failing period and re-enables it. Returns the stored
    /// row; `None` for an unknown or configured endpoint (nothing written).
    async fn update_webhook_endpoint(
        &self,
        row: &WebhookEndpointRow,
        reset_failures: bool,
    ) -> Result<Option<WebhookEndpointRow>, StoreError>;

    /// Deletes an API-managed endpoint with its secrets and delivery log (cascade): first
    /// disables it (committed on its own, so events stop fanning out to it), then deletes.
    /// Returns whether it existed; configured endpoints are never deleted.
    async fn delete_webhook_endpoint(&self, id: &str, now: i64) -> Result<bool, StoreError>;

    /// Adds a signing secret. An existing (endpoint, version) → [`StoreError::Duplicate`].
    async fn insert_webhook_secret(&self, secret: &WebhookSecretRow) -> Result<(), StoreError>;

    /// An endpoint's signing secrets, newest first.
    async fn list_webhook_secrets(
        &self,
        endpoint_id: &str,
    ) -> Result<Vec<WebhookSecretRow>, StoreError>;

    /// Deletes one signing secret; returns whether it existed.
    async fn delete_webhook_secret(
        &self,
        endpoint_id: &str,
        version: i64,
    ) -> Result<bool, StoreError>;

    /// How many non-disconnected credentials have each health, ordered by health (metrics).
    async fn count_credentials_by_health(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Reads one credential by id.
    async fn get_credential(&self, id: &str) -> Result<Option<CredentialRow>, StoreError>;

    /// Finds the non-disconnected credential for (workspace, provider, account_subject).
    async fn find_credential_by_account(
        &self,
        workspace_id: &str,
        provider_id: &str,
        account_subject: &str,
    ) -> Result<Option<CredentialRow>, StoreError>;

    /// Ids of the non-disconnected credentials of one provider account, in every workspace.
    async fn live_credentials_of_account(
        &self,
        provider_id: &str,
        account_subject: &str,
    ) -> Result<Vec<String>, StoreError>;

    /// Lists a workspace's credentials ordered by id, one keyset page at a time.
    async fn list_credentials(&self, q: &CredentialQuery)
    -> Result<Vec<CredentialRow>, StoreError>;

    /// Credentials with one status, in one workspace or all of them, ordered by id, one keyset
    /// page at a time (operator tools).
    async fn list_credentials_by_status(
        &self,
        q: &StatusQuery,
    ) -> Result<Vec<CredentialRow>, StoreError>;

    /// How many credentials have each status, over every workspace, ordered by status;
    /// statuses with no credential are absent (metrics).
    async fn count_credentials_by_status(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Optimistic write of every mutable column (everything except id, workspace_id,
    /// provider_id, created_by, created_at, lease columns and row_version) WHERE id = row.id
    /// AND row_version = expected_version; sets row_version = expected_version + 1 and returns
    /// the stored row. `last_used_at` never moves backwards: it becomes the later of the stored
    /// and the given value (NULL counts as never), because [`Store::record_usage`] writes it in
    /// the background without a version bump, so an edit built from an older read must not
    /// erase it. The lease columns are left alone, except that an update to status
    /// `DISCONNECTED` clears the lease holder and expiry (the fence stays), which fences out an
    /// in-flight refresh ([`Store::complete_refresh`] then fails with
    /// [`StoreError::LeaseLost`]). Announces the change.
    /// Missing id → [`StoreError::NotFound`]; version mismatch →
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

    /// Applies one member change in a transaction serialized per credential (PostgreSQL: the
    /// credentials row is locked `FOR UPDATE` first; SQLite: `BEGIN IMMEDIATE`), and announces
    /// it as a change of the credential.
    ///
    /// Last-admin guard: if the credential had at least one member with role `ADMIN` and state
    /// `ACTIVE` before the change and would have none after it, the transaction rolls back with
    /// [`StoreError::LastAdmin`]. (`INVITED` admins do not count. A credential that had no
    /// active admin to begin with is not blocked, so it can be repaired.)
    /// Delete of a missing member, or any change for an unknown credential →
    /// [`StoreError::NotFound`]. The conditional changes ([`MemberChange::Add`],
    /// [`MemberChange::Accept`], [`MemberChange::SetRole`]) fail as their docs say instead of
    /// overwriting a concurrent change.
    async fn change_member(&self, change: &MemberChange) -> Result<(), StoreError>;

    /// Appends an audit event and returns its id (increasing).
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError>;

    /// Appends several audit events in one transaction (the buffered audit writer).
    async fn append_audit_batch(&self, events: &[NewAuditEvent]) -> Result<(), StoreError>;

    /// Reads audit events matching every filter set in `q`, newest first (id descending),
    /// at most `q.limit`. Page with `before_id` = the last id of the previous page.
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError>;

    /// Deletes events with `at < older_than` (retention) in bounded batches; returns how many.
    async fn prune_audit(&self, older_than: i64) -> Result<u64, StoreError>;

    /// Counts sealed credentials per key-encryption key version, ordered by key id and
    /// version (startup checks and key rotation).
    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError>;

    /// Credentials whose sealed tokens have a data key wrapped by any key other than
    /// (`key_id`, `key_version`), ordered by id, only ids greater than `after_id` (keyset
    /// paging; `None` starts at the beginning), at most `limit`. Key rotation walks these.
    async fn dek_rows_not_on_key(
        &self,
        key_id: &str,
        key_version: i64,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WrappedDekRow>, StoreError>;

    /// Replaces a credential's wrapped data key with `new_wrapped` under (`new_key_id`,
    /// `new_key_version`) (key rotation), in one compare-and-swap UPDATE that matches only
    /// while the row still holds exactly `old`'s wrapped bytes, key id and version. Returns
    /// whether it replaced; `false` when the row changed meanwhile (disconnected, or another
    /// wrapping written) or is unknown.
    ///
    /// Writes ONLY the three data-key columns: the token ciphertext, `row_version`,
    /// `updated_at` and the lease stay, so no concurrent writer conflicts or retries. Safe
    /// because the new wrapping holds the same data key as the old one: whatever ciphertext the
    /// row holds with `old` still opens with the new wrapping. Announces nothing (cached tokens
    /// stay valid; every writer re-reads the row before writing).
    async fn rewrap_dek(
        &self,
        old: &WrappedDekRow,
        new_wrapped: &[u8],
        new_key_id: &str,
        new_key_version: i64,
    ) -> Result<bool, StoreError>;

    /// Takes the refresh lease if it is free or lapsed, in one conditional UPDATE:
    /// `lease_holder = holder, lease_fence = lease_fence + 1, lease_expires_at = lease_until`
    /// WHERE the credential is `ACTIVE` and (no holder, or `lease_expires_at <= now`).
    ///
    /// Returns the row as it is after the update (its `lease.fence` is the caller's fencing
    /// token: pass it to [`Store::complete_refresh`] / [`Store::release_refresh_lease`]), or
    /// `None` when another holder has an unexpired lease or the credential is not `ACTIVE` or
    /// unknown. Concurrent callers (any replica) never both get `Some` for one lease period.
    /// Times are the caller's: the broker uses [`Store::take_refresh_lease`] (database clock).
    async fn acquire_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<CredentialRow>, StoreError>;

    /// Writes the result of a refresh under the fencing token and releases the lease, in one
    /// transaction, and announces the change.
    ///
    /// Writes ONLY the sealed columns, `has_refresh_token`, `access_expires_at`,
    /// `refresh_token_expires_at`, `next_refresh_at`, `last_refreshed_at`, `status`,
    /// `status_reason` and `updated_at` from `row` (so a concurrent rename survives); clears
    /// the lease holder and expiry (the fence stays); `row_version + 1`. Matches only
    /// `id = row.id AND lease_fence = fence AND lease_holder IS NOT NULL AND status <>
    /// 'DISCONNECTED'`. Returns the stored row; no match → [`StoreError::LeaseLost`] and
    /// nothing is written.
    async fn complete_refresh(
        &self,
        row: &CredentialRow,
        fence: i64,
    ) -> Result<CredentialRow, StoreError>;

    /// Releases the lease without writing tokens (failure paths), only while `lease_fence =
    /// fence` and it is held. Returns whether it released.
    async fn release_refresh_lease(&self, id: &str, fence: i64) -> Result<bool, StoreError>;

    /// Takes the refresh lease if it is free or lapsed, judged by the DATABASE clock where there
    /// is one shared by every replica (PostgreSQL `now()`; SQLite, one process: `local_now`):
    /// `lease_holder = holder, lease_fence + 1, lease_expires_at = db_now + lease_ms` WHERE the
    /// credential is `ACTIVE` and (no holder, or `lease_expires_at <= db_now`). Replica clock
    /// skew thus cannot make a live lease look lapsed. Same answer as
    /// [`Store::acquire_refresh_lease`].
    async fn take_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        lease_ms: i64,
        local_now: i64,
    ) -> Result<Option<CredentialRow>, StoreError>;

    /// Heartbeat of a live lease: `lease_expires_at = db_now + lease_ms` (database clock as in
    /// [`Store::take_refresh_lease`]) while `lease_fence = fence` and it is held. Returns
    /// whether it is still held.
    async fn renew_refresh_lease(
        &self,
        id: &str,
        fence: i64,
        lease_ms: i64,
        local_now: i64,
    ) -> Result<bool, StoreError>;

    /// Whether the lease of `id` is free or lapsed by the database clock (as in
    /// [`Store::take_refresh_lease`]); `true` for an unknown credential.
    async fn refresh_lease_lapsed(&self, id: &str, local_now: i64) -> Result<bool, StoreError>;

    /// Records the intent of the holder of lease `intent.fence` (only while it holds it).
    /// Returns whether it was recorded. [`Store::complete_refresh`] clears it; releasing the
    /// lease does not (a refresh whose outcome is unknown stays on record).
    async fn record_refresh_intent(
        &self,
        id: &str,
        intent: &RefreshIntent,
    ) -> Result<bool, StoreError>;

    /// The recorded refresh intent of `id`, if any.
    async fn refresh_intent(&self, id: &str) -> Result<Option<RefreshIntent>, StoreError>;

    /// The refresh-ahead claim: takes the refresh lease (as [`Store::take_refresh_lease`], for
    /// `holder`, on the database clock) of up to `limit` `ACTIVE` credentials with
    /// `next_refresh_at <= local_now` whose lease is free or lapsed, in one statement, and
    /// returns them soonest first. Credentials leased by others are skipped, never waited for;
    /// on PostgreSQL so are rows a concurrent claim is taking (`FOR UPDATE SKIP LOCKED`), so
    /// replicas scanning together split the due credentials between them.
    async fn claim_due_refreshes(
        &self,
        holder: &str,
        local_now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<CredentialRow>, StoreError>;

    /// Ids of `ACTIVE` credentials with `next_refresh_at <= now`, soonest first (ties by id),
    /// at most `limit`. Reads the partial index `(next_refresh_at, id) WHERE status =
    /// 'ACTIVE'`, so its cost grows with the number of due credentials, not the table. Leased
    /// credentials are included: [`Store::acquire_refresh_lease`] sorts them out.
    async fn due_for_refresh(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Applies a batch of usage records in one transaction: `credentials.last_used_at =
    /// max(existing, at)` WITHOUT bumping `row_version` or announcing a change, and, when
    /// `workflow_id` is set, `(credential_id, workflow_id) → max(last_used_at, at)` in
    /// `credential_workflow_usage`. Records for unknown credentials are ignored.
    ///
    /// Meant to be called off the hot path with batches collected in memory.
    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError>;

    /// The workflows that used a credential, most recent first (ties by workflow id), at most
    /// `limit`, with when each used it last; plus the total number of distinct workflows.
    async fn recent_workflows(
        &self,
        credential_id: &str,
        limit: u32,
    ) -> Result<(Vec<(String, i64)>, u64), StoreError>;

    /// Inserts a connect session. An existing `state_hash` →
    /// [`StoreError::Duplicate`]`("connect session")`.
    async fn insert_connect_session(&self, s: &ConnectSessionRow) -> Result<(), StoreError>;

    /// Reads one connect session by state hash, whether or not it is consumed or expired.
    async fn get_connect_session(
        &self,
        state_hash: &str,
    ) -> Result<Option<ConnectSessionRow>, StoreError>;

    /// Marks the session consumed in one conditional UPDATE: `consumed_at = now` WHERE
    /// `state_hash` matches AND `consumed_at IS NULL` AND `expires_at > now`. Returns whether
    /// THIS call consumed it: of any number of racing callers (any replica) exactly one gets
    /// `true`; an unknown, already consumed or expired session gives `false`.
    async fn consume_connect_session(&self, state_hash: &str, now: i64)
    -> Result<bool, StoreError>;

    /// Deletes the sessions with `expires_at < older_than` (consumed or not); returns how many.
    async fn prune_connect_sessions(&self, older_than: i64) -> Result<u64, StoreError>;

    /// Inserts a run grant. An existing id or hash → [`StoreError::Duplicate`]`("run grant")`.
    async fn insert_run_grant(&self, g: &RunGrantRow) -> Result<(), StoreError>;

    /// Reads one run grant by the SHA-256 (hex) of the grant, revoked or expired included.
    async fn get_run_grant(&self, grant_sha256: &str) -> Result<Option<RunGrantRow>, StoreError>;

    /// Reads one run grant by id, revoked or expired included.
    async fn get_run_grant_by_id(&self, id: &str) -> Result<Option<RunGrantRow>, StoreError>;

    /// Sets `revoked_at = now` on a grant not yet revoked and announces
    /// [`ChangeEvent::Changed`]`(`[`run_grant_change_id`]`(hash))` on the change feed (so every
    /// replica drops it from memory). Returns whether THIS call revoked it (`false`: unknown or
    /// already revoked).
    async fn revoke_run_grant(&self, id: &str, now: i64) -> Result<bool, StoreError>;

    /// Deletes the grants with `expires_at < older_than`; returns how many.
    async fn prune_run_grants(&self, older_than: i64) -> Result<u64, StoreError>;

    /// Subscribes to credential changes made by ANY process on this database:
    /// [`Store::insert_credential`], [`Store::update_credential`], [`Store::complete_refresh`]
    /// and [`Store::change_member`] each announce [`ChangeEvent::Changed`] with the credential
    /// id once their transaction commits. Lease operations and [`Store::record_usage`] do not.
    ///
    /// - PostgreSQL: `pg_notify('cb_credential_changed', id)` inside each writing transaction;
    ///   one background listener per store (started by the first call, on the current tokio
    ///   runtime; stopped when the last clone of the store is dropped) fans the notifications
    ///   out. [`ChangeEvent::Resync`] is sent once the listener is LISTENing (so a subscriber
    ///   that sees it knows every later change will be announced) and again whenever its
    ///   connection was lost and re-established.
    /// - SQLite: the same events, sent in-process after commit (one process only).
    ///
    /// Consumers must treat [`tokio::sync::broadcast::error::RecvError::Lagged`] exactly
    /// like [`ChangeEvent::Resync`] (drop every cached entry): the receiver fell more than
    /// [`CHANGE_EVENT_CAPACITY`] events behind and some were discarded.
    fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<ChangeEvent>;

    /// Inserts an OAuth app (row_version 1) with its first client secret, in one transaction.
    /// An existing id → [`StoreError::Duplicate`].
    async fn insert_oauth_app(
        &self,
        app: &OAuthAppRow,
        secret: &OAuthAppSecretRow,
    ) -> Result<(), StoreError>;

    /// Reads one OAuth app.
    async fn get_oauth_app(&self, id: &str) -> Result<Option<OAuthAppRow>, StoreError>;

    /// A workspace's OAuth apps (one provider's, or all), oldest first.
    async fn list_oauth_apps(
        &self,
        workspace_id: &str,
        provider_id: Option<&str>,
    ) -> Result<Vec<OAuthAppRow>, StoreError>;

    /// Writes `display_name`, `client_id`, `allowed_scopes` and `updated_at` WHERE id matches
    /// AND row_version = expected_version; bumps the version and returns the stored row.
    /// Missing → [`StoreError::NotFound`]; version mismatch → [`StoreError::VersionConflict`].
    async fn update_oauth_app(
        &self,
        app: &OAuthAppRow,
        expected_version: i64,
    ) -> Result<OAuthAppRow, StoreError>;

    /// Deletes an app and its secrets in one transaction; returns whether it existed.
    /// Credentials keep naming it (the domain decides what happens to them first).
    async fn delete_oauth_app(&self, id: &str) -> Result<bool, StoreError>;

    /// Adds a client secret. An existing (app, version) → [`StoreError::Duplicate`].
    async fn insert_oauth_app_secret(&self, secret: &OAuthAppSecretRow) -> Result<(), StoreError>;

    /// An app's client secrets, newest first.
    async fn list_oauth_app_secrets(
        &self,
        app_id: &str,
    ) -> Result<Vec<OAuthAppSecretRow>, StoreError>;

    /// Deletes one client secret; returns whether it existed.
    async fn delete_oauth_app_secret(&self, app_id: &str, version: i64)
    -> Result<bool, StoreError>;

    /// Inserts a workspace-defined provider (row_version 1). An existing (workspace, id) →
    /// [`StoreError::Duplicate`].
    async fn insert_workspace_provider(&self, row: &WorkspaceProviderRow)
    -> Result<(), StoreError>;

    /// Reads one workspace-defined provider.
    async fn get_workspace_provider(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<Option<WorkspaceProviderRow>, StoreError>;

    /// A workspace's providers, by id.
    async fn list_workspace_providers(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<WorkspaceProviderRow>, StoreError>;

    /// Writes `definition` and `updated_at` WHERE (workspace, id) matches AND row_version =
    /// expected_version; bumps the version and returns the stored row. Missing →
    /// [`StoreError::NotFound`]; version mismatch → [`StoreError::VersionConflict`].
    async fn update_workspace_provider(
        &self,
        row: &WorkspaceProviderRow,
        expected_version: i64,
    ) -> Result<WorkspaceProviderRow, StoreError>;

    /// Deletes a workspace-defined provider; returns whether it existed.
    async fn delete_workspace_provider(
        &self,
        workspace_id: &str,
        id: &str,
    ) -> Result<bool, StoreError>;

    /// Records which app (and secret version) minted a credential's grant (`None`: the
    /// deployment's configured client). Does not bump the row version or announce a change:
    /// it names the client, not the tokens.
    async fn set_credential_app(
        &self,
        credential_id: &str,
        app: Option<(&str, i64)>,
    ) -> Result<(), StoreError>;

    /// The app (and secret version) recorded for a credential, if any.
    async fn credential_app(
        &self,
        credential_id: &str,
    ) -> Result<Option<(String, i64)>, StoreError>;

    /// Ids of the non-disconnected credentials minted by an app, ordered by id.
    async fn credentials_using_app(&self, app_id: &str) -> Result<Vec<String>, StoreError>;

    /// Counts sealed secrets of `kind` per key-encryption key version, ordered by key id and
    /// version (key rotation, `keys report`, `keys retire-local-version`).
    async fn secret_key_usage(&self, kind: SecretKind) -> Result<Vec<SecretKeyUsage>, StoreError>;

    /// Sealed secrets of `kind` whose data key is wrapped by any key other than (`key_id`,
    /// `key_version`), ordered by (owner, version), only those after `after` (keyset paging;
    /// `None` starts at the beginning), at most `limit`. Key rotation walks these.
    async fn secret_deks_not_on_key(
        &self,
        kind: SecretKind,
        key_id: &str,
        key_version: i64,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<SecretDekRow>, StoreError>;

    /// Replaces a sealed secret's wrapped data key (key rotation) in one compare-and-swap
    /// UPDATE matching only while the row still holds exactly `old`'s wrapped bytes, key id
    /// and version; like [`Store::rewrap_dek`], it writes only the data-key columns. Returns
    /// whether it replaced (`false`: the secret changed meanwhile, or is gone).
    async fn rewrap_secret_dek(
        &self,
        kind: SecretKind,
        old: &SecretDekRow,
        new_wrapped: &[u8],
        new_key_id: &str,
        new_key_version: i64,
    ) -> Result<bool, StoreError>;

    /// Whether changes made by other processes are being delivered right now: the session of
    /// the change feed (a new number each time it (re)connects, notifications in between may
    /// be lost), or `None` while it is down or not started. SQLite (one process): always
    /// `Some(0)`.
    fn change_feed(&self) -> Option<u64>;
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
