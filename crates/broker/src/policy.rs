//! The access rules shared by every use case: who may see a credential, and with which role.
//!
//! - A calling *service* acts either for an end user (the actor) or, for operators, on its own.
//! - Non-members get NOT_FOUND (the credential does not exist for them); members lacking the
//!   role get PERMISSION_DENIED.
//! - Workspace admins act as Admin on every credential of their workspace.

use crate::access::{Actor, Caller, Role, ServiceRole};
use crate::credential::Credential;
use crate::error::{BrokerError, reason};
use crate::types::CredentialId;
use cb_store::Store;
use std::sync::Arc;

/// Evaluates access rules against stored memberships.
#[derive(Clone)]
pub struct Policy {
    store: Arc<dyn Store>,
}

impl Policy {
    /// Rules over `store`'s memberships.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Loads a credential the caller may see, with the actor's role (`None` for a service
    /// reading without an actor). Invisible or unknown → NOT_FOUND.
    pub async fn load_visible(
        &self,
        caller: &Caller,
        id: &CredentialId,
    ) -> Result<(Credential, Option<Role>), BrokerError> {
        let row = self
            .store
            .get_credential(id.as_str())
            .await?
            .ok_or_else(BrokerError::credential_not_found)?;
        let c = Credential::from_row(row)?;
        match self.visibility(caller, &c).await? {
            Some(role) => Ok((c, role)),
            None => Err(BrokerError::credential_not_found()),
        }
    }

    /// Loads a credential on which the actor holds at least `needed`: NOT_FOUND for
    /// non-members, PERMISSION_DENIED for members with a lesser role.
    pub async fn load_with_role(
        &self,
        caller: &Caller,
        id: &CredentialId,
        needed: Role,
    ) -> Result<(Credential, Role), BrokerError> {
        let actor = require_actor(caller)?;
        let (c, role) = self.load_visible(caller, id).await?;
        match role {
            Some(r) if r >= needed => Ok((c, r)),
            _ => Err(BrokerError::PermissionDenied {
                reason: reason::ROLE_REQUIRED,
                message: format!(
                    "only an Admin of this credential can do this, and {} is a Member",
                    actor.email
                ),
            }),
        }
    }

    /// `None`: not visible. `Some(role)`: visible with the actor's role; `Some(None)` for an
    /// operator (or unauthenticated development) caller reading without an actor.
    pub async fn visibility(
        &self,
        caller: &Caller,
        c: &Credential,
    ) -> Result<Option<Option<Role>>, BrokerError> {
        match &caller.actor {
            Some(actor) => Ok(self.role_of(actor, c).await?.map(Some)),
            None if caller.role.reads_without_actor() => Ok(Some(None)),
            None => Err(actor_required()),
        }
    }

    /// The actor's effective role: workspace admins act as Admin; otherwise the actor's ACTIVE
    /// membership (matched by verified email, and by user id once bound).
    pub async fn role_of(
        &self,
        actor: &Actor,
        c: &Credential,
    ) -> Result<Option<Role>, BrokerError> {
        if actor.is_workspace_admin(&c.workspace_id) {
            return Ok(Some(Role::Admin));
        }
        let Some(m) = self
            .store
            .get_member(c.id.as_str(), actor.email.as_str())
            .await?
        else {
            return Ok(None);
        };
        let same_user = m
            .user_id
            .as_deref()
            .is_none_or(|u| u == actor.user_id.as_str());
        Ok((m.state == "ACTIVE" && same_user)
            .then(|| Role::from_stored(&m.role))
            .flatten())
    }
}

/// The error for a user action called without actor metadata.
pub fn actor_required() -> BrokerError {
    BrokerError::PermissionDenied {
        reason: reason::ACTOR_REQUIRED,
        message: "this call acts for an end user: set the x-actor-id and x-actor-email metadata"
            .into(),
    }
}

/// The actor of a call that must act for a user.
pub fn require_actor(caller: &Caller) -> Result<&Actor, BrokerError> {
    caller.actor.as_ref().ok_or_else(actor_required)
}

/// Only executor services (and the unauthenticated development listener) receive tokens.
pub fn require_token_issuer(caller: &Caller) -> Result<(), BrokerError> {
    if matches!(
        caller.role,
        ServiceRole::Executor | ServiceRole::Development
    ) {
        Ok(())
    } else {
        Err(BrokerError::PermissionDenied {
            reason: reason::CALLER_NOT_ALLOWED,
            message: format!("service {:?} may not receive tokens", caller.service),
        })
    }
}

/// Workspace admins (of `workspace`) and operators manage a workspace's `what` (OAuth apps,
/// webhook endpoints).
pub fn require_workspace_admin(
    caller: &Caller,
    workspace: &str,
    what: &str,
) -> Result<(), BrokerError> {
    match &caller.actor {
        Some(a) if a.is_workspace_admin(workspace) => Ok(()),
        Some(a) => Err(BrokerError::PermissionDenied {
            reason: reason::WORKSPACE_ADMIN_REQUIRED,
            message: format!(
                "only an admin of workspace {workspace} manages its {what}, and {} is not one",
                a.email
            ),
        }),
        None if matches!(
            caller.role,
            ServiceRole::Operator | ServiceRole::Development
        ) =>
        {
            Ok(())
        }
        None => Err(actor_required()),
    }
}

/// [`require_workspace_admin`] for one thing of `workspace`, which is visible only to its own
/// workspace: an actor of another workspace gets `not_found` (its existence is not disclosed).
pub fn require_owner_admin(
    caller: &Caller,
    workspace: &str,
    what: &str,
    not_found: fn() -> BrokerError,
) -> Result<(), BrokerError> {
    match &caller.actor {
        Some(a) if !a.is_workspace_admin(workspace) => {
            if a.workspace
                .as_ref()
                .is_some_and(|(w, _)| w.as_str() == workspace)
            {
                require_workspace_admin(caller, workspace, what)?;
            }
            Err(not_found())
        }
        _ => require_workspace_admin(caller, workspace, what),
    }
}
