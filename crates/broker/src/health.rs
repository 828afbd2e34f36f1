//! The health of a credential's grant, with the cause of its last refresh failure, and the
//! lifecycle events that record every change of a credential.
//!
//! Causes are kept apart because their fixes differ: a provider outage fixes itself (the
//! credential is not broken and is never marked NEEDS_RECONNECT), a revoked or expired grant
//! needs a person to reconnect, a rejected client needs an operator to fix the app.

use crate::clock::Timestamp;
use crate::credential::Credential;
use crate::error::BrokerError;
use crate::gateway::ProviderError;
use cb_store::{HealthColumns, NewCredentialEvent};

/// What state a credential's grant is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthKind {
    /// The last refresh (or the connect) succeeded.
    Healthy,
    /// The provider failed transiently (5xx, timeout, 429): the grant is not broken.
    ProviderOutage,
    /// The provider refused the grant (`invalid_grant`: revoked or expired).
    GrantRevoked,
    /// The provider refused the client (`invalid_client`, `unauthorized_client`): an
    /// operator must fix the app registration; the grant may be fine.
    ClientMisconfigured,
    /// The provider granted fewer scopes on refresh than were connected.
    ScopesRevoked,
    /// A refresh died mid-way (crashed replica) and the grant was refused afterwards.
    RefreshInterrupted,
    /// The grant ends soon (absolute lifetime).
    Expiring,
}

impl HealthKind {
    /// Every health, in stored order.
    pub const ALL: [Self; 7] = [
        Self::Healthy,
        Self::ProviderOutage,
        Self::GrantRevoked,
        Self::ClientMisconfigured,
        Self::ScopesRevoked,
        Self::RefreshInterrupted,
        Self::Expiring,
    ];

    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "HEALTHY",
            Self::ProviderOutage => "PROVIDER_OUTAGE",
            Self::GrantRevoked => "GRANT_REVOKED",
            Self::ClientMisconfigured => "CLIENT_MISCONFIGURED",
            Self::ScopesRevoked => "SCOPES_REVOKED",
            Self::RefreshInterrupted => "REFRESH_INTERRUPTED",
            Self::Expiring => "EXPIRING",
        }
    }

    /// Reads a stored name.
    pub fn from_stored(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }

    /// The lowercase class name used in event causes and metrics labels.
    pub fn class(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

/// A credential's health and the cause of the last failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The state.
    pub kind: HealthKind,
    /// Why, never a secret.
    pub cause: Option<String>,
    /// Since when.
    pub since: Option<Timestamp>,
    /// Consecutive refresh failures.
    pub failures: i64,
    /// The provider's last error code.
    pub error_code: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self::healthy(None)
    }
}

impl Health {
    /// Healthy since `since`.
    pub fn healthy(since: Option<Timestamp>) -> Self {
        Self {
            kind: HealthKind::Healthy,
            cause: None,
            since,
            failures: 0,
            error_code: None,
        }
    }

    /// One more failure of `kind` (the `since` of a continuing health is kept).
    pub fn failed(&self, kind: HealthKind, cause: String, code: String, now: Timestamp) -> Self {
        Self {
            kind,
            cause: Some(cause),
            since: if self.kind == kind && self.since.is_some() {
                self.since
            } else {
                Some(now)
            },
            failures: self.failures + 1,
            error_code: Some(code),
        }
    }

    /// Reads stored columns.
    pub fn from_stored(h: HealthColumns) -> Result<Self, BrokerError> {
        let kind = HealthKind::from_stored(&h.health).ok_or_else(|| {
            BrokerError::Internal(format!("unknown stored health {:?}", h.health))
        })?;
        Ok(Self {
            kind,
            cause: h.cause,
            since: h.since.map(Timestamp::from_millis),
            failures: h.failures,
            error_code: h.error_code,
        })
    }

    /// The storage columns.
    pub fn to_stored(&self) -> HealthColumns {
        HealthColumns {
            health: self.kind.as_str().to_owned(),
            cause: self.cause.clone(),
            since: self.since.map(Timestamp::as_millis),
            failures: self.failures,
            error_code: self.error_code.clone(),
        }
    }
}

/// How a failed refresh is classified.
pub fn classify(e: &ProviderError) -> HealthKind {
    match e {
        ProviderError::Permanent(_) => HealthKind::GrantRevoked,
        ProviderError::ClientRejected(_) => HealthKind::ClientMisconfigured,
        ProviderError::Transient { .. } | ProviderError::Denied(_) | ProviderError::Other(_) => {
            HealthKind::ProviderOutage
        }
    }
}

/// What happened to a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A new credential was connected.
    Connected,
    /// An existing credential was connected again (reconnect, or same account).
    Reconnected,
    /// Name or description changed.
    Updated,
    /// Disconnected; tokens destroyed.
    Disconnected,
    /// A refresh failed (cause: the health class); recorded when the class changes.
    RefreshFailed,
    /// A refresh succeeded after failures (cause: the health it recovers from).
    Recovered,
    /// The credential needs a reconnect (cause: the reason).
    NeedsReconnect,
    /// The grant ends soon.
    Expiring,
    /// A member was invited.
    MemberInvited,
    /// An invited member joined.
    MemberJoined,
    /// A member's role changed.
    MemberRoleChanged,
    /// A member was removed.
    MemberRemoved,
    /// A workspace event: a webhook endpoint was disabled after failing for the configured
    /// period (detail: `endpoint=<id>`; no credential).
    WebhookEndpointDisabled,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 13] = [
        Self::Connected,
        Self::Reconnected,
        Self::Updated,
        Self::Disconnected,
        Self::RefreshFailed,
        Self::Recovered,
        Self::NeedsReconnect,
        Self::Expiring,
        Self::MemberInvited,
        Self::MemberJoined,
        Self::MemberRoleChanged,
        Self::MemberRemoved,
        Self::WebhookEndpointDisabled,
    ];

    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Reconnected => "reconnected",
            Self::Updated => "updated",
            Self::Disconnected => "disconnected",
            Self::RefreshFailed => "refresh_failed",
            Self::Recovered => "recovered",
            Self::NeedsReconnect => "needs_reconnect",
            Self::Expiring => "expiring",
            Self::MemberInvited => "member_invited",
            Self::MemberJoined => "member_joined",
            Self::MemberRoleChanged => "member_role_changed",
            Self::MemberRemoved => "member_removed",
            Self::WebhookEndpointDisabled => "webhook_endpoint_disabled",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A lifecycle event of `c` to append with the change it records.
pub fn event(
    c: &Credential,
    kind: EventKind,
    actor: Option<&str>,
    cause: Option<String>,
    detail: Option<String>,
    now: Timestamp,
) -> NewCredentialEvent {
    NewCredentialEvent {
        event_id: uuid::Uuid::now_v7().hyphenated().to_string(),
        at: now.as_millis(),
        workspace_id: c.workspace_id.clone(),
        credential_id: Some(c.id.to_string()),
        kind: kind.as_str().to_owned(),
        actor: actor.map(str::to_owned),
        cause,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in HealthKind::ALL {
            assert_eq!(HealthKind::from_stored(h.as_str()), Some(h));
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn an_outage_is_never_a_revocation() {
        let outage = ProviderError::Transient {
            detail: "provider temporarily unavailable: HTTP 503".into(),
            retry_after: None,
        };
        assert_eq!(classify(&outage), HealthKind::ProviderOutage);
        assert_eq!(
            classify(&ProviderError::Permanent("invalid_grant".into())),
            HealthKind::GrantRevoked
        );
        assert_eq!(
            classify(&ProviderError::ClientRejected("invalid_client".into())),
            HealthKind::ClientMisconfigured
        );
    }

    #[test]
    fn a_continuing_failure_keeps_its_since() {
        let first = Health::default().failed(
            HealthKind::ProviderOutage,
            "503".into(),
            "temporarily_unavailable".into(),
            Timestamp::from_millis(10),
        );
        let second = first.failed(
            HealthKind::ProviderOutage,
            "503".into(),
            "temporarily_unavailable".into(),
            Timestamp::from_millis(20),
        );
        assert_eq!(second.since, Some(Timestamp::from_millis(10)));
        assert_eq!(second.failures, 2);
    }
}
