//! `credentialbroker.v1.MembershipService`.

use super::unimplemented;
use cb_proto::v1 as pb;
use cb_proto::v1::membership_service_server::MembershipService as Rpc;
use tonic::{Request, Response, Status};

const MISSING: &str = "member management (members and access control issue)";

/// The gRPC face of membership management.
#[derive(Default)]
pub struct MembershipApi;

#[tonic::async_trait]
impl Rpc for MembershipApi {
    async fn list_members(
        &self,
        _req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        Err(unimplemented("ListMembers", MISSING))
    }

    async fn add_member(
        &self,
        _req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        Err(unimplemented("AddMember", MISSING))
    }

    async fn update_member_role(
        &self,
        _req: Request<pb::UpdateMemberRoleRequest>,
    ) -> Result<Response<pb::UpdateMemberRoleResponse>, Status> {
        Err(unimplemented("UpdateMemberRole", MISSING))
    }

    async fn remove_member(
        &self,
        _req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        Err(unimplemented("RemoveMember", MISSING))
    }

    async fn accept_invitation(
        &self,
        _req: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        Err(unimplemented("AcceptInvitation", MISSING))
    }
}
