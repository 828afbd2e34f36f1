//! `credentialbroker.v1.CredentialService`.

use super::{caller, respond, unimplemented};
use crate::convert::{self, Importable, Listable, Updatable};
use cb_broker::service::CredentialService;
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_server::CredentialService as Rpc;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The gRPC face of the credential use cases.
pub struct CredentialApi {
    service: Arc<CredentialService>,
}

impl CredentialApi {
    /// Wraps the domain service.
    pub fn new(service: Arc<CredentialService>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl Rpc for CredentialApi {
    async fn list_providers(
        &self,
        _req: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        Err(unimplemented(
            "ListProviders",
            "the provider catalog (OAuth connect issue)",
        ))
    }

    async fn start_connect(
        &self,
        _req: Request<pb::StartConnectRequest>,
    ) -> Result<Response<pb::StartConnectResponse>, Status> {
        Err(unimplemented(
            "StartConnect",
            "the OAuth connect flow (OAuth connect issue)",
        ))
    }

    async fn complete_connect(
        &self,
        _req: Request<pb::CompleteConnectRequest>,
    ) -> Result<Response<pb::CompleteConnectResponse>, Status> {
        Err(unimplemented(
            "CompleteConnect",
            "the OAuth connect flow (OAuth connect issue)",
        ))
    }

    async fn start_reconnect(
        &self,
        _req: Request<pb::StartReconnectRequest>,
    ) -> Result<Response<pb::StartReconnectResponse>, Status> {
        Err(unimplemented(
            "StartReconnect",
            "the OAuth reconnect flow (OAuth connect issue)",
        ))
    }

    async fn get_credential(
        &self,
        req: Request<pb::GetCredentialRequest>,
    ) -> Result<Response<pb::GetCredentialResponse>, Status> {
        let caller = caller(&req)?;
        let id = convert::credential_id("credential_id", &req.get_ref().credential_id);
        let result = async { self.service.get(&caller, &id?).await }.await;
        respond(result.map(|v| pb::GetCredentialResponse {
            credential: Some(convert::credential(&v)),
        }))
    }

    async fn list_credentials(
        &self,
        req: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let Listable(q) = req.into_inner().try_into()?;
            self.service.list(&caller, q).await
        }
        .await;
        respond(result.map(|page| pb::ListCredentialsResponse {
            credentials: page.items.iter().map(convert::credential).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_credential(
        &self,
        req: Request<pb::UpdateCredentialRequest>,
    ) -> Result<Response<pb::UpdateCredentialResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let Updatable(u) = req.into_inner().try_into()?;
            self.service.update(&caller, u).await
        }
        .await;
        respond(result.map(|v| pb::UpdateCredentialResponse {
            credential: Some(convert::credential(&v)),
        }))
    }

    async fn disconnect_credential(
        &self,
        req: Request<pb::DisconnectCredentialRequest>,
    ) -> Result<Response<pb::DisconnectCredentialResponse>, Status> {
        let caller = caller(&req)?;
        let id = convert::credential_id("credential_id", &req.get_ref().credential_id);
        let result = async { self.service.disconnect(&caller, &id?).await }.await;
        respond(result.map(|(v, r)| {
            let (outcome, detail) = convert::revocation(&r);
            pb::DisconnectCredentialResponse {
                credential: Some(convert::credential(&v)),
                revocation: outcome as i32,
                revocation_detail: detail,
            }
        }))
    }

    async fn get_access_token(
        &self,
        _req: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        Err(unimplemented(
            "GetAccessToken",
            "token issuance and the refresh coordinator (refresh issue)",
        ))
    }

    async fn import_credential(
        &self,
        req: Request<pb::ImportCredentialRequest>,
    ) -> Result<Response<pb::ImportCredentialResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let Importable(i) = req.into_inner().try_into()?;
            self.service.import(&caller, i).await
        }
        .await;
        respond(result.map(|v| pb::ImportCredentialResponse {
            credential: Some(convert::credential(&v)),
        }))
    }

    async fn list_audit_events(
        &self,
        _req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        Err(unimplemented(
            "ListAuditEvents",
            "audit queries (members and access control issue)",
        ))
    }
}
