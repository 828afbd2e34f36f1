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
    /// Health of the grant and the cause of the last refresh failure.
    pub health: HealthColumns,
}

/// Health of a credential's grant: written with the credential by `insert_credential`,
/// `update_credential` and `complete_refresh`, and by `record_refresh_failure`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthColumns {
    /// `HEALTHY`, `PROVIDER_OUTAGE`, `GRANT_REVOKED`, `CLIENT_MISCONFIGURED`,
    /// `SCOPES_REVOKED`, `REFRESH_INTERRUPTED` or `EXPIRING`.
    pub health: String,
    /// Human-readable cause of the current health (never a secret).
    pub cause: Option<String>,
    /// Since when the credential has had this health.
    pub since: Option<i64>,
    /// Consecutive refresh failures since the last success.
    pub failures: i64,
    /// The provider's last error code (e.g. `invalid_grant`), never a token.
    pub error_code: Option<String>,
}

impl Default for HealthColumns {
    fn default() -> Self {
        Self {
            health: "HEALTHY".into(),
            cause: None,
            since: None,
            failures: 0,
            error_code: None,
        }
    }
}

/// A refresh failure that leaves the credential's status and tokens alone
/// ([`Store::record_refresh_failure`](crate::Store::record_refresh_failure)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshFailure {
    /// The health it puts the credential in.
    pub health: String,
    /// Why, never a secret.
    pub cause: String,
    /// The provider's error code.
    pub error_code: Option<String>,
    /// When it failed.
    pub at: i64,
}

/// The sealed token bundle: ciphertext plus the wrapped data key that opens it.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
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

/// A refresh a lease holder started: recorded right before the provider call, cleared when its
/// result is written. Found by a later holder, it says the refresh may have died with its
/// process after the provider rotated the refresh token.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RefreshIntent {
    /// Replica that started the refresh.
    pub holder: String,
    /// Its fencing token.
    pub fence: i64,
    /// When it started (the holder's clock, ms).
    pub started_at: i64,
    /// Hex SHA-256 of the refresh token it sent (never the token).
    pub token_sha256: String,
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

/// A credential's wrapped data key, without its token ciphertext: what key rotation reads and
/// re-wraps ([`Store::dek_rows_not_on_key`](crate::Store::dek_rows_not_on_key)).
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WrappedDekRow {
    /// The credential.
    pub credential_id: String,
    /// Its workspace (part of the data key's encryption context).
    pub workspace_id: String,
    /// The data key, wrapped by the key provider.
    pub dek_wrapped: Vec<u8>,
    /// Id of the key-encryption key that wrapped it.
    pub dek_key_id: String,
    /// Version of that key.
    pub dek_key_version: i64,
}

// Lengths only for the wrapped key.
impl fmt::Debug for WrappedDekRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDekRow")
            .field("credential_id", &self.credential_id)
            .field("workspace_id", &self.workspace_id)
            .field("dek_wrapped_len", &self.dek_wrapped.len())
            .field("dek_key_id", &self.dek_key_id)
            .field("dek_key_version", &self.dek_key_version)
            .finish()
    }
}

/// A kind of sealed secret other than credential tokens, each held under its own data key, that
/// key rotation re-wraps: the rotation engine iterates [`SecretKind::ALL`], the store reads and
/// swaps each kind's data keys with its own statements (`sql::secret_statements`), the domain
/// names each kind's encryption context. A new kind is a variant here; the compiler then asks
/// for its statements and its context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretKind {
    /// A workspace OAuth app's client secret (`oauth_app_secrets`).
    OAuthAppSecret,
    /// An API-managed webhook endpoint's signing secret (`webhook_endpoint_secrets`).
    WebhookSecret,
}

impl SecretKind {
    /// Every kind, in the order rotation walks them.
    pub const ALL: [SecretKind; 2] = [SecretKind::OAuthAppSecret, SecretKind::WebhookSecret];

    /// What people call it (reports, errors).
    pub fn label(self) -> &'static str {
        match self {
            SecretKind::OAuthAppSecret => "OAuth app client secret",
            SecretKind::WebhookSecret => "webhook signing secret",
        }
    }
}

/// One sealed secret's wrapped data key, without its ciphertext: what key rotation reads and
/// re-wraps ([`Store::secret_deks_not_on_key`](crate::Store::secret_deks_not_on_key)).
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SecretDekRow {
    /// The row holding the secret (an OAuth app's or a webhook endpoint's id).
    pub owner_id: String,
    /// The secret's version within its owner (0 where a kind keeps one).
    pub version: i64,
    /// The owner's workspace (part of the data key's encryption context).
    pub workspace_id: String,
    /// The data key, wrapped by the key provider.
    pub dek_wrapped: Vec<u8>,
    /// Id of the key-encryption key that wrapped it.
    pub dek_key_id: String,
    /// Version of that key.
    pub dek_key_version: i64,
}

// Lengths only for the wrapped key.
impl fmt::Debug for SecretDekRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretDekRow")
            .field("owner_id", &self.owner_id)
            .field("version", &self.version)
            .field("workspace_id", &self.workspace_id)
            .field("dek_wrapped_len", &self.dek_wrapped.len())
            .field("dek_key_id", &self.dek_key_id)
            .field("dek_key_version", &self.dek_key_version)
            .finish()
    }
}

/// How many sealed secrets of one kind one key-encryption key version wraps.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SecretKeyUsage {
    /// Id of the key-encryption key.
    pub key_id: String,
    /// Its version.
    pub key_version: i64,
    /// Sealed secrets whose data key it wraps.
    pub secrets: i64,
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
    /// Only credentials with this health (`HEALTHY`, `PROVIDER_OUTAGE`, ...).
    pub health: Option<String>,
}

/// Filter and page for
/// [`Store::list_credentials_by_status`](crate::Store::list_credentials_by_status).
#[derive(Clone, Debug, Default)]
pub struct StatusQuery {
    /// Only credentials with this status (`ACTIVE`, `NEEDS_RECONNECT`, `DISCONNECTED`).
    pub status: String,
    /// Only credentials of this workspace; `None` lists every workspace.
    pub workspace_id: Option<String>,
    /// Only credentials with this health; `None` lists every health.
    pub health: Option<String>,
    /// Keyset pagination: only ids greater than this one (results are ordered by id ascending).
    pub after_id: Option<String>,
    /// Maximum number of rows; 0 returns no rows.
    pub limit: u32,
}

/// One change to a credential's members, applied by
/// [`Store::change_member`](crate::Store::change_member) under the last-admin guard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Inserts or replaces (every column) the member (`credential_id`, `email`). A blind write
    /// for repair tools and tests: the domain uses the conditional changes below, which cannot
    /// undo a concurrent change.
    Upsert(MemberRow),
    /// Inserts a new member (an invitation). An existing (`credential_id`, `email`) →
    /// [`StoreError::Duplicate`](crate::StoreError::Duplicate)`("member email")` and nothing
    /// changes: of two concurrent adds of one email exactly one succeeds.
    Add(MemberRow),
    /// Accepts an invitation: `state = 'ACTIVE'`, `user_id`, `updated_at` WHERE the member is
    /// still `INVITED`. No `INVITED` member (missing, or already accepted) →
    /// [`StoreError::NotFound`](crate::StoreError::NotFound).
    Accept {
        /// Credential the membership belongs to.
        credential_id: String,
        /// Member email, lowercase.
        email: String,
        /// The user the membership binds to.
        user_id: String,
        /// When (ms since the epoch).
        updated_at: i64,
    },
    /// Changes only `role` and `updated_at` (the state is left alone, so a concurrent accept
    /// survives). Missing member → [`StoreError::NotFound`](crate::StoreError::NotFound).
    SetRole {
        /// Credential the membership belongs to.
        credential_id: String,
        /// Member email, lowercase.
        email: String,
        /// `ADMIN` or `MEMBER`.
        role: String,
        /// When (ms since the epoch).
        updated_at: i64,
    },
    /// Removes the member (`credential_id`, `email`).
    Delete {
        /// Credential the membership belongs to.
        credential_id: String,
        /// Member email, lowercase.
        email: String,
    },
}

impl MemberChange {
    /// The credential whose members change.
    pub fn credential_id(&self) -> &str {
        match self {
            Self::Upsert(m) | Self::Add(m) => &m.credential_id,
            Self::Accept { credential_id, .. }
            | Self::SetRole { credential_id, .. }
            | Self::Delete { credential_id, .. } => credential_id,
        }
    }
}

/// Filter and page for [`Store::list_audit`](crate::Store::list_audit); results are newest
/// first (id descending). Every filter left `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only events about this credential.
    pub credential_id: Option<String>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only events with this action.
    pub action: Option<String>,
    /// Only events with this outcome (`ok` or a reason).
    pub outcome: Option<String>,
    /// Only events with `at >= start_at` (inclusive).
    pub start_at: Option<i64>,
    /// Only events with `at < end_at` (exclusive).
    pub end_at: Option<i64>,
    /// Keyset pagination: only ids smaller than this one (pass the last id of the previous page).
    pub before_id: Option<i64>,
    /// Maximum number of rows; 0 returns no rows.
    pub limit: u32,
}

/// One use of a credential, for [`Store::record_usage`](crate::Store::record_usage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// Credential an access token was issued for.
    pub credential_id: String,
    /// Workflow that used it, when the caller said.
    pub workflow_id: Option<String>,
    /// When it was used.
    pub at: i64,
}

/// A change notification from [`Store::subscribe_changes`](crate::Store::subscribe_changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeEvent {
    /// The credential with this id (its row or its members) was written.
    Changed(String),
    /// Notifications may have been missed: drop every cached entry.
    Resync,
}

/// One connect session (`connect_sessions` row): the single-use OAuth `state` of a connect or
/// reconnect flow, stored under the hash of the state.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConnectSessionRow {
    /// Hash of the `state` handed to the provider (primary key); the state itself is never
    /// stored.
    pub state_hash: String,
    /// Workspace the credential will belong to.
    pub workspace_id: String,
    /// Provider catalog id.
    pub provider_id: String,
    /// Requested scopes, space-separated.
    pub scopes: String,
    /// Redirect URI sent with the authorization request (the code exchange repeats it).
    pub redirect_uri: String,
    /// PKCE verifier sealed under a data key; the four `pkce_*` fields are all set or all
    /// `None` (providers without PKCE).
    pub pkce_verifier: Option<Vec<u8>>,
    /// The data key, wrapped by the key provider.
    pub pkce_dek_wrapped: Option<Vec<u8>>,
    /// Id of the key-encryption key.
    pub pkce_dek_key_id: Option<String>,
    /// Version of the key-encryption key.
    pub pkce_dek_key_version: Option<i64>,
    /// The credential being reconnected (StartReconnect); `None` for a new connection. Not a
    /// foreign key: the domain checks the credential when the session completes.
    pub reconnect_credential_id: Option<String>,
    /// Draft display name for the new credential.
    pub display_name: Option<String>,
    /// Draft description for the new credential.
    pub description: Option<String>,
    /// User who started the flow (only they may complete it).
    pub created_by: String,
    /// That user's email.
    pub created_by_email: String,
    /// Creation time.
    pub created_at: i64,
    /// The session cannot be consumed at or after this time.
    pub expires_at: i64,
    /// When the session was consumed; set once, by
    /// [`Store::consume_connect_session`](crate::Store::consume_connect_session).
    pub consumed_at: Option<i64>,
    /// The workspace OAuth app the flow started with; `None`: the deployment's configured
    /// client. The code is exchanged with the same client.
    pub oauth_app_id: Option<String>,
}

// Lengths only for the sealed verifier and wrapped key.
impl fmt::Debug for ConnectSessionRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectSessionRow")
            .field("state_hash", &self.state_hash)
            .field("workspace_id", &self.workspace_id)
            .field("provider_id", &self.provider_id)
            .field("scopes", &self.scopes)
            .field("redirect_uri", &self.redirect_uri)
            .field(
                "pkce_verifier_len",
                &self.pkce_verifier.as_ref().map(Vec::len),
            )
            .field(
                "pkce_dek_wrapped_len",
                &self.pkce_dek_wrapped.as_ref().map(Vec::len),
            )
            .field("pkce_dek_key_id", &self.pkce_dek_key_id)
            .field("pkce_dek_key_version", &self.pkce_dek_key_version)
            .field("reconnect_credential_id", &self.reconnect_credential_id)
            .field("display_name", &self.display_name)
            .field("description", &self.description)
            .field("created_by", &self.created_by)
            .field("created_by_email", &self.created_by_email)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("consumed_at", &self.consumed_at)
            .field("oauth_app_id", &self.oauth_app_id)
            .finish()
    }
}

/// One OAuth app a workspace brings for a provider (`oauth_apps` row). Its client secrets are
/// [`OAuthAppSecretRow`]s.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OAuthAppRow {
    /// Opaque id (primary key).
    pub id: String,
    /// Owning workspace.
    pub workspace_id: String,
    /// Provider catalog id.
    pub provider_id: String,
    /// Name shown to people.
    pub display_name: String,
    /// The client id registered at the provider (not a secret).
    pub client_id: String,
    /// Scopes the app may request, space-separated; empty: any the provider offers.
    pub allowed_scopes: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Optimistic concurrency version; 1 on insert.
    pub row_version: i64,
}

/// One OAuth 2.0 provider a workspace defined at runtime (`workspace_providers` row).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkspaceProviderRow {
    /// Owning workspace.
    pub workspace_id: String,
    /// Provider id, unique in the workspace.
    pub id: String,
    /// The definition, a JSON document owned by the domain (no secret in it).
    pub definition: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Optimistic concurrency version; 1 on insert.
    pub row_version: i64,
}

/// One sealed client secret of an OAuth app (`oauth_app_secrets` row).
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OAuthAppSecretRow {
    /// The app.
    pub app_id: String,
    /// 1 for the first secret, +1 per rotation; the newest is used.
    pub version: i64,
    /// The secret sealed under its data key.
    pub sealed_secret: Vec<u8>,
    /// The data key, wrapped by the key provider.
    pub dek_wrapped: Vec<u8>,
    /// Id of the key-encryption key.
    pub dek_key_id: String,
    /// Version of the key-encryption key.
    pub dek_key_version: i64,
    /// When it was added.
    pub created_at: i64,
}

// Lengths only: ciphertext of a secret.
impl fmt::Debug for OAuthAppSecretRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthAppSecretRow")
            .field("app_id", &self.app_id)
            .field("version", &self.version)
            .field("sealed_secret_len", &self.sealed_secret.len())
            .field("dek_key_id", &self.dek_key_id)
            .field("dek_key_version", &self.dek_key_version)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// One run grant (`run_grants` row): which credentials one workflow run may use, for whom.
/// Stored under the SHA-256 of the grant; the grant itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RunGrantRow {
    /// Public id (names the grant in audit events and RevokeRunGrant).
    pub id: String,
    /// Hex SHA-256 of the grant (unique).
    pub grant_sha256: String,
    /// The actor's user id.
    pub user_id: String,
    /// The actor's verified email.
    pub email: String,
    /// The workspace the actor's workspace role applied to, if any.
    pub workspace_id: Option<String>,
    /// That role (`admin` or `member`).
    pub workspace_role: Option<String>,
    /// The workflow of the run.
    pub workflow_id: String,
    /// The execution (run) id.
    pub execution_id: String,
    /// The credentials the run may use, space-separated.
    pub credential_ids: String,
    /// The calling service that created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Not valid at or after this time.
    pub expires_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// The change-feed id announcing a write of the run grant with this hash (see
/// [`Store::revoke_run_grant`](crate::Store::revoke_run_grant)).
pub fn run_grant_change_id(grant_sha256: &str) -> String {
    format!("{RUN_GRANT_CHANGE_PREFIX}{grant_sha256}")
}

/// Prefix of [`run_grant_change_id`]: credential ids never start with it.
pub const RUN_GRANT_CHANGE_PREFIX: &str = "run_grant:";

/// A lifecycle event to append in the transaction of the change it records; the store assigns
/// the cursor id.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct NewCredentialEvent {
    /// Stable public id (a UUID chosen by the domain).
    pub event_id: String,
    /// When it happened.
    pub at: i64,
    /// Workspace of the credential (or of the workspace event).
    pub workspace_id: String,
    /// The credential; `None` for a workspace event (a webhook endpoint disabled).
    pub credential_id: Option<String>,
    /// What happened (`connected`, `refresh_failed`, `recovered`, ...).
    pub kind: String,
    /// Acting user, if a person did it.
    pub actor: Option<String>,
    /// Why (a health, a status reason, a role); never a secret.
    pub cause: Option<String>,
    /// Extra context (the provider error code, a member's email); never a secret.
    pub detail: Option<String>,
}

/// One stored lifecycle event: the event as written, and its cursor.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialEventRow {
    /// The cursor: increasing in commit order, never reused.
    pub id: i64,
    /// The event.
    #[sqlx(flatten)]
    pub event: NewCredentialEvent,
}

/// Filter and page for [`Store::list_credential_events`](crate::Store::list_credential_events):
/// events after the cursor, oldest first.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Only this workspace's events.
    pub workspace_id: Option<String>,
    /// Only this credential's events.
    pub credential_id: Option<String>,
    /// Only these kinds (empty: every kind).
    pub kinds: Vec<String>,
    /// Only events of credentials this user (id or email) is an ACTIVE member of.
    pub member: Option<(String, String)>,
    /// Only ids greater than this cursor (0: from the beginning).
    pub after_id: i64,
    /// Maximum number of rows.
    pub limit: u32,
}

/// A webhook delivery claimed for sending, with the event it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// The delivery (log row) id.
    pub id: i64,
    /// The endpoint it goes to.
    pub endpoint_id: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// The event.
    pub event: CredentialEventRow,
}

/// How one webhook delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The delivery.
    pub id: i64,
    /// Its endpoint.
    pub endpoint_id: String,
    /// The claim it was made under.
    pub holder: String,
    /// Whether the receiver accepted it (2xx).
    pub delivered: bool,
    /// The HTTP status, if a response arrived.
    pub status: Option<i64>,
    /// Why it failed (never a secret, never the URL's path or query).
    pub error: Option<String>,
    /// When it was made.
    pub at: i64,
    /// When to try again (failures).
    pub next_attempt_at: i64,
    /// Disable the endpoint when it has been failing since at or before this time.
    pub disable_failing_since: i64,
    /// The workspace event recorded (in the same transaction) if this attempt disables the
    /// endpoint.
    pub disabled_event: Option<NewCredentialEvent>,
}

/// A webhook endpoint: declared in the configuration (`source` `CONFIG`) or created through
/// the API (`API`), and its shared failure state.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct WebhookEndpointRow {
    /// Its id.
    pub id: String,
    /// The workspace whose events it receives.
    pub workspace_id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event kinds it receives, comma-separated (`None`: every kind).
    pub event_types: Option<String>,
    /// Free text for people (API endpoints).
    pub description: String,
    /// `CONFIG` or `API`.
    pub source: String,
    /// Since when its deliveries fail without a success (`None`: not failing).
    pub failing_since: Option<i64>,
    /// When it was disabled after failing (`None`: enabled).
    pub disabled_at: Option<i64>,
    /// Last change (declaration, creation or update).
    pub updated_at: i64,
}

/// One signing secret of an API-managed webhook endpoint, sealed under its own data key (the
/// AAD names the endpoint and the version).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct WebhookSecretRow {
    /// The endpoint.
    pub endpoint_id: String,
    /// 1 for the first secret, +1 per rotation.
    pub version: i64,
    /// The sealed secret (its `Debug` shows lengths only).
    #[sqlx(flatten)]
    pub sealed: SealedColumns,
    /// When it was added.
    pub created_at: i64,
}

/// One row of an endpoint's delivery log.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRow {
    /// The delivery id.
    pub id: i64,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's cursor.
    pub event_row_id: i64,
    /// The event's credential (empty for a workspace event).
    pub credential_id: String,
    /// `PENDING` or `DELIVERED`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt (pending).
    pub next_attempt_at: i64,
    /// Last HTTP status.
    pub last_status: Option<i64>,
    /// Last error.
    pub last_error: Option<String>,
    /// When delivered.
    pub delivered_at: Option<i64>,
}
