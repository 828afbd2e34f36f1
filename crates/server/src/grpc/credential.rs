//! `credentialbroker.v1.CredentialService`.

use super::{caller, respond};
use crate::grpc::convert::{self, Importable, Listable, Updatable};
use crate::grpc::status::to_status;
use cb_broker::access::Caller;
use cb_broker::connect::ConnectService;
use cb_broker::credential::CredentialView;
use cb_broker::events::EventService;
use cb_broker::issuance::RunGrantUse;
use cb_broker::issuance::TokenService;
use cb_broker::service::CredentialService;
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_server::CredentialService as Rpc;
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Metadata key: the run grant an executor presents with GetAccessToken (docs/api.md).
pub const RUN_GRANT: &str = "x-run-grant";

/// [`RUN_GRANT`] as a header name, made once (a lookup by `&str` parses the name every time).
const RUN_GRANT_HEADER: tonic::codegen::http::HeaderName =
    tonic::codegen::http::HeaderName::from_static(RUN_GRANT);

/// The gRPC face of the credential use cases.
pub struct CredentialApi {
    credentials: Arc<CredentialService>,
    tokens: Arc<TokenService>,
    connect: Arc<ConnectService>,
    /// Callers that must present a run grant with GetAccessToken.
    run_grant_required: BTreeSet<String>,
    events: Arc<EventService>,
}

impl CredentialApi {
    /// Wraps the domain services; the named callers must present run grants.
    pub fn new(
        credentials: Arc<CredentialService>,
        tokens: Arc<TokenService>,
        connect: Arc<ConnectService>,
        run_grant_required: BTreeSet<String>,
        events: Arc<EventService>,
    ) -> Self {
        Self {
            credentials,
            tokens,
            connect,
            run_grant_required,
            events,
        }
    }

    /// The run grant of a GetAccessToken call and whether its caller must present one.
    fn run_grant<T>(&self, req: &Request<T>, caller: &Caller) -> Result<RunGrantUse, Status> {
        let presented = match req.metadata().as_ref().get(RUN_GRANT_HEADER) {
            None => None,
            Some(v) => Some(SecretString::from(v.to_str().map_err(|_| {
                to_status(cb_broker::BrokerError::invalid(
                    format!("metadata:{RUN_GRANT}"),
                    "must be printable ASCII",
                ))
            })?)),
        };
        Ok(RunGrantUse {
            presented,
            required: self.run_grant_required.contains(&caller.service),
        })
    }
}

/// The stream of WatchCredentialEvents.
type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchCredentialEventsResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Rpc for CredentialApi {
    type WatchCredentialEventsStream = WatchStream;

    async fn list_credential_events(
        &self,
        req: Request<pb::ListCredentialEventsRequest>,
    ) -> Result<Response<pb::ListCredentialEventsResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let filter = convert::event_list_filter(req.get_ref())?;
            self.events.list(&caller, filter).await
        }
        .await;
        respond(result.map(|(rows, next)| pb::ListCredentialEventsResponse {
            events: rows.into_iter().map(convert::credential_event).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        req: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let (endpoint, after, page_size) = convert::delivery_page(req.get_ref())?;
            self.events
                .list_deliveries(&caller, &endpoint, after, page_size)
                .await
        }
        .await;
        respond(
            result.map(|(endpoint, rows, next)| pb::ListWebhookDeliveriesResponse {
                deliveries: rows.into_iter().map(convert::webhook_delivery).collect(),
                next_page_token: next.unwrap_or_default(),
                workspace_id: endpoint.workspace_id,
                disabled: endpoint.disabled_at.is_some(),
            }),
        )
    }

    async fn watch_credential_events(
        &self,
        req: Request<pb::WatchCredentialEventsRequest>,
    ) -> Result<Response<Self::WatchCredentialEventsStream>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let (filter, from_end) = convert::event_watch_filter(req.get_ref())?;
            self.events.watch(&caller, filter, from_end).await
        }
        .await;
        respond(result.map(|rx| {
            let stream = ReceiverStream::new(rx).map(|item| {
                item.map(convert::watch_item)
                    .map_err(crate::grpc::status::to_status)
            });
            Box::pin(stream) as WatchStream
        }))
    }

    async fn list_providers(
        &self,
        req: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let workspace = convert::optional_workspace(&r.workspace_id)?;
            self.connect
                .providers(&caller, workspace.as_ref(), r.configured_only)
                .await
        }
        .await;
        respond(result.map(|providers| pb::ListProvidersResponse {
            providers: providers.iter().map(convert::provider).collect(),
        }))
    }

    async fn start_connect(
        &self,
        req: Request<pb::StartConnectRequest>,
    ) -> Result<Response<pb::StartConnectResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = convert::start_connect(req.into_inner())?;
            self.connect.start_connect(&caller, r).await
        }
        .await;
        respond(result.map(|s| {
            let (authorization_url, state, requested_scopes, expire_time) = convert::started(s);
            pb::StartConnectResponse {
                authorization_url,
                state,
                requested_scopes,
                expire_time,
            }
        }))
    }

    async fn complete_connect(
        &self,
        req: Request<pb::CompleteConnectRequest>,
    ) -> Result<Response<pb::CompleteConnectResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = convert::complete_connect(req.into_inner())?;
            self.connect.complete(&caller, r).await
        }
        .await;
        respond(result.map(|(v, outcome)| pb::CompleteConnectResponse {
            credential: Some(convert::credential(&v)),
            outcome: convert::connect_outcome(outcome) as i32,
        }))
    }

    async fn start_reconnect(
        &self,
        req: Request<pb::StartReconnectRequest>,
    ) -> Result<Response<pb::StartReconnectResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = convert::start_reconnect(req.into_inner())?;
            self.connect.start_reconnect(&caller, r).await
        }
        .await;
        respond(result.map(|s| {
            let (authorization_url, state, requested_scopes, expire_time) = convert::started(s);
            pb::StartReconnectResponse {
                authorization_url,
                state,
                requested_scopes,
                expire_time,
            }
        }))
    }

    async fn get_credential(
        &self,
        req: Request<pb::GetCredentialRequest>,
    ) -> Result<Response<pb::GetCredentialResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = convert::credential_id("credential_id", &req.get_ref().credential_id)?;
            let view = self.credentials.get(&caller, &id).await?;
            let usage = self.credentials.usage(&view.credential).await?;
            let app = self.credentials.oauth_app_of(&view.credential).await?;
            Ok::<_, cb_broker::BrokerError>((view, usage, app))
        }
        .await;
        respond(result.map(|(v, (recent, total), app)| {
            let mut c = convert::credential(&v);
            if let Some((app_id, secret_version)) = app {
                c.oauth_app_id = app_id;
                c.oauth_app_secret_version = secret_version;
            }
            c.workflow_count = i64::try_from(total).unwrap_or(i64::MAX);
            c.recent_workflows = recent
                .into_iter()
                .map(|(workflow_id, at)| pb::WorkflowUsage {
                    workflow_id,
                    last_used_time: Some(convert::timestamp(at)),
                })
                .collect();
            pb::GetCredentialResponse {
                credential: Some(c),
            }
        }))
    }

    async fn list_credentials(
        &self,
        req: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let Listable(q) = req.into_inner().try_into()?;
            self.credentials.list(&caller, q).await
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
            self.credentials.update(&caller, u).await
        }
        .await;
        respond(
            result.map(|v: CredentialView| pb::UpdateCredentialResponse {
                credential: Some(convert::credential(&v)),
            }),
        )
    }

    async fn disconnect_credential(
        &self,
        req: Request<pb::DisconnectCredentialRequest>,
    ) -> Result<Response<pb::DisconnectCredentialResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = convert::credential_id("credential_id", &req.get_ref().credential_id)?;
            self.credentials.disconnect(&caller, &id).await
        }
        .await;
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
        req: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        let caller = caller(&req)?;
        let run_grant = self.run_grant(&req, &caller)?;
        let result = async {
            let r = req.get_ref();
            let id = convert::credential_id("credential_id", &r.credential_id)?;
            let min_valid = convert::min_valid_for(r.min_valid_for.as_ref())?;
            let ctx = convert::usage_context(r, run_grant)?;
            self.tokens
                .get_access_token(&caller, &id, min_valid, ctx)
                .await
        }
        .await;
        respond(result.map(convert::issued))
    }

    async fn import_credential(
        &self,
        req: Request<pb::ImportCredentialRequest>,
    ) -> Result<Response<pb::ImportCredentialResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let Importable(i) = req.into_inner().try_into()?;
            self.credentials.import(&caller, i).await
        }
        .await;
        respond(result.map(|v| pb::ImportCredentialResponse {
            credential: Some(convert::credential(&v)),
        }))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let filter = convert::audit_filter(req.get_ref())?;
            self.credentials.audit().list(&caller, filter).await
        }
        .await;
        respond(result.map(|(rows, next)| pb::ListAuditEventsResponse {
            events: rows.into_iter().map(convert::audit_event).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn create_run_grant(
        &self,
        req: Request<pb::CreateRunGrantRequest>,
    ) -> Result<Response<pb::CreateRunGrantResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = convert::new_run_grant(req.into_inner())?;
            self.tokens.run_grants().create(&caller, r).await
        }
        .await;
        respond(result.map(convert::created_run_grant))
    }

    async fn revoke_run_grant(
        &self,
        req: Request<pb::RevokeRunGrantRequest>,
    ) -> Result<Response<pb::RevokeRunGrantResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = &req.get_ref().run_grant_id;
            if id.is_empty() || id.len() > 64 {
                return Err(cb_broker::BrokerError::invalid(
                    "run_grant_id",
                    "must be the id CreateRunGrant returned",
                ));
            }
            self.tokens.run_grants().revoke(&caller, id).await
        }
        .await;
        respond(result.map(|()| pb::RevokeRunGrantResponse {}))
    }
}
