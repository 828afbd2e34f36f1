//! `credentialbroker.v1.MembershipService`.

use super::{caller, respond};
use crate::grpc::convert;
use cb_broker::BrokerError;
use cb_broker::access::Role;
use cb_broker::members::{Member, MemberState, MembershipService};
use cb_broker::types::{CredentialId, Email, Violations};
use cb_proto::v1 as pb;
use cb_proto::v1::membership_service_server::MembershipService as Rpc;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The gRPC face of membership management.
pub struct MembershipApi {
    service: Arc<MembershipService>,
}

impl MembershipApi {
    /// Wraps the domain service.
    pub fn new(service: Arc<MembershipService>) -> Self {
        Self { service }
    }
}

fn member(m: &Member) -> pb::Member {
    pb::Member {
        credential_id: m.credential_id.clone(),
        email: m.email.clone(),
        user_id: m.user_id.clone().unwrap_or_default(),
        role: convert::role(m.role) as i32,
        state: match m.state {
            MemberState::Invited => pb::MemberState::Invited,
            MemberState::Active => pb::MemberState::Active,
        } as i32,
        invited_by: m.invited_by.clone(),
        create_time: Some(convert::timestamp(m.created_at)),
        update_time: Some(convert::timestamp(m.updated_at)),
    }
}

/// Parses the (credential id, email[, role]) every member-changing request names, reporting
/// every bad field at once.
fn target(
    credential_id: &str,
    email: &str,
    role: Option<i32>,
) -> Result<(CredentialId, Email, Option<Role>), BrokerError> {
    let mut v = Violations::default();
    let id = v.check(CredentialId::parse("credential_id", credential_id));
    let email = v.check(Email::parse("email", email));
    let role = role.and_then(|r| v.check(convert::parse_role("role", r)));
    v.finish()?;
    Ok((convert::parsed(id)?, convert::parsed(email)?, role))
}

#[tonic::async_trait]
impl Rpc for MembershipApi {
    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = convert::credential_id("credential_id", &req.get_ref().credential_id)?;
            self.service.list(&caller, &id).await
        }
        .await;
        respond(result.map(|ms| pb::ListMembersResponse {
            members: ms.iter().map(member).collect(),
        }))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let (id, email, role) = target(&r.credential_id, &r.email, Some(r.role))?;
            let role = convert::parsed(role)?;
            self.service.add(&caller, &id, email, role).await
        }
        .await;
        respond(result.map(|m| pb::AddMemberResponse {
            member: Some(member(&m)),
        }))
    }

    async fn update_member_role(
        &self,
        req: Request<pb::UpdateMemberRoleRequest>,
    ) -> Result<Response<pb::UpdateMemberRoleResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let (id, email, role) = target(&r.credential_id, &r.email, Some(r.role))?;
            let role = convert::parsed(role)?;
            self.service.update_role(&caller, &id, email, role).await
        }
        .await;
        respond(result.map(|m| pb::UpdateMemberRoleResponse {
            member: Some(member(&m)),
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let (id, email, _) = target(&r.credential_id, &r.email, None)?;
            self.service.remove(&caller, &id, email).await
        }
        .await;
        respond(result.map(|()| pb::RemoveMemberResponse {}))
    }

    async fn accept_invitation(
        &self,
        req: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = convert::credential_id("credential_id", &req.get_ref().credential_id)?;
            self.service.accept(&caller, &id).await
        }
        .await;
        respond(result.map(|m| pb::AcceptInvitationResponse {
            member: Some(member(&m)),
        }))
    }
}
