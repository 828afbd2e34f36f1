//! The credential aggregate and its mapping to the storage row.

use crate::access::Role;
use crate::clock::Timestamp;
use crate::error::BrokerError;
use crate::health::Health;
use crate::types::{CredentialId, Description, DisplayName, ProviderAccount, Scopes};
use cb_store::{CredentialRow, LeaseColumns, SealedColumns};

/// Lifecycle state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Usable.
    Active,
    /// Cannot refresh any more; an Admin must reconnect.
    NeedsReconnect {
        /// Why (e.g. `invalid_grant: token revoked`); never a secret.
        reason: String,
    },
    /// Disconnected; tokens destroyed.
    Disconnected,
}

/// A status without its details, for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    /// [`Status::Active`].
    Active,
    /// [`Status::NeedsReconnect`].
    NeedsReconnect,
    /// [`Status::Disconnected`].
    Disconnected,
}

impl Status {
    /// The kind of status.
    pub fn kind(&self) -> StatusKind {
        match self {
            Self::Active => StatusKind::Active,
            Self::NeedsReconnect { .. } => StatusKind::NeedsReconnect,
            Self::Disconnected => StatusKind::Disconnected,
        }
    }

    fn to_stored(&self) -> (&'static str, Option<String>) {
        match self {
            Self::Active => ("ACTIVE", None),
            Self::NeedsReconnect { reason } => ("NEEDS_RECONNECT", Some(reason.clone())),
            Self::Disconnected => ("DISCONNECTED", None),
        }
    }
}

/// A connected account and its sealed tokens.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Opaque id.
    pub id: CredentialId,
    /// Owning workspace.
    pub workspace_id: String,
    /// Provider catalog id.
    pub provider_id: String,
    /// The third-party account.
    pub account: ProviderAccount,
    /// Display name.
    pub display_name: DisplayName,
    /// Description.
    pub description: Description,
    /// Granted scopes.
    pub scopes: Scopes,
    /// Lifecycle state.
    pub status: Status,
    /// Who connected or imported it.
    pub created_by: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Last token issued.
    pub last_used_at: Option<Timestamp>,
    /// Last refresh.
    pub last_refreshed_at: Option<Timestamp>,
    /// Access token expiry.
    pub access_expires_at: Option<Timestamp>,
    /// When the background refresher should next look at it.
    pub next_refresh_at: Option<Timestamp>,
    /// Refresh token expiry, if known.
    pub refresh_expires_at: Option<Timestamp>,
    /// Whether the sealed bundle holds a refresh token.
    pub has_refresh_token: bool,
    /// The sealed token bundle (`None` once disconnected).
    pub sealed: Option<SealedColumns>,
    /// Row version for optimistic concurrency.
    pub version: i64,
    lease: LeaseColumns,
    /// Health of the grant and the cause of its last failure.
    pub health: Health,
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

impl Credential {
    /// A new credential at version 1.
    #[allow(clippy::too_many_arguments)] // a constructor of a wide aggregate; every field is required
    pub fn new(
        id: CredentialId,
        workspace_id: String,
        provider_id: String,
        account: ProviderAccount,
        display_name: DisplayName,
        description: Description,
        scopes: Scopes,
        created_by: String,
        now: Timestamp,
    ) -> Self {
        Self {
            id,
            workspace_id,
            provider_id,
            account,
            display_name,
            description,
            scopes,
            status: Status::Active,
            created_by,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            last_refreshed_at: None,
            access_expires_at: None,
            next_refresh_at: None,
            refresh_expires_at: None,
            has_refresh_token: false,
            sealed: None,
            version: 1,
            lease: LeaseColumns::default(),
            health: Health::healthy(Some(now)),
        }
    }

    /// Reads a stored row.
    pub fn from_row(r: CredentialRow) -> Result<Self, BrokerError> {
        let status = match r.status.as_str() {
            "ACTIVE" => Status::Active,
            "NEEDS_RECONNECT" => Status::NeedsReconnect {
                reason: r.status_reason.unwrap_or_default(),
            },
            "DISCONNECTED" => Status::Disconnected,
            other => {
                return Err(BrokerError::Internal(format!(
                    "unknown stored status {other:?}"
                )));
            }
        };
        Ok(Self {
            id: CredentialId::from_stored(r.id),
            workspace_id: r.workspace_id,
            provider_id: r.provider_id,
            account: ProviderAccount {
                subject: r.account_subject,
                label: r.account_label,
            },
            display_name: DisplayName::from_stored(r.display_name),
            description: Description::from_stored(r.description),
            scopes: Scopes::from_stored(&r.scopes),
            status,
            created_by: r.created_by,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            last_used_at: ts(r.last_used_at),
            last_refreshed_at: ts(r.last_refreshed_at),
            access_expires_at: ts(r.access_expires_at),
            next_refresh_at: ts(r.next_refresh_at),
            refresh_expires_at: ts(r.refresh_token_expires_at),
            has_refresh_token: r.has_refresh_token,
            sealed: r.sealed,
            version: r.row_version,
            lease: r.lease,
            health: Health::from_stored(r.health)?,
        })
    }

    /// The storage row.
    pub fn to_row(&self) -> CredentialRow {
        let (status, status_reason) = self.status.to_stored();
        CredentialRow {
            id: self.id.to_string(),
            workspace_id: self.workspace_id.clone(),
            provider_id: self.provider_id.clone(),
            account_subject: self.account.subject.clone(),
            account_label: self.account.label.clone(),
            display_name: self.display_name.to_string(),
            description: self.description.to_string(),
            scopes: self.scopes.to_space_separated(),
            status: status.to_owned(),
            status_reason,
            created_by: self.created_by.clone(),
            created_at: self.created_at.as_millis(),
            updated_at: self.updated_at.as_millis(),
            last_used_at: self.last_used_at.map(Timestamp::as_millis),
            last_refreshed_at: self.last_refreshed_at.map(Timestamp::as_millis),
            access_expires_at: self.access_expires_at.map(Timestamp::as_millis),
            next_refresh_at: self.next_refresh_at.map(Timestamp::as_millis),
            refresh_token_expires_at: self.refresh_expires_at.map(Timestamp::as_millis),
            has_refresh_token: self.has_refresh_token,
            sealed: self.sealed.clone(),
            row_version: self.version,
            lease: self.lease.clone(),
            health: self.health.to_stored(),
        }
    }

    /// Whether it was disconnected.
    pub fn is_disconnected(&self) -> bool {
        self.status == Status::Disconnected
    }
}

/// A credential as one caller sees it: metadata plus the caller's role.
#[derive(Clone, Debug)]
pub struct CredentialView {
    /// The credential (callers must never serialize `sealed`).
    pub credential: Credential,
    /// The actor's role, when the call acts for an end user.
    pub caller_role: Option<Role>,
}
