//! SQL text of the store and the row <-> record conversions.
//!
//! Both dialects accept `$n` placeholders, `RETURNING` and `ON CONFLICT ... DO UPDATE`, so one
//! statement text serves SQLite and PostgreSQL; only the migrations differ. Statements whose
//! shape depends on the input are built in [`crate::store`] with `sqlx::QueryBuilder`.

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::model::{
    CredentialRow, HealthColumns, LeaseColumns, SealedColumns, SecretKind, UsageRecord,
};

/// `SELECT` of the columns a `*_columns!` macro lists, then `rest` (`" FROM …"`).
macro_rules! select {
    ($columns:ident, $($rest:expr),+ $(,)?) => {
        concat!("SELECT ", $columns!(), $($rest),+)
    };
}

/// `INSERT INTO table` of the columns a `*_columns!` macro lists, `VALUES values`.
macro_rules! insert {
    ($table:literal, $columns:ident, $values:literal $(,)?) => {
        concat!(
            "INSERT INTO ",
            $table,
            " (",
            $columns!(),
            ") VALUES ",
            $values
        )
    };
}

/// Every column of `credentials`, in [`CredentialRecord`] order.
macro_rules! credential_columns {
    () => {
        "id, workspace_id, provider_id, account_subject, account_label, display_name, \
         description, scopes, status, status_reason, created_by, created_at, updated_at, \
         last_used_at, last_refreshed_at, access_expires_at, next_refresh_at, \
         refresh_token_expires_at, has_refresh_token, sealed_tokens, dek_wrapped, dek_key_id, \
         dek_key_version, row_version, lease_holder, lease_fence, lease_expires_at, health, \
         health_cause, health_since, health_failures, health_error_code"
    };
}

pub(crate) const INSERT_CREDENTIAL: &str = insert!(
    "credentials",
    credential_columns,
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
     $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32)"
);

pub(crate) const GET_CREDENTIAL: &str =
    select!(credential_columns, " FROM credentials WHERE id = $1");

pub(crate) const CREDENTIAL_EXISTS: &str = "SELECT id FROM credentials WHERE id = $1";

pub(crate) const FIND_CREDENTIAL_BY_ACCOUNT: &str = select!(
    credential_columns,
    " FROM credentials WHERE workspace_id = $1 AND provider_id = $2 AND account_subject = $3 \
     AND status <> 'DISCONNECTED'"
);

pub(crate) const LIVE_CREDENTIALS_OF_ACCOUNT: &str = "SELECT id FROM credentials \
     WHERE provider_id = $1 AND account_subject = $2 AND status <> 'DISCONNECTED' ORDER BY id";

/// SETs the wrapped-DEK columns for a write of `sealed` tokens (followed by `, `): a
/// credential keeps its data key for life, so the new wrapping is only taken when the row has
/// none, and all three are cleared with the tokens.
macro_rules! keep_dek {
    ($sealed:literal, $wrapped:literal, $key_id:literal, $version:literal) => {
        concat!(
            "dek_wrapped = CASE WHEN ",
            $sealed,
            " IS NULL THEN NULL \
             WHEN dek_wrapped IS NULL THEN ",
            $wrapped,
            " ELSE dek_wrapped END, \
             dek_key_id = CASE WHEN ",
            $sealed,
            " IS NULL THEN NULL \
             WHEN dek_wrapped IS NULL THEN ",
            $key_id,
            " ELSE dek_key_id END, \
             dek_key_version = CASE WHEN ",
            $sealed,
            " IS NULL THEN NULL \
             WHEN dek_wrapped IS NULL THEN ",
            $version,
            " ELSE dek_key_version END, "
        )
    };
}

/// Writes every mutable column; `row_version = row_version + 1` is safe because the WHERE
/// clause pins the old value. Lease columns are left to the lease operations, except that a
/// disconnect releases the lease (the fence stays), so an in-flight refresh cannot complete.
/// `last_used_at` only moves forward, NULL-safe (a NULL on either side keeps the other value):
/// usage is flushed in the background without a version bump, and an edit built from an older
/// read must not erase it.
/// A credential keeps its data key for life, so writers re-seal under the same DEK: the
/// wrapped-DEK columns are only set when the row has none, and cleared with the tokens. A
/// writer that read the row before `rotate-keys` re-wrapped its DEK thus cannot put the old
/// wrapping back.
pub(crate) const UPDATE_CREDENTIAL: &str = concat!(
    "UPDATE credentials SET account_subject = $3, account_label = $4, display_name = $5, \
     description = $6, scopes = $7, status = $8, status_reason = $9, updated_at = $10, \
     last_used_at = CASE WHEN last_used_at IS NULL OR $11 > last_used_at THEN $11 \
     ELSE last_used_at END, last_refreshed_at = $12, access_expires_at = $13, \
     next_refresh_at = $14, refresh_token_expires_at = $15, sealed_tokens = $16, ",
    keep_dek!("$16", "$17", "$18", "$19"),
    "has_refresh_token = $20, \
     health = $21, health_cause = $22, health_since = $23, health_failures = $24, \
     health_error_code = $25, \
     lease_holder = CASE WHEN $8 = 'DISCONNECTED' THEN NULL ELSE lease_holder END, \
     lease_expires_at = CASE WHEN $8 = 'DISCONNECTED' THEN NULL ELSE lease_expires_at END, \
     row_version = row_version + 1 \
     WHERE id = $1 AND row_version = $2 RETURNING ",
    credential_columns!()
);

/// Takes the refresh lease if it is free or lapsed. A holder without an expiry (only possible
/// through a hand-edited row) counts as lapsed rather than blocking refreshes forever.
/// Bind: id, holder, now, lease_until.
pub(crate) const ACQUIRE_REFRESH_LEASE: &str = concat!(
    "UPDATE credentials SET lease_holder = $2, lease_fence = lease_fence + 1, \
     lease_expires_at = $4 \
     WHERE id = $1 AND status = 'ACTIVE' \
     AND (lease_holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= $3) \
     RETURNING ",
    credential_columns!()
);

/// Writes a refresh result under the fencing token and releases the lease (fence unchanged).
/// Only the columns a refresh owns are written, so a concurrent rename survives. The wrapped
/// DEK is kept when the row has one (see [`UPDATE_CREDENTIAL`]).
pub(crate) const COMPLETE_REFRESH: &str = concat!(
    "UPDATE credentials SET sealed_tokens = $3, ",
    keep_dek!("$3", "$4", "$5", "$6"),
    "has_refresh_token = $7, access_expires_at = $8, \
     refresh_token_expires_at = $9, next_refresh_at = $10, last_refreshed_at = $11, \
     status = $12, status_reason = $13, updated_at = $14, \
     health = $15, health_cause = $16, health_since = $17, health_failures = $18, \
     health_error_code = $19, \
     lease_holder = NULL, lease_expires_at = NULL, row_version = row_version + 1, \
     refresh_intent_holder = NULL, refresh_intent_fence = NULL, \
     refresh_intent_started_at = NULL, refresh_intent_token_sha256 = NULL \
     WHERE id = $1 AND lease_fence = $2 AND lease_holder IS NOT NULL \
     AND status <> 'DISCONNECTED' RETURNING ",
    credential_columns!()
);

/// A refresh failure that leaves status and tokens alone: the health, its cause and error code,
/// one more failure, and `health_since` kept while the health stays the same (SET expressions
/// read the old row on both databases). No row_version bump: health is not an edit.
/// Bind: id, health, cause, error_code, at.
pub(crate) const RECORD_REFRESH_FAILURE: &str = concat!(
    "UPDATE credentials SET \
     health_since = CASE WHEN health = $2 AND health_since IS NOT NULL THEN health_since \
     ELSE $5 END, \
     health = $2, health_cause = $3, health_error_code = $4, \
     health_failures = health_failures + 1 \
     WHERE id = $1 AND status <> 'DISCONNECTED' RETURNING ",
    credential_columns!()
);

/// ACTIVE credentials whose grant ends by the horizon and are not marked EXPIRING yet,
/// soonest first. Bind: horizon, limit.
pub(crate) const GRANTS_ENDING: &str = select!(
    credential_columns,
    " FROM credentials WHERE status = 'ACTIVE' AND refresh_token_expires_at IS NOT NULL \
     AND refresh_token_expires_at <= $1 AND health <> 'EXPIRING' \
     ORDER BY refresh_token_expires_at, id LIMIT $2"
);

/// Sets a health that is not a refresh failure (failures kept), only when it changes and the
/// credential is ACTIVE. Bind: id, health, cause, at.
pub(crate) const MARK_HEALTH: &str = "UPDATE credentials SET health = $2, health_cause = $3, \
     health_since = $4, health_error_code = NULL \
     WHERE id = $1 AND status = 'ACTIVE' AND health <> $2";

/// Credentials per health, every workspace (metrics), DISCONNECTED ones excluded.
pub(crate) const COUNT_CREDENTIALS_BY_HEALTH: &str = "SELECT health, COUNT(*) FROM credentials \
     WHERE status <> 'DISCONNECTED' GROUP BY health ORDER BY health";

/// Releases the lease without writing anything else. Bind: id, fence.
pub(crate) const RELEASE_REFRESH_LEASE: &str = "UPDATE credentials \
     SET lease_holder = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_fence = $2 AND lease_holder IS NOT NULL";

/// [`ACQUIRE_REFRESH_LEASE`] on the database clock `now` (an SQL expression; SQLite: `$4`).
/// Bind: id, holder, lease_ms, local_now.
pub(crate) fn take_refresh_lease(now: &str) -> String {
    format!(
        "UPDATE credentials SET lease_holder = $2, lease_fence = lease_fence + 1, \
         lease_expires_at = {now} + $3 \
         WHERE id = $1 AND status = 'ACTIVE' \
         AND (lease_holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {now}) \
         RETURNING {}",
        credential_columns!()
    )
}

/// Extends a held lease from the database clock `now`. Bind: id, fence, lease_ms, local_now.
pub(crate) fn renew_refresh_lease(now: &str) -> String {
    format!(
        "UPDATE credentials SET lease_expires_at = {now} + $3 \
         WHERE id = $1 AND lease_fence = $2 AND lease_holder IS NOT NULL"
    )
}

/// 1 when the lease is free or lapsed by the database clock `now`. Bind: id, local_now.
pub(crate) fn refresh_lease_lapsed(now: &str) -> String {
    format!(
        "SELECT CAST(CASE WHEN lease_holder IS NULL OR lease_expires_at IS NULL \
         OR lease_expires_at <= {now} THEN 1 ELSE 0 END AS BIGINT) FROM credentials WHERE id = $1"
    )
}

/// Leases up to `limit` due credentials at once, soonest first, skipping leases held by others
/// and (`skip_locked`, PostgreSQL) rows another transaction is claiming.
/// The ids are one materialized set, locked once: a `LIMIT … SKIP LOCKED` subquery under `IN`
/// may be re-run by the plan, locking and claiming rows past the limit.
/// Bind: holder, local_now, lease_ms, limit.
pub(crate) fn claim_due_refreshes(now: &str, skip_locked: &str) -> String {
    format!(
        "WITH due AS MATERIALIZED (SELECT id FROM credentials WHERE status = 'ACTIVE' \
         AND next_refresh_at <= $2 \
         AND (lease_holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {now}) \
         ORDER BY next_refresh_at, id LIMIT $4{skip_locked}) \
         UPDATE credentials SET lease_holder = $1, lease_fence = lease_fence + 1, \
         lease_expires_at = {now} + $3 \
         WHERE id IN (SELECT id FROM due) \
         AND status = 'ACTIVE' \
         AND (lease_holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {now}) \
         RETURNING {}",
        credential_columns!()
    )
}

/// Bind: id, fence, holder, started_at, token_sha256.
pub(crate) const RECORD_REFRESH_INTENT: &str = "UPDATE credentials \
     SET refresh_intent_holder = $3, refresh_intent_fence = $2, \
     refresh_intent_started_at = $4, refresh_intent_token_sha256 = $5 \
     WHERE id = $1 AND lease_fence = $2 AND lease_holder IS NOT NULL";

/// Bind: id.
pub(crate) const GET_REFRESH_INTENT: &str = "SELECT refresh_intent_holder AS holder, \
     refresh_intent_fence AS fence, refresh_intent_started_at AS started_at, \
     refresh_intent_token_sha256 AS token_sha256 FROM credentials \
     WHERE id = $1 AND refresh_intent_fence IS NOT NULL AND refresh_intent_holder IS NOT NULL \
     AND refresh_intent_started_at IS NOT NULL AND refresh_intent_token_sha256 IS NOT NULL";

/// Reads the partial index `credentials_refresh_due_idx` in order. Bind: now, limit.
pub(crate) const DUE_FOR_REFRESH: &str = "SELECT id FROM credentials \
     WHERE status = 'ACTIVE' AND next_refresh_at <= $1 \
     ORDER BY next_refresh_at, id LIMIT $2";

/// Moves `last_used_at` forward only; no row_version bump (usage is not an edit).
/// Bind: id, at.
pub(crate) const TOUCH_CREDENTIAL_USAGE: &str = "UPDATE credentials SET last_used_at = $2 \
     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";

/// Upserts (credential, workflow) → max(last_used_at) for a `VALUES` list of (credential id,
/// workflow id, at) spliced between the two halves; inserts nothing for an unknown credential.
/// Rows are written in key order, so concurrent batches lock them in the same order. (SQLite
/// needs the WHERE on `INSERT ... SELECT` before `ON CONFLICT`.)
pub(crate) const UPSERT_WORKFLOW_USAGE_HEAD: &str = "INSERT INTO credential_workflow_usage \
     (credential_id, workflow_id, last_used_at) \
     SELECT v.column1, v.column2, v.column3 FROM (";

/// See [`UPSERT_WORKFLOW_USAGE_HEAD`].
pub(crate) const UPSERT_WORKFLOW_USAGE_TAIL: &str = ") AS v \
     WHERE EXISTS (SELECT 1 FROM credentials WHERE credentials.id = v.column1) \
     ORDER BY v.column1, v.column2 \
     ON CONFLICT (credential_id, workflow_id) DO UPDATE SET last_used_at = excluded.last_used_at \
     WHERE credential_workflow_usage.last_used_at < excluded.last_used_at";

pub(crate) const RECENT_WORKFLOWS: &str = "SELECT workflow_id, last_used_at \
     FROM credential_workflow_usage WHERE credential_id = $1 \
     ORDER BY last_used_at DESC, workflow_id LIMIT $2";

pub(crate) const COUNT_WORKFLOWS: &str =
    "SELECT COUNT(*) FROM credential_workflow_usage WHERE credential_id = $1";

/// Every column of `connect_sessions`, in [`ConnectSessionRow`](crate::model::ConnectSessionRow)
/// order.
macro_rules! connect_session_columns {
    () => {
        "state_hash, workspace_id, provider_id, scopes, redirect_uri, pkce_verifier, \
         pkce_dek_wrapped, pkce_dek_key_id, pkce_dek_key_version, reconnect_credential_id, \
         display_name, description, created_by, created_by_email, created_at, expires_at, \
         consumed_at, oauth_app_id"
    };
}

pub(crate) const INSERT_CONNECT_SESSION: &str = insert!(
    "connect_sessions",
    connect_session_columns,
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
);

pub(crate) const GET_CONNECT_SESSION: &str = select!(
    connect_session_columns,
    " FROM connect_sessions WHERE state_hash = $1"
);

/// Single use: the row lock (PostgreSQL: a racing UPDATE re-checks the WHERE clause against
/// the winner's committed row; SQLite: one writer at a time) lets exactly one caller match.
/// Bind: state_hash, now.
pub(crate) const CONSUME_CONNECT_SESSION: &str = "UPDATE connect_sessions SET consumed_at = $2 \
     WHERE state_hash = $1 AND consumed_at IS NULL AND expires_at > $2";

/// Deletes at most one batch of expired sessions (bind: older_than, batch size);
/// `prune_connect_sessions` repeats it, like [`PRUNE_AUDIT_BATCH`], and reads
/// `connect_sessions_expires_idx`.
pub(crate) const PRUNE_CONNECT_SESSIONS_BATCH: &str = "DELETE FROM connect_sessions \
     WHERE state_hash IN (SELECT state_hash FROM connect_sessions WHERE expires_at < $1 LIMIT $2)";

/// Binds a [`ConnectSessionRow`](crate::model::ConnectSessionRow) to
/// [`INSERT_CONNECT_SESSION`] ($1..$17).
macro_rules! bind_connect_session {
    ($query:expr, $session:expr) => {{
        let s: &$crate::model::ConnectSessionRow = $session;
        $query
            .bind(s.state_hash.as_str())
            .bind(s.workspace_id.as_str())
            .bind(s.provider_id.as_str())
            .bind(s.scopes.as_str())
            .bind(s.redirect_uri.as_str())
            .bind(s.pkce_verifier.as_deref())
            .bind(s.pkce_dek_wrapped.as_deref())
            .bind(s.pkce_dek_key_id.as_deref())
            .bind(s.pkce_dek_key_version)
            .bind(s.reconnect_credential_id.as_deref())
            .bind(s.display_name.as_deref())
            .bind(s.description.as_deref())
            .bind(s.created_by.as_str())
            .bind(s.created_by_email.as_str())
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(s.consumed_at)
            .bind(s.oauth_app_id.as_deref())
    }};
}
pub(crate) use bind_connect_session;

macro_rules! member_columns {
    () => {
        "credential_id, email, user_id, role, state, invited_by, created_at, updated_at"
    };
}

/// Followed by a `VALUES` list of [`MemberRow`](crate::model::MemberRow)s.
pub(crate) const INSERT_MEMBERS: &str =
    concat!("INSERT INTO credential_members (", member_columns!(), ") ");

/// Follows [`INSERT_MEMBERS`] and one row: replaces the member if it exists.
pub(crate) const UPSERT_MEMBER_TAIL: &str = " ON CONFLICT (credential_id, email) DO UPDATE \
     SET user_id = excluded.user_id, role = excluded.role, state = excluded.state, \
     invited_by = excluded.invited_by, created_at = excluded.created_at, \
     updated_at = excluded.updated_at";

pub(crate) const LIST_MEMBERS: &str = select!(
    member_columns,
    " FROM credential_members WHERE credential_id = $1 ORDER BY email"
);

pub(crate) const GET_MEMBER: &str = select!(
    member_columns,
    " FROM credential_members WHERE credential_id = $1 AND email = $2"
);

/// Accepts an invitation only while it is one. Bind: credential id, email, user id, updated_at.
pub(crate) const ACCEPT_MEMBER: &str = "UPDATE credential_members \
     SET state = 'ACTIVE', user_id = $3, updated_at = $4 \
     WHERE credential_id = $1 AND email = $2 AND state = 'INVITED'";

/// Writes the role alone. Bind: credential id, email, role, updated_at.
pub(crate) const SET_MEMBER_ROLE: &str = "UPDATE credential_members \
     SET role = $3, updated_at = $4 WHERE credential_id = $1 AND email = $2";

pub(crate) const DELETE_MEMBER: &str =
    "DELETE FROM credential_members WHERE credential_id = $1 AND email = $2";

pub(crate) const COUNT_ACTIVE_ADMINS: &str = "SELECT COUNT(*) FROM credential_members \
     WHERE credential_id = $1 AND role = 'ADMIN' AND state = 'ACTIVE'";

/// PostgreSQL: the channel every replica LISTENs on; the payload is the credential id (see
/// `NOTIFY_CHANGE` of the PostgreSQL backend).
pub(crate) const CHANGE_CHANNEL: &str = "cb_credential_changed";

/// Followed by a `VALUES` list of [`NewAuditEvent`](crate::model::NewAuditEvent)s.
pub(crate) const INSERT_AUDIT_EVENTS: &str = "INSERT INTO audit_events \
     (at, service, actor, action, credential_id, outcome, detail) ";

/// Rows per multi-row INSERT: 8 binds each stay far below both databases' limits on bound
/// parameters (SQLite 32766, PostgreSQL 65535).
pub(crate) const ROWS_PER_INSERT: usize = 1_000;

macro_rules! audit_columns {
    () => {
        "id, at, service, actor, action, credential_id, outcome, detail"
    };
}
pub(crate) use {audit_columns, credential_columns};

/// Deletes at most one batch of old events (bind: older_than, batch size); `prune_audit`
/// repeats it so no single statement holds locks on the whole backlog.
pub(crate) const PRUNE_AUDIT_BATCH: &str = "DELETE FROM audit_events WHERE id IN \
     (SELECT id FROM audit_events WHERE at < $1 LIMIT $2)";

/// Followed by a `VALUES` list of [`NewCredentialEvent`](crate::model::NewCredentialEvent)s.
pub(crate) const INSERT_CREDENTIAL_EVENTS: &str = "INSERT INTO credential_events \
     (event_id, at, workspace_id, credential_id, kind, actor, cause, detail) ";

/// Followed by the bound cursor and the filters of `list_credential_events`.
pub(crate) const SELECT_CREDENTIAL_EVENTS: &str = "SELECT id, event_id, at, workspace_id, \
     credential_id, kind, actor, cause, detail FROM credential_events WHERE id > ";

/// Followed by the bound user id, `" OR email = "`, the bound email and `"))"`: events of
/// credentials the user is an ACTIVE member of.
pub(crate) const EVENTS_OF_MEMBER_HEAD: &str = " AND credential_id IN (SELECT credential_id \
     FROM credential_members WHERE state = 'ACTIVE' AND (user_id = ";

/// Deletes at most one batch of old lifecycle events, like [`PRUNE_AUDIT_BATCH`].
pub(crate) const PRUNE_CREDENTIAL_EVENTS_BATCH: &str = "DELETE FROM credential_events \
     WHERE id IN (SELECT id FROM credential_events WHERE at < $1 LIMIT $2)";

/// Followed by the bound `(event_id, …)` list of `insert_events`: one pending delivery per
/// (enabled endpoint of the event's workspace whose type filter admits the event, event). The
/// filter is an exact match in the comma list (`replace`, not `LIKE`: `_` is a wildcard there
/// and SQLite's LIKE ignores case).
/// Workspace events (no credential) are
/// ordered among themselves under the empty credential id.
pub(crate) const FAN_OUT_DELIVERIES_HEAD: &str = "INSERT INTO webhook_deliveries \
     (endpoint_id, event_row_id, credential_id, state, attempts, next_attempt_at, created_at) \
     SELECT w.id, ev.id, COALESCE(ev.credential_id, ''), 'PENDING', 0, ev.at, ev.at \
     FROM credential_events ev JOIN webhook_endpoints w ON w.workspace_id = ev.workspace_id \
     WHERE w.disabled_at IS NULL \
     AND (w.event_types IS NULL OR length(',' || w.event_types || ',') \
       <> length(replace(',' || w.event_types || ',', ',' || ev.kind || ',', ''))) \
     AND ev.event_id IN ";

/// Bind: id, workspace_id, url, now, event_types.
pub(crate) const UPSERT_WEBHOOK_ENDPOINT: &str = "INSERT INTO webhook_endpoints \
     (id, workspace_id, url, failing_since, disabled_at, updated_at, event_types) \
     VALUES ($1, $2, $3, NULL, NULL, $4, $5) \
     ON CONFLICT (id) DO UPDATE SET event_types = excluded.event_types, \
     failing_since = CASE WHEN webhook_endpoints.url = excluded.url \
       AND webhook_endpoints.workspace_id = excluded.workspace_id \
       THEN webhook_endpoints.failing_since ELSE NULL END, \
     disabled_at = CASE WHEN webhook_endpoints.url = excluded.url \
       AND webhook_endpoints.workspace_id = excluded.workspace_id \
       THEN webhook_endpoints.disabled_at ELSE NULL END, \
     workspace_id = excluded.workspace_id, url = excluded.url, updated_at = excluded.updated_at \
     WHERE webhook_endpoints.source = 'CONFIG'";

/// Leases a batch of due deliveries (see `Store::claim_webhook_deliveries`); the ids are one
/// materialized set, as in [`claim_due_refreshes`].
/// Bind: holder, now, lease_ms, limit.
pub(crate) fn claim_webhook_deliveries(skip_locked: &str) -> String {
    format!(
        "WITH due AS MATERIALIZED (SELECT d.id FROM webhook_deliveries d WHERE d.state = 'PENDING' \
         AND d.next_attempt_at <= $2 \
         AND (d.lease_holder IS NULL OR d.lease_expires_at <= $2) \
         AND d.endpoint_id IN (SELECT id FROM webhook_endpoints WHERE disabled_at IS NULL) \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.endpoint_id = d.endpoint_id \
           AND e.credential_id = d.credential_id AND e.state = 'PENDING' AND e.id < d.id) \
         ORDER BY d.id LIMIT $4{skip_locked}) \
         UPDATE webhook_deliveries SET lease_holder = $1, lease_expires_at = $2 + $3 \
         WHERE id IN (SELECT id FROM due) \
         AND (lease_holder IS NULL OR lease_expires_at <= $2) RETURNING id"
    )
}

/// The claimed deliveries of `holder` with their events. Bind: holder.
pub(crate) const CLAIMED_DELIVERIES: &str = "SELECT d.id AS delivery_id, d.endpoint_id, \
     d.attempts, ev.id, ev.event_id, ev.at, ev.workspace_id, ev.credential_id, ev.kind, \
     ev.actor, ev.cause, ev.detail \
     FROM webhook_deliveries d JOIN credential_events ev ON ev.id = d.event_row_id \
     WHERE d.lease_holder = $1 AND d.state = 'PENDING' ORDER BY d.id";

/// A delivered attempt. Bind: id, holder, at, status.
pub(crate) const DELIVERY_SUCCEEDED: &str = "UPDATE webhook_deliveries SET state = 'DELIVERED', \
     attempts = attempts + 1, delivered_at = $3, last_status = $4, last_error = NULL, \
     lease_holder = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_holder = $2";

/// A failed attempt. Bind: id, holder, next_attempt_at, status, error.
pub(crate) const DELIVERY_FAILED: &str = "UPDATE webhook_deliveries SET \
     attempts = attempts + 1, next_attempt_at = $3, last_status = $4, last_error = $5, \
     lease_holder = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_holder = $2";

/// Bind: endpoint id.
pub(crate) const ENDPOINT_SUCCEEDED: &str =
    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1";

/// Bind: endpoint id, at.
pub(crate) const ENDPOINT_FAILED: &str = "UPDATE webhook_endpoints \
     SET failing_since = COALESCE(failing_since, $2) WHERE id = $1";

/// Bind: endpoint id, at, disable_failing_since.
pub(crate) const DISABLE_FAILING_ENDPOINT: &str = "UPDATE webhook_endpoints SET disabled_at = $2 \
     WHERE id = $1 AND disabled_at IS NULL AND failing_since <= $3";

/// Bind: endpoint id, limit, after id.
pub(crate) const LIST_WEBHOOK_DELIVERIES: &str = "SELECT id, endpoint_id, event_row_id, \
     credential_id, state, attempts, next_attempt_at, last_status, last_error, delivered_at \
     FROM webhook_deliveries WHERE endpoint_id = $1 AND id > $3 ORDER BY id LIMIT $2";

/// Every column of `webhook_endpoints`, in [`WebhookEndpointRow`](crate::model::WebhookEndpointRow)
/// order.
macro_rules! webhook_endpoint_columns {
    () => {
        "id, workspace_id, url, event_types, description, source, failing_since, disabled_at, \
         updated_at"
    };
}

/// Bind: endpoint id.
pub(crate) const WEBHOOK_ENDPOINT: &str = concat!(
    "SELECT ",
    webhook_endpoint_columns!(),
    " FROM webhook_endpoints WHERE id = $1"
);

/// A workspace's endpoints, by id. Bind: workspace id.
pub(crate) const LIST_WEBHOOK_ENDPOINTS: &str = concat!(
    "SELECT ",
    webhook_endpoint_columns!(),
    " FROM webhook_endpoints WHERE workspace_id = $1 ORDER BY id"
);

/// Bind: id, workspace_id, url, updated_at, event_types, description.
pub(crate) const INSERT_WEBHOOK_ENDPOINT: &str = "INSERT INTO webhook_endpoints \
     (id, workspace_id, url, failing_since, disabled_at, updated_at, event_types, description, \
     source) VALUES ($1, $2, $3, NULL, NULL, $4, $5, $6, 'API')";

/// An API endpoint's settings; `$6` true forgets its failures (re-enables it).
/// Bind: id, url, event_types, description, updated_at, reset.
pub(crate) const UPDATE_WEBHOOK_ENDPOINT: &str = concat!(
    "UPDATE webhook_endpoints SET url = $2, event_types = $3, description = $4, updated_at = $5, \
     failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END, \
     disabled_at = CASE WHEN $6 THEN NULL ELSE disabled_at END \
     WHERE id = $1 AND source = 'API' RETURNING ",
    webhook_endpoint_columns!()
);

/// Before a delete, in its own transaction: events written from then on no longer fan out to
/// the endpoint, so none is inserting a delivery for it when it goes (that insert's foreign key
/// check would fail the event's own transaction). Bind: id, now.
pub(crate) const RETIRE_WEBHOOK_ENDPOINT: &str = "UPDATE webhook_endpoints \
     SET disabled_at = COALESCE(disabled_at, $2) WHERE id = $1 AND source = 'API'";

/// Its secrets and delivery log go with it (`ON DELETE CASCADE`; SQLite connections enable
/// foreign keys). Configured endpoints are never deleted. Bind: id.
pub(crate) const DELETE_WEBHOOK_ENDPOINT: &str =
    "DELETE FROM webhook_endpoints WHERE id = $1 AND source = 'API'";

/// Bind: endpoint id, version, ciphertext, dek_wrapped, dek_key_id, dek_key_version, created_at.
pub(crate) const INSERT_WEBHOOK_SECRET: &str = "INSERT INTO webhook_endpoint_secrets \
     (endpoint_id, version, ciphertext, dek_wrapped, dek_key_id, dek_key_version, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Newest first. Bind: endpoint id.
pub(crate) const LIST_WEBHOOK_SECRETS: &str = "SELECT endpoint_id, version, ciphertext, \
     dek_wrapped, dek_key_id, dek_key_version, created_at FROM webhook_endpoint_secrets \
     WHERE endpoint_id = $1 ORDER BY version DESC";

/// Bind: endpoint id, version.
pub(crate) const DELETE_WEBHOOK_SECRET: &str =
    "DELETE FROM webhook_endpoint_secrets WHERE endpoint_id = $1 AND version = $2";

/// Rows deleted per `PRUNE_AUDIT_BATCH` / `PRUNE_CONNECT_SESSIONS_BATCH` statement.
pub(crate) const PRUNE_BATCH_SIZE: i64 = 5_000;

pub(crate) const KEY_USAGE: &str = "SELECT dek_key_id AS key_id, dek_key_version AS key_version, \
     COUNT(*) AS credentials, MIN(id) AS sample_credential_id FROM credentials \
     WHERE dek_key_id IS NOT NULL GROUP BY dek_key_id, dek_key_version \
     ORDER BY dek_key_id, dek_key_version";

/// Key rotation: data keys not wrapped by the given key, in id order (keyset on the primary
/// key; `''` starts at the beginning). Bind: key_id, key_version, after_id, limit.
pub(crate) const DEK_ROWS_NOT_ON_KEY: &str = "SELECT id AS credential_id, workspace_id, \
     dek_wrapped, dek_key_id, dek_key_version FROM credentials \
     WHERE dek_wrapped IS NOT NULL AND NOT (dek_key_id = $1 AND dek_key_version = $2) \
     AND id > $3 ORDER BY id LIMIT $4";

/// Key rotation: compare-and-swap of the wrapped data key only. Bind: id, old wrapped, old key
/// id, old version, new wrapped, new key id, new version.
pub(crate) const REWRAP_DEK: &str = "UPDATE credentials \
     SET dek_wrapped = $5, dek_key_id = $6, dek_key_version = $7 \
     WHERE id = $1 AND dek_wrapped = $2 AND dek_key_id = $3 AND dek_key_version = $4";

/// Credentials per status, every workspace (metrics); a full scan, run every few seconds at most.
pub(crate) const COUNT_CREDENTIALS_BY_STATUS: &str =
    "SELECT status, COUNT(*) FROM credentials GROUP BY status ORDER BY status";

/// Binds a credential's sealed tokens and their wrapped data key (4 values, all NULL when the
/// row holds no tokens).
macro_rules! bind_sealed {
    ($query:expr, $row:expr) => {{
        let sealed = $row.sealed.as_ref();
        $query
            .bind(sealed.map(|s| s.ciphertext.as_slice()))
            .bind(sealed.map(|s| s.dek_wrapped.as_slice()))
            .bind(sealed.map(|s| s.dek_key_id.as_str()))
            .bind(sealed.map(|s| s.dek_key_version))
    }};
}
pub(crate) use bind_sealed;

/// Binds a credential's health columns (5 values).
macro_rules! bind_health {
    ($query:expr, $row:expr) => {
        $query
            .bind($row.health.health.as_str())
            .bind($row.health.cause.as_deref())
            .bind($row.health.since)
            .bind($row.health.failures)
            .bind($row.health.error_code.as_deref())
    };
}
pub(crate) use bind_health;

/// Binds a refresh result and the fencing token to [`COMPLETE_REFRESH`] ($1..$19).
macro_rules! bind_complete_refresh {
    ($query:expr, $row:expr, $fence:expr) => {{
        let row: &$crate::model::CredentialRow = $row;
        let query = $crate::sql::bind_sealed!($query.bind(row.id.as_str()).bind($fence), row)
            .bind(row.has_refresh_token)
            .bind(row.access_expires_at)
            .bind(row.refresh_token_expires_at)
            .bind(row.next_refresh_at)
            .bind(row.last_refreshed_at)
            .bind(row.status.as_str())
            .bind(row.status_reason.as_deref())
            .bind(row.updated_at);
        $crate::sql::bind_health!(query, row)
    }};
}
pub(crate) use bind_complete_refresh;

/// Merges a usage batch: per credential the latest use, per (credential, workflow) the latest
/// use, both sorted by key so concurrent batches lock rows in the same order (no deadlocks).
pub(crate) fn merge_usage(batch: &[UsageRecord]) -> MergedUsage<'_> {
    let mut credentials: BTreeMap<&str, i64> = BTreeMap::new();
    let mut workflows: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for r in batch {
        let at = credentials.entry(r.credential_id.as_str()).or_insert(r.at);
        *at = (*at).max(r.at);
        if let Some(workflow_id) = &r.workflow_id {
            let at = workflows
                .entry((r.credential_id.as_str(), workflow_id.as_str()))
                .or_insert(r.at);
            *at = (*at).max(r.at);
        }
    }
    MergedUsage {
        credentials,
        workflows,
    }
}

/// A usage batch reduced to one write per row, see [`merge_usage`].
pub(crate) struct MergedUsage<'a> {
    /// credential id → latest use.
    pub(crate) credentials: BTreeMap<&'a str, i64>,
    /// (credential id, workflow id) → latest use.
    pub(crate) workflows: BTreeMap<(&'a str, &'a str), i64>,
}

/// Binds a [`CredentialRow`] to [`INSERT_CREDENTIAL`] ($1..$32).
macro_rules! bind_insert_credential {
    ($query:expr, $row:expr) => {{
        let row: &$crate::model::CredentialRow = $row;
        let query = $query
            .bind(row.id.as_str())
            .bind(row.workspace_id.as_str())
            .bind(row.provider_id.as_str())
            .bind(row.account_subject.as_str())
            .bind(row.account_label.as_str())
            .bind(row.display_name.as_str())
            .bind(row.description.as_str())
            .bind(row.scopes.as_str())
            .bind(row.status.as_str())
            .bind(row.status_reason.as_deref())
            .bind(row.created_by.as_str())
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(row.last_used_at)
            .bind(row.last_refreshed_at)
            .bind(row.access_expires_at)
            .bind(row.next_refresh_at)
            .bind(row.refresh_token_expires_at)
            .bind(row.has_refresh_token);
        let query = $crate::sql::bind_sealed!(query, row)
            .bind(row.row_version)
            .bind(row.lease.holder.as_deref())
            .bind(row.lease.fence)
            .bind(row.lease.expires_at);
        $crate::sql::bind_health!(query, row)
    }};
}
pub(crate) use bind_insert_credential;

/// Binds a [`CredentialRow`] and the expected version to [`UPDATE_CREDENTIAL`] ($1..$25).
macro_rules! bind_update_credential {
    ($query:expr, $row:expr, $expected:expr) => {{
        let row: &$crate::model::CredentialRow = $row;
        let query = $query
            .bind(row.id.as_str())
            .bind($expected)
            .bind(row.account_subject.as_str())
            .bind(row.account_label.as_str())
            .bind(row.display_name.as_str())
            .bind(row.description.as_str())
            .bind(row.scopes.as_str())
            .bind(row.status.as_str())
            .bind(row.status_reason.as_deref())
            .bind(row.updated_at)
            .bind(row.last_used_at)
            .bind(row.last_refreshed_at)
            .bind(row.access_expires_at)
            .bind(row.next_refresh_at)
            .bind(row.refresh_token_expires_at);
        let query = $crate::sql::bind_sealed!(query, row).bind(row.has_refresh_token);
        $crate::sql::bind_health!(query, row)
    }};
}
pub(crate) use bind_update_credential;

/// A claimed delivery as [`CLAIMED_DELIVERIES`] returns it.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRecord {
    pub(crate) delivery_id: i64,
    pub(crate) endpoint_id: String,
    pub(crate) attempts: i64,
    #[sqlx(flatten)]
    pub(crate) event: crate::model::CredentialEventRow,
}

/// The flat `credentials` row as the database returns it.
#[derive(sqlx::FromRow)]
pub(crate) struct CredentialRecord {
    id: String,
    workspace_id: String,
    provider_id: String,
    account_subject: String,
    account_label: String,
    display_name: String,
    description: String,
    scopes: String,
    status: String,
    status_reason: Option<String>,
    created_by: String,
    created_at: i64,
    updated_at: i64,
    last_used_at: Option<i64>,
    last_refreshed_at: Option<i64>,
    access_expires_at: Option<i64>,
    next_refresh_at: Option<i64>,
    refresh_token_expires_at: Option<i64>,
    has_refresh_token: bool,
    sealed_tokens: Option<Vec<u8>>,
    dek_wrapped: Option<Vec<u8>>,
    dek_key_id: Option<String>,
    dek_key_version: Option<i64>,
    row_version: i64,
    lease_holder: Option<String>,
    lease_fence: i64,
    lease_expires_at: Option<i64>,
    health: String,
    health_cause: Option<String>,
    health_since: Option<i64>,
    health_failures: i64,
    health_error_code: Option<String>,
}

impl TryFrom<CredentialRecord> for CredentialRow {
    type Error = StoreError;

    fn try_from(r: CredentialRecord) -> Result<Self, StoreError> {
        let sealed = match (
            r.sealed_tokens,
            r.dek_wrapped,
            r.dek_key_id,
            r.dek_key_version,
        ) {
            (Some(ciphertext), Some(dek_wrapped), Some(dek_key_id), Some(dek_key_version)) => {
                Some(SealedColumns {
                    ciphertext,
                    dek_wrapped,
                    dek_key_id,
                    dek_key_version,
                })
            }
            (None, None, None, None) => None,
            // The schema's CHECK forbids this; a row edited by hand could still get here.
            _ => {
                return Err(StoreError::Database(
                    "credential has an incomplete sealed token bundle".into(),
                ));
            }
        };
        Ok(CredentialRow {
            id: r.id,
            workspace_id: r.workspace_id,
            provider_id: r.provider_id,
            account_subject: r.account_subject,
            account_label: r.account_label,
            display_name: r.display_name,
            description: r.description,
            scopes: r.scopes,
            status: r.status,
            status_reason: r.status_reason,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_used_at: r.last_used_at,
            last_refreshed_at: r.last_refreshed_at,
            access_expires_at: r.access_expires_at,
            next_refresh_at: r.next_refresh_at,
            refresh_token_expires_at: r.refresh_token_expires_at,
            has_refresh_token: r.has_refresh_token,
            sealed,
            row_version: r.row_version,
            lease: LeaseColumns {
                holder: r.lease_holder,
                fence: r.lease_fence,
                expires_at: r.lease_expires_at,
            },
            health: HealthColumns {
                health: r.health,
                cause: r.health_cause,
                since: r.health_since,
                failures: r.health_failures,
                error_code: r.health_error_code,
            },
        })
    }
}

/// The last-admin rule, given the number of ACTIVE ADMIN members before and after a change
/// (both counted under the per-credential lock): a change may not take it from at least one to
/// zero. A credential that already had no active admin (e.g. imported without members) can
/// still be given members, or its first admin, through `change_member`.
pub(crate) fn check_last_admin(before: i64, after: i64) -> Result<(), StoreError> {
    if before > 0 && after <= 0 {
        Err(StoreError::LastAdmin)
    } else {
        Ok(())
    }
}

/// Checks what `insert_credential` requires before touching the database.
pub(crate) fn check_new_credential(
    row: &CredentialRow,
    members: &[crate::model::MemberRow],
) -> Result<(), StoreError> {
    if row.row_version != 1 {
        return Err(StoreError::Database(
            "a new credential must have row_version 1".into(),
        ));
    }
    if members.iter().any(|m| m.credential_id != row.id) {
        return Err(StoreError::Database(
            "a new credential's members must reference it".into(),
        ));
    }
    Ok(())
}

/// Every column of `run_grants`, in [`RunGrantRow`](crate::model::RunGrantRow) order.
macro_rules! run_grant_columns {
    () => {
        "id, grant_sha256, user_id, email, workspace_id, workspace_role, workflow_id, \
         execution_id, credential_ids, created_by, created_at, expires_at, revoked_at"
    };
}

pub(crate) const INSERT_RUN_GRANT: &str = insert!(
    "run_grants",
    run_grant_columns,
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
);

pub(crate) const GET_RUN_GRANT_BY_HASH: &str = select!(
    run_grant_columns,
    " FROM run_grants WHERE grant_sha256 = $1"
);

pub(crate) const GET_RUN_GRANT_BY_ID: &str =
    select!(run_grant_columns, " FROM run_grants WHERE id = $1");

/// Revokes once (bind: id, now); returns the hash, announced on the change feed.
pub(crate) const REVOKE_RUN_GRANT: &str = "UPDATE run_grants SET revoked_at = $2 \
     WHERE id = $1 AND revoked_at IS NULL RETURNING grant_sha256";

/// Deletes at most one batch of grants expired before $1 (bind: older_than, batch size).
pub(crate) const PRUNE_RUN_GRANTS_BATCH: &str = "DELETE FROM run_grants \
     WHERE id IN (SELECT id FROM run_grants WHERE expires_at < $1 LIMIT $2)";
/// Every column of `oauth_apps`, in [`OAuthAppRow`](crate::model::OAuthAppRow) order.
macro_rules! oauth_app_columns {
    () => {
        "id, workspace_id, provider_id, display_name, client_id, allowed_scopes, created_by, \
         created_at, updated_at, row_version"
    };
}

pub(crate) const INSERT_OAUTH_APP: &str = insert!(
    "oauth_apps",
    oauth_app_columns,
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);

pub(crate) const GET_OAUTH_APP: &str = select!(oauth_app_columns, " FROM oauth_apps WHERE id = $1");

/// A workspace's apps, oldest first (ids are time-ordered); `$2` NULL: every provider.
pub(crate) const LIST_OAUTH_APPS: &str = select!(
    oauth_app_columns,
    " FROM oauth_apps WHERE workspace_id = $1 AND ($2 IS NULL OR provider_id = $2) ORDER BY id"
);

/// Bind: id, expected version, display_name, client_id, allowed_scopes, updated_at.
pub(crate) const UPDATE_OAUTH_APP: &str = concat!(
    "UPDATE oauth_apps SET display_name = $3, client_id = $4, allowed_scopes = $5, \
     updated_at = $6, row_version = row_version + 1 WHERE id = $1 AND row_version = $2 \
     RETURNING ",
    oauth_app_columns!()
);

pub(crate) const DELETE_OAUTH_APP: &str = "DELETE FROM oauth_apps WHERE id = $1";

/// Secrets go first: SQLite only cascades with foreign keys on, so nothing relies on it.
pub(crate) const DELETE_OAUTH_APP_SECRETS: &str = "DELETE FROM oauth_app_secrets WHERE app_id = $1";

pub(crate) const INSERT_OAUTH_APP_SECRET: &str = "INSERT INTO oauth_app_secrets (app_id, version, \
     sealed_secret, dek_wrapped, dek_key_id, dek_key_version, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Newest first.
pub(crate) const LIST_OAUTH_APP_SECRETS: &str = "SELECT app_id, version, sealed_secret, \
     dek_wrapped, dek_key_id, dek_key_version, created_at FROM oauth_app_secrets \
     WHERE app_id = $1 ORDER BY version DESC";

pub(crate) const DELETE_OAUTH_APP_SECRET: &str =
    "DELETE FROM oauth_app_secrets WHERE app_id = $1 AND version = $2";

/// Bind: credential id, app id, secret version.
pub(crate) const SET_CREDENTIAL_APP: &str = "UPDATE credentials SET oauth_app_id = $2, \
     oauth_app_secret_version = $3 WHERE id = $1";

pub(crate) const GET_CREDENTIAL_APP: &str =
    "SELECT oauth_app_id, oauth_app_secret_version FROM credentials WHERE id = $1";

pub(crate) const CREDENTIALS_USING_APP: &str = "SELECT id FROM credentials \
     WHERE oauth_app_id = $1 AND status <> 'DISCONNECTED' ORDER BY id";

/// The statements key rotation runs over one [`SecretKind`]'s data keys.
pub(crate) struct SecretStatements {
    /// Sealed secrets per key version (`key_id`, `key_version`, `secrets`).
    pub usage: &'static str,
    /// Data keys not on a key, keyset-paged on (owner, version). Bind: key_id, key_version,
    /// after owner (`''` starts at the beginning), after version, limit.
    pub not_on_key: &'static str,
    /// Compare-and-swap of one data key. Bind: owner, version, old wrapped, old key id, old key
    /// version, new wrapped, new key id, new key version.
    pub rewrap: &'static str,
}

/// The statements of `kind` (one arm per kind: a new kind cannot be forgotten here).
pub(crate) fn secret_statements(kind: SecretKind) -> &'static SecretStatements {
    match kind {
        SecretKind::OAuthAppSecret => &OAUTH_APP_SECRET_STATEMENTS,
        SecretKind::WebhookSecret => &WEBHOOK_SECRET_STATEMENTS,
    }
}

const OAUTH_APP_SECRET_STATEMENTS: SecretStatements = SecretStatements {
    usage: "SELECT dek_key_id AS key_id, dek_key_version AS key_version, COUNT(*) AS secrets \
         FROM oauth_app_secrets GROUP BY dek_key_id, dek_key_version \
         ORDER BY dek_key_id, dek_key_version",
    not_on_key: "SELECT s.app_id AS owner_id, s.version, a.workspace_id, s.dek_wrapped, \
         s.dek_key_id, s.dek_key_version FROM oauth_app_secrets s \
         JOIN oauth_apps a ON a.id = s.app_id \
         WHERE NOT (s.dek_key_id = $1 AND s.dek_key_version = $2) \
         AND (s.app_id > $3 OR (s.app_id = $3 AND s.version > $4)) \
         ORDER BY s.app_id, s.version LIMIT $5",
    rewrap: "UPDATE oauth_app_secrets SET dek_wrapped = $6, dek_key_id = $7, dek_key_version = $8 \
         WHERE app_id = $1 AND version = $2 AND dek_wrapped = $3 AND dek_key_id = $4 \
         AND dek_key_version = $5",
};

const WEBHOOK_SECRET_STATEMENTS: SecretStatements = SecretStatements {
    usage: "SELECT dek_key_id AS key_id, dek_key_version AS key_version, COUNT(*) AS secrets \
         FROM webhook_endpoint_secrets GROUP BY dek_key_id, dek_key_version \
         ORDER BY dek_key_id, dek_key_version",
    not_on_key: "SELECT s.endpoint_id AS owner_id, s.version, e.workspace_id, s.dek_wrapped, \
         s.dek_key_id, s.dek_key_version FROM webhook_endpoint_secrets s \
         JOIN webhook_endpoints e ON e.id = s.endpoint_id \
         WHERE NOT (s.dek_key_id = $1 AND s.dek_key_version = $2) \
         AND (s.endpoint_id > $3 OR (s.endpoint_id = $3 AND s.version > $4)) \
         ORDER BY s.endpoint_id, s.version LIMIT $5",
    rewrap: "UPDATE webhook_endpoint_secrets SET dek_wrapped = $6, dek_key_id = $7, \
         dek_key_version = $8 WHERE endpoint_id = $1 AND version = $2 AND dek_wrapped = $3 \
         AND dek_key_id = $4 AND dek_key_version = $5",
};

/// Every column of `workspace_providers`, in
/// [`WorkspaceProviderRow`](crate::model::WorkspaceProviderRow) order.
macro_rules! workspace_provider_columns {
    () => {
        "workspace_id, id, definition, created_by, created_at, updated_at, row_version"
    };
}

pub(crate) const INSERT_WORKSPACE_PROVIDER: &str = insert!(
    "workspace_providers",
    workspace_provider_columns,
    "($1, $2, $3, $4, $5, $6, $7)"
);

pub(crate) const GET_WORKSPACE_PROVIDER: &str = select!(
    workspace_provider_columns,
    " FROM workspace_providers WHERE workspace_id = $1 AND id = $2"
);

pub(crate) const LIST_WORKSPACE_PROVIDERS: &str = select!(
    workspace_provider_columns,
    " FROM workspace_providers WHERE workspace_id = $1 ORDER BY id"
);

/// Bind: workspace_id, id, expected version, definition, updated_at.
pub(crate) const UPDATE_WORKSPACE_PROVIDER: &str = concat!(
    "UPDATE workspace_providers SET definition = $4, updated_at = $5, \
     row_version = row_version + 1 WHERE workspace_id = $1 AND id = $2 AND row_version = $3 \
     RETURNING ",
    workspace_provider_columns!()
);

pub(crate) const DELETE_WORKSPACE_PROVIDER: &str =
    "DELETE FROM workspace_providers WHERE workspace_id = $1 AND id = $2";
