//! Every RPC of the API and which calling-service roles may call it: the allow-list.

use cb_broker::access::ServiceRole;

/// One RPC of `credentialbroker.v1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// CredentialService/ListProviders
    ListProviders,
    /// CredentialService/StartConnect
    StartConnect,
    /// CredentialService/CompleteConnect
    CompleteConnect,
    /// CredentialService/StartReconnect
    StartReconnect,
    /// CredentialService/GetCredential
    GetCredential,
    /// CredentialService/ListCredentials
    ListCredentials,
    /// CredentialService/UpdateCredential
    UpdateCredential,
    /// CredentialService/DisconnectCredential
    DisconnectCredential,
    /// CredentialService/GetAccessToken
    GetAccessToken,
    /// CredentialService/ImportCredential
    ImportCredential,
    /// CredentialService/ListAuditEvents
    ListAuditEvents,
    /// CredentialService/CreateRunGrant
    CreateRunGrant,
    /// CredentialService/RevokeRunGrant
    RevokeRunGrant,
    /// CredentialService/ListCredentialEvents
    ListCredentialEvents,
    /// CredentialService/WatchCredentialEvents
    WatchCredentialEvents,
    /// CredentialService/ListWebhookDeliveries
    ListWebhookDeliveries,
    /// MembershipService/ListMembers
    ListMembers,
    /// MembershipService/AddMember
    AddMember,
    /// MembershipService/UpdateMemberRole
    UpdateMemberRole,
    /// MembershipService/RemoveMember
    RemoveMember,
    /// MembershipService/AcceptInvitation
    AcceptInvitation,
    /// OAuthAppService/CreateOAuthApp
    CreateOAuthApp,
    /// OAuthAppService/GetOAuthApp
    GetOAuthApp,
    /// OAuthAppService/ListOAuthApps
    ListOAuthApps,
    /// OAuthAppService/UpdateOAuthApp
    UpdateOAuthApp,
    /// OAuthAppService/DeleteOAuthApp
    DeleteOAuthApp,
    /// OAuthAppService/RotateOAuthAppSecret
    RotateOAuthAppSecret,
    /// OAuthAppService/RetireOAuthAppSecret
    RetireOAuthAppSecret,
    /// OAuthAppService/TestOAuthApp
    TestOAuthApp,
    /// OAuthAppService/CreateWorkspaceProvider
    CreateWorkspaceProvider,
    /// OAuthAppService/GetWorkspaceProvider
    GetWorkspaceProvider,
    /// OAuthAppService/ListWorkspaceProviders
    ListWorkspaceProviders,
    /// OAuthAppService/UpdateWorkspaceProvider
    UpdateWorkspaceProvider,
    /// OAuthAppService/DeleteWorkspaceProvider
    DeleteWorkspaceProvider,
    /// WebhookService/CreateWebhookEndpoint
    CreateWebhookEndpoint,
    /// WebhookService/GetWebhookEndpoint
    GetWebhookEndpoint,
    /// WebhookService/ListWebhookEndpoints
    ListWebhookEndpoints,
    /// WebhookService/UpdateWebhookEndpoint
    UpdateWebhookEndpoint,
    /// WebhookService/DeleteWebhookEndpoint
    DeleteWebhookEndpoint,
    /// WebhookService/RotateWebhookSecret
    RotateWebhookSecret,
    /// WebhookService/RetireWebhookSecret
    RetireWebhookSecret,
}

const CREDENTIAL_SERVICE: &str = "credentialbroker.v1.CredentialService";
const MEMBERSHIP_SERVICE: &str = "credentialbroker.v1.MembershipService";
const OAUTH_APP_SERVICE: &str = "credentialbroker.v1.OAuthAppService";
const WEBHOOK_SERVICE: &str = "credentialbroker.v1.WebhookService";

impl Rpc {
    /// Every RPC.
    pub const ALL: [Rpc; 41] = [
        Rpc::ListProviders,
        Rpc::StartConnect,
        Rpc::CompleteConnect,
        Rpc::StartReconnect,
        Rpc::GetCredential,
        Rpc::ListCredentials,
        Rpc::UpdateCredential,
        Rpc::DisconnectCredential,
        Rpc::GetAccessToken,
        Rpc::ImportCredential,
        Rpc::ListAuditEvents,
        Rpc::CreateRunGrant,
        Rpc::RevokeRunGrant,
        Rpc::ListCredentialEvents,
        Rpc::WatchCredentialEvents,
        Rpc::ListWebhookDeliveries,
        Rpc::ListMembers,
        Rpc::AddMember,
        Rpc::UpdateMemberRole,
        Rpc::RemoveMember,
        Rpc::AcceptInvitation,
        Rpc::CreateOAuthApp,
        Rpc::GetOAuthApp,
        Rpc::ListOAuthApps,
        Rpc::UpdateOAuthApp,
        Rpc::DeleteOAuthApp,
        Rpc::RotateOAuthAppSecret,
        Rpc::RetireOAuthAppSecret,
        Rpc::TestOAuthApp,
        Rpc::CreateWorkspaceProvider,
        Rpc::GetWorkspaceProvider,
        Rpc::ListWorkspaceProviders,
        Rpc::UpdateWorkspaceProvider,
        Rpc::DeleteWorkspaceProvider,
        Rpc::CreateWebhookEndpoint,
        Rpc::GetWebhookEndpoint,
        Rpc::ListWebhookEndpoints,
        Rpc::UpdateWebhookEndpoint,
        Rpc::DeleteWebhookEndpoint,
        Rpc::RotateWebhookSecret,
        Rpc::RetireWebhookSecret,
    ];

    /// The service's full name.
    pub fn service(self) -> &'static str {
        match self {
            Rpc::ListMembers
            | Rpc::AddMember
            | Rpc::UpdateMemberRole
            | Rpc::RemoveMember
            | Rpc::AcceptInvitation => MEMBERSHIP_SERVICE,
            Rpc::CreateOAuthApp
            | Rpc::GetOAuthApp
            | Rpc::ListOAuthApps
            | Rpc::UpdateOAuthApp
            | Rpc::DeleteOAuthApp
            | Rpc::RotateOAuthAppSecret
            | Rpc::RetireOAuthAppSecret
            | Rpc::TestOAuthApp
            | Rpc::CreateWorkspaceProvider
            | Rpc::GetWorkspaceProvider
            | Rpc::ListWorkspaceProviders
            | Rpc::UpdateWorkspaceProvider
            | Rpc::DeleteWorkspaceProvider => OAUTH_APP_SERVICE,
            Rpc::CreateWebhookEndpoint
            | Rpc::GetWebhookEndpoint
            | Rpc::ListWebhookEndpoints
            | Rpc::UpdateWebhookEndpoint
            | Rpc::DeleteWebhookEndpoint
            | Rpc::RotateWebhookSecret
            | Rpc::RetireWebhookSecret => WEBHOOK_SERVICE,
            _ => CREDENTIAL_SERVICE,
        }
    }

    /// The method name.
    pub fn method(self) -> &'static str {
        match self {
            Rpc::ListProviders => "ListProviders",
            Rpc::StartConnect => "StartConnect",
            Rpc::CompleteConnect => "CompleteConnect",
            Rpc::StartReconnect => "StartReconnect",
            Rpc::GetCredential => "GetCredential",
            Rpc::ListCredentials => "ListCredentials",
            Rpc::UpdateCredential => "UpdateCredential",
            Rpc::DisconnectCredential => "DisconnectCredential",
            Rpc::GetAccessToken => "GetAccessToken",
            Rpc::ImportCredential => "ImportCredential",
            Rpc::ListAuditEvents => "ListAuditEvents",
            Rpc::CreateRunGrant => "CreateRunGrant",
            Rpc::RevokeRunGrant => "RevokeRunGrant",
            Rpc::ListCredentialEvents => "ListCredentialEvents",
            Rpc::WatchCredentialEvents => "WatchCredentialEvents",
            Rpc::ListWebhookDeliveries => "ListWebhookDeliveries",
            Rpc::ListMembers => "ListMembers",
            Rpc::AddMember => "AddMember",
            Rpc::UpdateMemberRole => "UpdateMemberRole",
            Rpc::RemoveMember => "RemoveMember",
            Rpc::AcceptInvitation => "AcceptInvitation",
            Rpc::CreateOAuthApp => "CreateOAuthApp",
            Rpc::GetOAuthApp => "GetOAuthApp",
            Rpc::ListOAuthApps => "ListOAuthApps",
            Rpc::UpdateOAuthApp => "UpdateOAuthApp",
            Rpc::DeleteOAuthApp => "DeleteOAuthApp",
            Rpc::RotateOAuthAppSecret => "RotateOAuthAppSecret",
            Rpc::RetireOAuthAppSecret => "RetireOAuthAppSecret",
            Rpc::TestOAuthApp => "TestOAuthApp",
            Rpc::CreateWorkspaceProvider => "CreateWorkspaceProvider",
            Rpc::GetWorkspaceProvider => "GetWorkspaceProvider",
            Rpc::ListWorkspaceProviders => "ListWorkspaceProviders",
            Rpc::UpdateWorkspaceProvider => "UpdateWorkspaceProvider",
            Rpc::DeleteWorkspaceProvider => "DeleteWorkspaceProvider",
            Rpc::CreateWebhookEndpoint => "CreateWebhookEndpoint",
            Rpc::GetWebhookEndpoint => "GetWebhookEndpoint",
            Rpc::ListWebhookEndpoints => "ListWebhookEndpoints",
            Rpc::UpdateWebhookEndpoint => "UpdateWebhookEndpoint",
            Rpc::DeleteWebhookEndpoint => "DeleteWebhookEndpoint",
            Rpc::RotateWebhookSecret => "RotateWebhookSecret",
            Rpc::RetireWebhookSecret => "RetireWebhookSecret",
        }
    }

    /// The HTTP/2 path, `/package.Service/Method`.
    pub fn path(self) -> String {
        format!("/{}/{}", self.service(), self.method())
    }

    /// The RPC of a request path, if it is one of ours.
    pub fn from_path(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let rpc = match method {
            "ListProviders" => Rpc::ListProviders,
            "StartConnect" => Rpc::StartConnect,
            "CompleteConnect" => Rpc::CompleteConnect,
            "StartReconnect" => Rpc::StartReconnect,
            "GetCredential" => Rpc::GetCredential,
            "ListCredentials" => Rpc::ListCredentials,
            "UpdateCredential" => Rpc::UpdateCredential,
            "DisconnectCredential" => Rpc::DisconnectCredential,
            "GetAccessToken" => Rpc::GetAccessToken,
            "ImportCredential" => Rpc::ImportCredential,
            "ListAuditEvents" => Rpc::ListAuditEvents,
            "CreateRunGrant" => Rpc::CreateRunGrant,
            "RevokeRunGrant" => Rpc::RevokeRunGrant,
            "ListCredentialEvents" => Rpc::ListCredentialEvents,
            "WatchCredentialEvents" => Rpc::WatchCredentialEvents,
            "ListWebhookDeliveries" => Rpc::ListWebhookDeliveries,
            "ListMembers" => Rpc::ListMembers,
            "AddMember" => Rpc::AddMember,
            "UpdateMemberRole" => Rpc::UpdateMemberRole,
            "RemoveMember" => Rpc::RemoveMember,
            "AcceptInvitation" => Rpc::AcceptInvitation,
            "CreateOAuthApp" => Rpc::CreateOAuthApp,
            "GetOAuthApp" => Rpc::GetOAuthApp,
            "ListOAuthApps" => Rpc::ListOAuthApps,
            "UpdateOAuthApp" => Rpc::UpdateOAuthApp,
            "DeleteOAuthApp" => Rpc::DeleteOAuthApp,
            "RotateOAuthAppSecret" => Rpc::RotateOAuthAppSecret,
            "RetireOAuthAppSecret" => Rpc::RetireOAuthAppSecret,
            "TestOAuthApp" => Rpc::TestOAuthApp,
            "CreateWorkspaceProvider" => Rpc::CreateWorkspaceProvider,
            "GetWorkspaceProvider" => Rpc::GetWorkspaceProvider,
            "ListWorkspaceProviders" => Rpc::ListWorkspaceProviders,
            "UpdateWorkspaceProvider" => Rpc::UpdateWorkspaceProvider,
            "DeleteWorkspaceProvider" => Rpc::DeleteWorkspaceProvider,
            "CreateWebhookEndpoint" => Rpc::CreateWebhookEndpoint,
            "GetWebhookEndpoint" => Rpc::GetWebhookEndpoint,
            "ListWebhookEndpoints" => Rpc::ListWebhookEndpoints,
            "UpdateWebhookEndpoint" => Rpc::UpdateWebhookEndpoint,
            "DeleteWebhookEndpoint" => Rpc::DeleteWebhookEndpoint,
            "RotateWebhookSecret" => Rpc::RotateWebhookSecret,
            "RetireWebhookSecret" => Rpc::RetireWebhookSecret,
            _ => return None,
        };
        (rpc.service() == service).then_some(rpc)
    }

    /// Whether this RPC manages a workspace's OAuth apps, providers or webhook endpoints (web
    /// backend for workspace admins, and operators).
    pub fn manages_workspace(self) -> bool {
        matches!(self.service(), OAUTH_APP_SERVICE | WEBHOOK_SERVICE)
    }

    /// The allow-list: which calling-service roles may call this RPC.
    pub fn allows(self, role: ServiceRole) -> bool {
        use Rpc::*;
        match role {
            ServiceRole::Development => true,
            ServiceRole::Executor => {
                matches!(self, GetAccessToken | GetCredential | ListCredentials)
            }
            ServiceRole::Web => {
                !matches!(self, GetAccessToken | ImportCredential | ListAuditEvents)
            }
            ServiceRole::Operator => {
                matches!(
                    self,
                    ImportCredential
                        | ListAuditEvents
                        | ListProviders
                        | GetCredential
                        | ListCredentials
                        | ListMembers
                        | ListCredentialEvents
                        | WatchCredentialEvents
                        | ListWebhookDeliveries
                ) || self.manages_workspace()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_resolved_from_its_own_path_only() {
        for rpc in Rpc::ALL {
            assert_eq!(Rpc::from_path(&rpc.path()), Some(rpc));
            let other = if rpc.service() == CREDENTIAL_SERVICE {
                MEMBERSHIP_SERVICE
            } else {
                CREDENTIAL_SERVICE
            };
            assert_eq!(Rpc::from_path(&format!("/{other}/{}", rpc.method())), None);
        }
        assert_eq!(
            Rpc::from_path("/credentialbroker.v1.CredentialService/Nope"),
            None
        );
        assert_eq!(Rpc::from_path("GetAccessToken"), None);
    }
}
