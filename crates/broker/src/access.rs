//! Who is calling and what they may do: the caller (an authenticated service) and the actor (the
//! end user the call acts for), and the per-credential role rules.

use crate::types::{Email, UserId, WorkspaceId};

/// A member's role on one credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Uses the credential; sees its metadata.
    Member,
    /// Also edits, reconnects, disconnects and manages members.
    Admin,
}

impl Role {
    /// Storage form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "ADMIN",
            Self::Member => "MEMBER",
        }
    }
    /// Parses the storage form.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "ADMIN" => Some(Self::Admin),
            "MEMBER" => Some(Self::Member),
            _ => None,
        }
    }
}

/// The actor's role in a workspace, as the trusted caller states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceRole {
    /// A workspace admin acts as Admin on every credential of that workspace.
    Admin,
    /// An ordinary workspace member.
    Member,
}

/// The end user on whose behalf a call is made (from request metadata set by a trusted caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The platform's user id.
    pub user_id: UserId,
    /// The user's verified email.
    pub email: Email,
    /// The workspace the role below applies to, if stated.
    pub workspace: Option<(WorkspaceId, WorkspaceRole)>,
}

impl Actor {
    /// Whether the actor is an admin of `workspace`.
    pub fn is_workspace_admin(&self, workspace: &str) -> bool {
        matches!(&self.workspace, Some((w, WorkspaceRole::Admin)) if w.as_str() == workspace)
    }
}

/// What a calling service is (its built-in role); the server's allow-list is keyed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceRole {
    /// Workflow executors: fetch tokens and read credentials for their actor.
    Executor,
    /// The web backend: every UI action, never tokens or imports.
    Web,
    /// Operators: import, audit, and read everything.
    Operator,
    /// No caller authentication configured (loopback-only development listener): all RPCs.
    Development,
}

impl ServiceRole {
    /// Parses the config name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "executor" => Some(Self::Executor),
            "web" => Some(Self::Web),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executor => "executor",
            Self::Web => "web",
            Self::Operator => "operator",
            Self::Development => "development",
        }
    }
    /// Whether calls without an actor may read every credential.
    pub fn reads_without_actor(self) -> bool {
        matches!(self, Self::Operator | Self::Development)
    }
}

/// The authenticated calling service and the actor it acts for.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The calling service's configured name (e.g. `web`, `executor-eu`, or `anonymous`).
    pub service: String,
    /// The service's role.
    pub role: ServiceRole,
    /// The end user, if the call acts for one.
    pub actor: Option<Actor>,
}

impl Caller {
    /// The actor's user id for audit records.
    pub fn actor_label(&self) -> Option<String> {
        self.actor.as_ref().map(|a| a.user_id.to_string())
    }
}
