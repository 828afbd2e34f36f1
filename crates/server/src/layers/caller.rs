//! Who is calling: the calling service and the end user (actor) it acts for: from a verified
//! actor assertion ([`crate::layers::assertion`]) or, where that layer allows it, from plain
//! request metadata. The actor contract is documented in docs/api.md.

use crate::layers::assertion::ActorSource;
use crate::layers::auth::ServiceIdentity;
use cb_broker::access::{Actor, Caller, WorkspaceRole};
use cb_broker::types::{Email, UserId, Violations, WorkspaceId};
use cb_broker::{BrokerError, FieldViolation};
use tonic::codegen::http::HeaderName;
use tonic::metadata::MetadataMap;

/// Metadata key: the actor's user id.
pub const ACTOR_ID: &str = "x-actor-id";
/// Metadata key: the actor's verified email.
pub const ACTOR_EMAIL: &str = "x-actor-email";
/// Metadata key: the workspace the actor's workspace role applies to.
pub const ACTOR_WORKSPACE_ID: &str = "x-actor-workspace-id";
/// Metadata key: the actor's role in that workspace (`admin` or `member`).
pub const ACTOR_WORKSPACE_ROLE: &str = "x-actor-workspace-role";

/// One actor metadata key: its header name, made once (a lookup by `&str` parses the name on
/// every call), and the field its violations report (`metadata:<key>`).
struct Key {
    header: HeaderName,
    field: &'static str,
}

const fn key(name: &'static str, field: &'static str) -> Key {
    Key {
        header: HeaderName::from_static(name),
        field,
    }
}

const ID: Key = key(ACTOR_ID, "metadata:x-actor-id");
const EMAIL: Key = key(ACTOR_EMAIL, "metadata:x-actor-email");
const WORKSPACE_ID: Key = key(ACTOR_WORKSPACE_ID, "metadata:x-actor-workspace-id");
const WORKSPACE_ROLE: Key = key(ACTOR_WORKSPACE_ROLE, "metadata:x-actor-workspace-role");

fn text<'a>(md: &'a MetadataMap, key: &Key, v: &mut Violations) -> Option<&'a str> {
    let value = md.as_ref().get(&key.header)?;
    match value.to_str() {
        Ok(s) => Some(s.trim()),
        Err(_) => {
            v.push(FieldViolation::new(key.field, "must be printable ASCII"));
            None
        }
    }
}

/// Reads the actor metadata: absent when neither id nor email is set; both are required together.
pub fn actor_from_metadata(md: &MetadataMap) -> Result<Option<Actor>, BrokerError> {
    let mut v = Violations::default();
    let id = text(md, &ID, &mut v);
    let email = text(md, &EMAIL, &mut v);
    let ws = text(md, &WORKSPACE_ID, &mut v);
    let role = text(md, &WORKSPACE_ROLE, &mut v);
    if id.is_none() && email.is_none() {
        v.finish()?;
        return Ok(None);
    }
    let user_id = v.check(UserId::parse(ID.field, id.unwrap_or("")));
    let email = v.check(Email::parse(EMAIL.field, email.unwrap_or("")));
    let workspace = match (ws, role) {
        (None, None) => None,
        (Some(w), Some(r)) => {
            let w = v.check(WorkspaceId::parse(WORKSPACE_ID.field, w));
            let r = match r {
                "admin" => Some(WorkspaceRole::Admin),
                "member" => Some(WorkspaceRole::Member),
                _ => {
                    v.push(FieldViolation::new(
                        WORKSPACE_ROLE.field,
                        "must be admin or member",
                    ));
                    None
                }
            };
            w.zip(r)
        }
        _ => {
            v.push(FieldViolation::new(
                WORKSPACE_ROLE.field,
                format!("{ACTOR_WORKSPACE_ID} and {ACTOR_WORKSPACE_ROLE} must be set together"),
            ));
            None
        }
    };
    v.finish()?;
    match (user_id, email) {
        (Some(user_id), Some(email)) => Ok(Some(Actor {
            user_id,
            email,
            workspace,
        })),
        _ => Err(BrokerError::Internal("actor parse inconsistency".into())),
    }
}

/// The caller of a request: the service identity the auth layer established, plus the actor
/// the actor layer decided on (plain metadata is read only where it allowed that).
pub fn caller_of<T>(req: &tonic::Request<T>) -> Result<Caller, BrokerError> {
    let identity = req.extensions().get::<ServiceIdentity>().ok_or_else(|| {
        BrokerError::Internal("request reached a service without passing authentication".into())
    })?;
    let actor = match req.extensions().get::<ActorSource>() {
        Some(ActorSource::Verified(actor)) => Some(actor.clone()),
        Some(ActorSource::Unsigned) => actor_from_metadata(req.metadata())?,
        Some(ActorSource::None) => None,
        None => {
            return Err(BrokerError::Internal(
                "request reached a service without passing the actor layer".into(),
            ));
        }
    };
    Ok(Caller {
        service: identity.name.clone(),
        role: identity.role,
        actor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_metadata_keys() {
        for (key, name) in [
            (ID, ACTOR_ID),
            (EMAIL, ACTOR_EMAIL),
            (WORKSPACE_ID, ACTOR_WORKSPACE_ID),
            (WORKSPACE_ROLE, ACTOR_WORKSPACE_ROLE),
        ] {
            assert_eq!(key.header.as_str(), name);
            assert_eq!(key.field, format!("metadata:{name}"));
        }
    }
}
