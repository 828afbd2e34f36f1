//! Per-credential members: invitations by email, roles, leaving, and the last-admin rule (held
//! by the store in one transaction, so two admins demoting each other cannot both succeed).

use crate::access::{Caller, Role};
use crate::audit::{Audit, Write};
use crate::clock::{Clock, Timestamp};
use crate::credential::Credential;
use crate::error::{BrokerError, reason};
use crate::health::{EventKind, event};
use crate::issuance::TokenCache;
use crate::policy::{Policy, require_actor};
use crate::types::{CredentialId, Email};
use cb_store::{MemberChange, MemberRow, Store, StoreError};
use std::sync::Arc;

/// Whether a membership has been accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Waiting for the invitee.
    Invited,
    /// Working.
    Active,
}

/// One member of a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The credential.
    pub credential_id: String,
    /// Lowercase email, the membership key.
    pub email: String,
    /// Bound user id (once accepted).
    pub user_id: Option<String>,
    /// Role.
    pub role: Role,
    /// State.
    pub state: MemberState,
    /// Who invited them.
    pub invited_by: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl Member {
    fn from_row(r: MemberRow) -> Result<Self, BrokerError> {
        let role = Role::from_stored(&r.role)
            .ok_or_else(|| BrokerError::Internal(format!("unknown stored role {:?}", r.role)))?;
        let state = match r.state.as_str() {
            "INVITED" => MemberState::Invited,
            "ACTIVE" => MemberState::Active,
            other => {
                return Err(BrokerError::Internal(format!(
                    "unknown stored member state {other:?}"
                )));
            }
        };
        Ok(Self {
            credential_id: r.credential_id,
            email: r.email,
            user_id: r.user_id,
            role,
            state,
            invited_by: r.invited_by,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
        })
    }

    fn to_row(&self) -> MemberRow {
        MemberRow {
            credential_id: self.credential_id.clone(),
            email: self.email.clone(),
            user_id: self.user_id.clone(),
            role: self.role.as_str().to_owned(),
            state: match self.state {
                MemberState::Invited => "INVITED",
                MemberState::Active => "ACTIVE",
            }
            .to_owned(),
            invited_by: self.invited_by.clone(),
            created_at: self.created_at.as_millis(),
            updated_at: self.updated_at.as_millis(),
        }
    }
}

fn last_admin() -> BrokerError {
    BrokerError::FailedPrecondition {
        reason: reason::LAST_ADMIN,
        message: "a credential must keep at least one active Admin: make someone else Admin first"
            .into(),
    }
}

fn member_not_found() -> BrokerError {
    BrokerError::NotFound {
        reason: reason::MEMBER_NOT_FOUND,
        what: "member",
    }
}

fn map_change_error(e: StoreError) -> BrokerError {
    match e {
        StoreError::LastAdmin => last_admin(),
        StoreError::NotFound => member_not_found(),
        other => other.into(),
    }
}

/// Member management use cases.
pub struct MembershipService {
    store: Arc<dyn Store>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    audit: Audit,
    cache: Arc<TokenCache>,
}

impl MembershipService {
    /// Wires the use cases.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        audit: Audit,
        cache: Arc<TokenCache>,
    ) -> Self {
        Self {
            policy: Policy::new(store.clone()),
            store,
            clock,
            audit,
            cache,
        }
    }

    /// Applies a guarded member change and drops the cached token entry (it holds the member list).
    /// Writes the lifecycle event `kind` (detail: the member's email, and role) with it.
    async fn apply(
        &self,
        caller: &Caller,
        change: MemberChange,
        kind: EventKind,
        detail: String,
    ) -> Result<(), BrokerError> {
        let row = self
            .store
            .get_credential(change.credential_id())
            .await?
            .ok_or_else(BrokerError::credential_not_found)?;
        let c = Credential::from_row(row)?;
        let actor = caller.actor_label();
        let events = [event(
            &c,
            kind,
            actor.as_deref(),
            None,
            Some(detail),
            self.clock.now(),
        )];
        self.store
            .change_member_with_events(&change, &events)
            .await
            .map_err(map_change_error)?;
        self.cache.invalidate(change.credential_id());
        Ok(())
    }

    /// Lists members and invitations; any member (or an operator) may read them.
    pub async fn list(
        &self,
        caller: &Caller,
        id: &CredentialId,
    ) -> Result<Vec<Member>, BrokerError> {
        let result = async {
            self.policy.load_visible(caller, id).await?;
            self.store
                .list_members(id.as_str())
                .await?
                .into_iter()
                .map(Member::from_row)
                .collect()
        }
        .await;
        // Reads are audited through the buffer: a read never waits for a database write.
        self.audit
            .recorded(
                Write::Buffered,
                caller,
                "member.list",
                Some(id.as_str()),
                result,
                None,
            )
            .await
    }

    /// The stored membership of `email` in `id`; `missing` when there is none.
    async fn stored(
        &self,
        id: &CredentialId,
        email: &str,
        missing: fn() -> BrokerError,
    ) -> Result<Member, BrokerError> {
        let row = self.store.get_member(id.as_str(), email).await?;
        Member::from_row(row.ok_or_else(missing)?)
    }

    /// Invites `email` with `role`. Admin only. An existing member → ALREADY_EXISTS.
    pub async fn add(
        &self,
        caller: &Caller,
        id: &CredentialId,
        email: Email,
        role: Role,
    ) -> Result<Member, BrokerError> {
        let result = async {
            let (c, _) = self.policy.load_with_role(caller, id, Role::Admin).await?;
            if c.is_disconnected() {
                return Err(BrokerError::disconnected());
            }
            let now = self.clock.now();
            let m = Member {
                credential_id: id.to_string(),
                email: email.to_string(),
                user_id: None,
                role,
                state: MemberState::Invited,
                invited_by: require_actor(caller)?.user_id.to_string(),
                created_at: now,
                updated_at: now,
            };
            // The insert itself refuses an existing email, so two concurrent adds cannot both win.
            let detail = format!("email={email} role={}", role.as_str());
            let change = MemberChange::Add(m.to_row());
            match self
                .apply(caller, change, EventKind::MemberInvited, detail)
                .await
            {
                Err(BrokerError::AlreadyExists { .. }) => Err(BrokerError::AlreadyExists {
                    reason: reason::MEMBER_EXISTS,
                    message: format!(
                        "{email} is already a member or invited; change their role instead"
                    ),
                }),
                other => other.map(|()| m),
            }
        }
        .await;
        let detail = format!("email={email} role={}", role.as_str());
        self.audit
            .recorded(
                Write::Inline,
                caller,
                "member.add",
                Some(id.as_str()),
                result,
                Some(detail),
            )
            .await
    }

    /// The actor accepts an invitation addressed to their verified email.
    pub async fn accept(&self, caller: &Caller, id: &CredentialId) -> Result<Member, BrokerError> {
        let result = async {
            let actor = require_actor(caller)?;
            // Invitees cannot see the credential yet: an unknown invitation is NOT_FOUND, the
            // same answer as an unknown credential.
            let m = self
                .stored(id, actor.email.as_str(), BrokerError::credential_not_found)
                .await?;
            if m.state == MemberState::Invited {
                let change = MemberChange::Accept {
                    credential_id: id.to_string(),
                    email: actor.email.to_string(),
                    user_id: actor.user_id.to_string(),
                    updated_at: self.clock.now().as_millis(),
                };
                let detail = format!("email={}", actor.email);
                match self
                    .apply(caller, change, EventKind::MemberJoined, detail)
                    .await
                {
                    // Accepted, or removed, meanwhile: the row below says which.
                    Ok(()) | Err(BrokerError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            // What is stored now: a concurrent role change or accept is reported as it is.
            let m = self
                .stored(id, actor.email.as_str(), BrokerError::credential_not_found)
                .await?;
            let mine = m.state == MemberState::Active
                && m.user_id
                    .as_deref()
                    .is_none_or(|u| u == actor.user_id.as_str());
            if mine {
                Ok(m)
            } else {
                Err(BrokerError::credential_not_found())
            }
        }
        .await;
        self.audit
            .recorded(
                Write::Inline,
                caller,
                "member.accept",
                Some(id.as_str()),
                result,
                None,
            )
            .await
    }

    /// Changes a member's role. Admin only; demoting the last active Admin → LAST_ADMIN.
    pub async fn update_role(
        &self,
        caller: &Caller,
        id: &CredentialId,
        email: Email,
        role: Role,
    ) -> Result<Member, BrokerError> {
        let result = async {
            self.policy.load_with_role(caller, id, Role::Admin).await?;
            // Only the role column is written, so an invitation accepted meanwhile stays accepted.
            let change = MemberChange::SetRole {
                credential_id: id.to_string(),
                email: email.to_string(),
                role: role.as_str().to_owned(),
                updated_at: self.clock.now().as_millis(),
            };
            let detail = format!("email={email} role={}", role.as_str());
            self.apply(caller, change, EventKind::MemberRoleChanged, detail)
                .await?;
            self.stored(id, email.as_str(), member_not_found).await
        }
        .await;
        let detail = format!("email={email} role={}", role.as_str());
        self.audit
            .recorded(
                Write::Inline,
                caller,
                "member.update_role",
                Some(id.as_str()),
                result,
                Some(detail),
            )
            .await
    }

    /// Removes a member; any member may remove themselves (leave). Removing the last active
    /// Admin → LAST_ADMIN.
    pub async fn remove(
        &self,
        caller: &Caller,
        id: &CredentialId,
        email: Email,
    ) -> Result<(), BrokerError> {
        let result = async {
            let actor = require_actor(caller)?;
            if actor.email == email {
                self.policy.load_with_role(caller, id, Role::Member).await?;
            } else {
                self.policy.load_with_role(caller, id, Role::Admin).await?;
            }
            let change = MemberChange::Delete {
                credential_id: id.to_string(),
                email: email.to_string(),
            };
            let detail = format!("email={email}");
            self.apply(caller, change, EventKind::MemberRemoved, detail)
                .await
        }
        .await;
        let detail = format!("email={email}");
        self.audit
            .recorded(
                Write::Inline,
                caller,
                "member.remove",
                Some(id.as_str()),
                result,
                Some(detail),
            )
            .await
    }
}
