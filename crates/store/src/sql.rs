//! SQL text shared by both backends and the row <-> record conversions.
//!
//! Both dialects accept `$n` placeholders, `RETURNING` and `ON CONFLICT ... DO UPDATE`, so one
//! statement text serves SQLite and PostgreSQL; only the migrations differ.

use std::fmt::Write as _;

use crate::error::StoreError;
use crate::model::{CredentialQuery, CredentialRow, LeaseColumns, SealedColumns};

/// Every column of `credentials`, in [`CredentialRecord`] order.
macro_rules! credential_columns {
    () => {
        "id, workspace_id, provider_id, account_subject, account_label, display_name, \
         description, scopes, status, status_reason, created_by, created_at, updated_at, \
         last_used_at, last_refreshed_at, access_expires_at, next_refresh_at, \
         refresh_token_expires_at, has_refresh_token, sealed_tokens, dek_wrapped, dek_key_id, \
         dek_key_version, row_version, lease_holder, lease_fence, lease_expires_at"
    };
}

pub(crate) const INSERT_CREDENTIAL: &str = concat!(
    "INSERT INTO credentials (",
    credential_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
     $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
);

pub(crate) const GET_CREDENTIAL: &str = concat!(
    "SELECT ",
    credential_columns!(),
    " FROM credentials WHERE id = $1"
);

pub(crate) const CREDENTIAL_EXISTS: &str = "SELECT id FROM credentials WHERE id = $1";

pub(crate) const FIND_CREDENTIAL_BY_ACCOUNT: &str = concat!(
    "SELECT ",
    credential_columns!(),
    " FROM credentials WHERE workspace_id = $1 AND provider_id = $2 AND account_subject = $3 \
     AND status <> 'DISCONNECTED'"
);

/// Writes every mutable column; `row_version = row_version + 1` is safe because the WHERE
/// clause pins the old value. Lease columns are left to the lease operations.
pub(crate) const UPDATE_CREDENTIAL: &str = concat!(
    "UPDATE credentials SET account_subject = $3, account_label = $4, display_name = $5, \
     description = $6, scopes = $7, status = $8, status_reason = $9, updated_at = $10, \
     last_used_at = $11, last_refreshed_at = $12, access_expires_at = $13, \
     next_refresh_at = $14, refresh_token_expires_at = $15, sealed_tokens = $16, \
     dek_wrapped = $17, dek_key_id = $18, dek_key_version = $19, has_refresh_token = $20, \
     row_version = row_version + 1 \
     WHERE id = $1 AND row_version = $2 RETURNING ",
    credential_columns!()
);

macro_rules! member_columns {
    () => {
        "credential_id, email, user_id, role, state, invited_by, created_at, updated_at"
    };
}

pub(crate) const INSERT_MEMBER: &str = concat!(
    "INSERT INTO credential_members (",
    member_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);

pub(crate) const UPSERT_MEMBER: &str = concat!(
    "INSERT INTO credential_members (",
    member_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (credential_id, email) DO UPDATE SET user_id = excluded.user_id, \
     role = excluded.role, state = excluded.state, invited_by = excluded.invited_by, \
     created_at = excluded.created_at, updated_at = excluded.updated_at"
);

pub(crate) const LIST_MEMBERS: &str = concat!(
    "SELECT ",
    member_columns!(),
    " FROM credential_members WHERE credential_id = $1 ORDER BY email"
);

pub(crate) const GET_MEMBER: &str = concat!(
    "SELECT ",
    member_columns!(),
    " FROM credential_members WHERE credential_id = $1 AND email = $2"
);

pub(crate) const DELETE_MEMBER: &str =
    "DELETE FROM credential_members WHERE credential_id = $1 AND email = $2";

pub(crate) const APPEND_AUDIT: &str = "INSERT INTO audit_events \
     (at, service, actor, action, credential_id, outcome, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";

macro_rules! audit_columns {
    () => {
        "id, at, service, actor, action, credential_id, outcome, detail"
    };
}

pub(crate) const LIST_AUDIT_ALL: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2"
);

pub(crate) const LIST_AUDIT_FOR_CREDENTIAL: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_events WHERE credential_id = $1 AND id > $2 ORDER BY id LIMIT $3"
);

pub(crate) const KEY_USAGE: &str = "SELECT dek_key_id AS key_id, dek_key_version AS key_version, \
     COUNT(*) AS credentials, MIN(id) AS sample_credential_id FROM credentials \
     WHERE dek_key_id IS NOT NULL GROUP BY dek_key_id, dek_key_version \
     ORDER BY dek_key_id, dek_key_version";

/// Builds the `list_credentials` statement from constant fragments only (values are bound).
/// Bind order: workspace_id, [provider_id], [after_id], limit.
pub(crate) fn list_credentials_sql(q: &CredentialQuery) -> String {
    let mut sql = String::from(concat!(
        "SELECT ",
        credential_columns!(),
        " FROM credentials WHERE workspace_id = $1"
    ));
    let mut n = 1;
    if q.provider_id.is_some() {
        n += 1;
        let _ = write!(sql, " AND provider_id = ${n}");
    }
    if q.after_id.is_some() {
        n += 1;
        let _ = write!(sql, " AND id > ${n}");
    }
    if !q.include_disconnected {
        sql.push_str(" AND status <> 'DISCONNECTED'");
    }
    n += 1;
    let _ = write!(sql, " ORDER BY id LIMIT ${n}");
    sql
}

/// Binds a [`CredentialRow`] to [`INSERT_CREDENTIAL`] ($1..$27).
macro_rules! bind_insert_credential {
    ($query:expr, $row:expr) => {{
        let row: &$crate::model::CredentialRow = $row;
        let sealed = row.sealed.as_ref();
        $query
            .bind(&row.id)
            .bind(&row.workspace_id)
            .bind(&row.provider_id)
            .bind(&row.account_subject)
            .bind(&row.account_label)
            .bind(&row.display_name)
            .bind(&row.description)
            .bind(&row.scopes)
            .bind(&row.status)
            .bind(&row.status_reason)
            .bind(&row.created_by)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(row.last_used_at)
            .bind(row.last_refreshed_at)
            .bind(row.access_expires_at)
            .bind(row.next_refresh_at)
            .bind(row.refresh_token_expires_at)
            .bind(row.has_refresh_token)
            .bind(sealed.map(|s| s.ciphertext.as_slice()))
            .bind(sealed.map(|s| s.dek_wrapped.as_slice()))
            .bind(sealed.map(|s| s.dek_key_id.as_str()))
            .bind(sealed.map(|s| s.dek_key_version))
            .bind(row.row_version)
            .bind(&row.lease.holder)
            .bind(row.lease.fence)
            .bind(row.lease.expires_at)
    }};
}
pub(crate) use bind_insert_credential;

/// Binds a [`CredentialRow`] and the expected version to [`UPDATE_CREDENTIAL`] ($1..$20).
macro_rules! bind_update_credential {
    ($query:expr, $row:expr, $expected:expr) => {{
        let row: &$crate::model::CredentialRow = $row;
        let sealed = row.sealed.as_ref();
        $query
            .bind(&row.id)
            .bind($expected)
            .bind(&row.account_subject)
            .bind(&row.account_label)
            .bind(&row.display_name)
            .bind(&row.description)
            .bind(&row.scopes)
            .bind(&row.status)
            .bind(&row.status_reason)
            .bind(row.updated_at)
            .bind(row.last_used_at)
            .bind(row.last_refreshed_at)
            .bind(row.access_expires_at)
            .bind(row.next_refresh_at)
            .bind(row.refresh_token_expires_at)
            .bind(sealed.map(|s| s.ciphertext.as_slice()))
            .bind(sealed.map(|s| s.dek_wrapped.as_slice()))
            .bind(sealed.map(|s| s.dek_key_id.as_str()))
            .bind(sealed.map(|s| s.dek_key_version))
            .bind(row.has_refresh_token)
    }};
}
pub(crate) use bind_update_credential;

/// Binds a [`MemberRow`](crate::model::MemberRow) to [`INSERT_MEMBER`] / [`UPSERT_MEMBER`].
macro_rules! bind_member {
    ($query:expr, $member:expr) => {{
        let m: &$crate::model::MemberRow = $member;
        $query
            .bind(&m.credential_id)
            .bind(&m.email)
            .bind(&m.user_id)
            .bind(&m.role)
            .bind(&m.state)
            .bind(&m.invited_by)
            .bind(m.created_at)
            .bind(m.updated_at)
    }};
}
pub(crate) use bind_member;

/// Binds a [`NewAuditEvent`](crate::model::NewAuditEvent) to [`APPEND_AUDIT`].
macro_rules! bind_audit {
    ($query:expr, $event:expr) => {{
        let e: &$crate::model::NewAuditEvent = $event;
        $query
            .bind(e.at)
            .bind(&e.service)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.credential_id)
            .bind(&e.outcome)
            .bind(&e.detail)
    }};
}
pub(crate) use bind_audit;

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
        })
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
