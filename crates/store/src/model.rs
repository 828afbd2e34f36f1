//! Plain row types exchanged with the store. Timestamps are unix milliseconds.

use std::fmt;

/// One stored credential, every column of the `credentials` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRow {
    /// Opaque, URL-safe identifier (primary key).
    pub id: String,
    /// Workspace that owns the credential.
    pub workspace_id: String,
    /// Provider catalog id (e.g. `google`).
    pub provider_id: String,
    /// The provider's stable account id.
    pub account_subject: String,
    /// Email or login of the provider account, for display.
    pub account_label: String,
    /// Name chosen by the user.
    pub display_name: String,
    /// Free text chosen by the user.
    pub description: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// `ACTIVE`, `NEEDS_RECONNECT` or `DISCONNECTED`.
    pub status: String,
    /// Why the credential needs a reconnect, if it does.
    pub status_reason: Option<String>,
    /// User who connected the credential.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Time of the last change.
    pub updated_at: i64,
    /// Time an access token was last issued.
    pub last_used_at: Option<i64>,
    /// Time of the last successful refresh.
    pub last_refreshed_at: Option<i64>,
    /// Expiry of the current access token.
    pub access_expires_at: Option<i64>,
    /// When the refresh coordinator should refresh next.
    pub next_refresh_at: Option<i64>,
    /// Expiry of the refresh token, when the provider says.
    pub refresh_token_expires_at: Option<i64>,
    /// Whether the sealed bundle holds a refresh token (known without decrypting it).
    pub has_refresh_token: bool,
    /// The encrypted token bundle; `None` once the tokens are wiped.
    pub sealed: Option<SealedColumns>,
    /// Optimistic concurrency version; 1 on insert, +1 on every update.
    pub row_version: i64,
    /// Refresh lease; written only by the lease operations, never by `update_credential`.
    pub lease: LeaseColumns,
}

/// The sealed token bundle: ciphertext plus the wrapped data key that opens it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedColumns {
    /// Token bundle encrypted under the data key.
    pub ciphertext: Vec<u8>,
    /// Data key wrapped by the key provider.
    pub dek_wrapped: Vec<u8>,
    /// Id of the key-encryption key.
    pub dek_key_id: String,
    /// Version of the key-encryption key.
    pub dek_key_version: i64,
}

// Lengths only: the bytes are secrets (or their ciphertext) and must not reach logs.
impl fmt::Debug for SealedColumns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedColumns")
            .field("ciphertext_len", &self.ciphertext.len())
            .field("dek_wrapped_len", &self.dek_wrapped.len())
            .field("dek_key_id", &self.dek_key_id)
            .field("dek_key_version", &self.dek_key_version)
            .finish()
    }
}

/// Refresh lease of a credential: who refreshes it, with which fencing token, until when.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaseColumns {
    /// Replica holding the lease, if any.
    pub holder: Option<String>,
    /// Fencing token, increased on every acquisition.
    pub fence: i64,
    /// When the lease lapses.
    pub expires_at: Option<i64>,
}

/// One member of a credential (`credential_members` row).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemberRow {
    /// Credential the membership belongs to.
    pub credential_id: String,
    /// Member email, lowercase (the domain normalizes it).
    pub email: String,
    /// User id once the invitation is accepted.
    pub user_id: Option<String>,
    /// `ADMIN` or `MEMBER`.
    pub role: String,
    /// `INVITED` or `ACTIVE`.
    pub state: String,
    /// Who added the member.
    pub invited_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Time of the last change.
    pub updated_at: i64,
}

/// One stored audit event.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    /// Increasing id assigned by the database.
    pub id: i64,
    /// When it happened.
    pub at: i64,
    /// Calling service.
    pub service: String,
    /// Acting user, if any.
    pub actor: Option<String>,
    /// What was done.
    pub action: String,
    /// Credential concerned, if any.
    pub credential_id: Option<String>,
    /// Result (e.g. `OK`, `DENIED`).
    pub outcome: String,
    /// Extra context; never secrets.
    pub detail: Option<String>,
}

/// An audit event to append; the store assigns the id.
#[derive(Clone, Debug)]
pub struct NewAuditEvent {
    /// When it happened.
    pub at: i64,
    /// Calling service.
    pub service: String,
    /// Acting user, if any.
    pub actor: Option<String>,
    /// What was done.
    pub action: String,
    /// Credential concerned, if any.
    pub credential_id: Option<String>,
    /// Result (e.g. `OK`, `DENIED`).
    pub outcome: String,
    /// Extra context; never secrets.
    pub detail: Option<String>,
}

/// How many stored credentials are sealed under one key-encryption key version.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyUsage {
    /// Id of the key-encryption key.
    pub key_id: String,
    /// Its version.
    pub key_version: i64,
    /// Number of credentials whose sealed bundle uses it.
    pub credentials: i64,
    /// One of those credentials (the smallest id), to try opening at startup.
    pub sample_credential_id: String,
}

/// Filter and page for [`Store::list_credentials`](crate::Store::list_credentials).
#[derive(Clone, Debug, Default)]
pub struct CredentialQuery {
    /// Only credentials of this workspace.
    pub workspace_id: String,
    /// Only credentials of this provider.
    pub provider_id: Option<String>,
    /// Keyset pagination: only ids greater than this one (results are ordered by id ascending).
    pub after_id: Option<String>,
    /// Maximum number of rows; 0 returns no rows.
    pub limit: u32,
    /// Also return `DISCONNECTED` credentials.
    pub include_disconnected: bool,
}
