//! `credentialbroker.v1.OAuthAppService`: workspace OAuth apps. Client secrets are parsed into
//! `SecretString` here and never echoed back.

use super::{caller, respond};
use crate::grpc::convert::{self, parsed};
use cb_broker::BrokerError;
use cb_broker::oauth_apps::{
    Check, CreateOAuthApp, OAuthApp, OAuthAppService, UpdateOAuthApp, Verdict, parse_app_id,
    parse_client_id, parse_client_secret,
};
use cb_broker::types::{DisplayName, ProviderId, Scopes, Violations, WorkspaceId};
use cb_broker::workspace_providers::{ProviderInput, WorkspaceProvider};
use cb_proto::v1 as pb;
use cb_proto::v1::o_auth_app_service_server::OAuthAppService as Rpc;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The gRPC face of OAuth app management.
pub struct OAuthAppApi {
    service: Arc<OAuthAppService>,
}

impl OAuthAppApi {
    /// Wraps the domain service.
    pub fn new(service: Arc<OAuthAppService>) -> Self {
        Self { service }
    }
}

fn app(a: OAuthApp) -> pb::OAuthApp {
    pb::OAuthApp {
        oauth_app_id: a.id,
        workspace_id: a.workspace_id,
        provider_id: a.provider_id,
        display_name: a.display_name,
        client_id: a.client_id,
        allowed_scopes: a.allowed_scopes.as_slice().to_vec(),
        secret_versions: a.secret_versions,
        created_by: a.created_by,
        create_time: Some(convert::timestamp(a.created_at)),
        update_time: Some(convert::timestamp(a.updated_at)),
        version: a.version,
    }
}

fn app_id(raw: &str) -> Result<String, BrokerError> {
    parse_app_id("oauth_app_id", raw).map_err(|v| BrokerError::InvalidArgument(vec![v]))
}

fn create(r: &pb::CreateOAuthAppRequest) -> Result<CreateOAuthApp, BrokerError> {
    let mut v = Violations::default();
    let workspace_id = v.check(WorkspaceId::parse("workspace_id", &r.workspace_id));
    let provider_id = v.check(ProviderId::parse("provider_id", &r.provider_id));
    let display_name = v.check(DisplayName::parse("display_name", &r.display_name));
    let client_id = v.check(parse_client_id("client_id", &r.client_id));
    let client_secret = v.check(parse_client_secret("client_secret", &r.client_secret));
    let allowed_scopes = v.check(Scopes::parse("allowed_scopes", &r.allowed_scopes));
    v.finish()?;
    Ok(CreateOAuthApp {
        workspace_id: parsed(workspace_id)?,
        provider_id: parsed(provider_id)?,
        display_name: parsed(display_name)?,
        client_id: parsed(client_id)?,
        client_secret: parsed(client_secret)?,
        allowed_scopes: parsed(allowed_scopes)?,
    })
}

fn update(r: &pb::UpdateOAuthAppRequest) -> Result<UpdateOAuthApp, BrokerError> {
    let mut v = Violations::default();
    let id = v.check(parse_app_id("oauth_app_id", &r.oauth_app_id));
    let display_name = (!r.display_name.is_empty())
        .then(|| v.check(DisplayName::parse("display_name", &r.display_name)))
        .flatten();
    let client_id = (!r.client_id.is_empty())
        .then(|| v.check(parse_client_id("client_id", &r.client_id)))
        .flatten();
    let allowed_scopes = r
        .update_allowed_scopes
        .then(|| v.check(Scopes::parse("allowed_scopes", &r.allowed_scopes)))
        .flatten();
    v.finish()?;
    Ok(UpdateOAuthApp {
        id: parsed(id)?,
        display_name,
        client_id,
        allowed_scopes,
        expected_version: (r.expected_version != 0).then_some(r.expected_version),
    })
}

fn check(c: Check) -> pb::OAuthAppCheck {
    pb::OAuthAppCheck {
        name: c.name.to_owned(),
        verdict: match c.verdict {
            Verdict::Pass => pb::CheckVerdict::Pass,
            Verdict::Fail => pb::CheckVerdict::Fail,
            Verdict::Skipped => pb::CheckVerdict::Skipped,
        } as i32,
        detail: c.detail,
        hint: c.hint,
    }
}

#[tonic::async_trait]
impl Rpc for OAuthAppApi {
    async fn test_o_auth_app(
        &self,
        req: Request<pb::TestOAuthAppRequest>,
    ) -> Result<Response<pb::TestOAuthAppResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let id = app_id(&r.oauth_app_id)?;
            self.service.test(&caller, &id, &r.redirect_uri).await
        }
        .await;
        respond(result.map(|checks| pb::TestOAuthAppResponse {
            ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
            checks: checks.into_iter().map(check).collect(),
        }))
    }

    async fn create_o_auth_app(
        &self,
        req: Request<pb::CreateOAuthAppRequest>,
    ) -> Result<Response<pb::CreateOAuthAppResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = create(req.get_ref())?;
            self.service.create(&caller, r).await
        }
        .await;
        respond(result.map(|a| pb::CreateOAuthAppResponse {
            oauth_app: Some(app(a)),
        }))
    }

    async fn get_o_auth_app(
        &self,
        req: Request<pb::GetOAuthAppRequest>,
    ) -> Result<Response<pb::GetOAuthAppResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = app_id(&req.get_ref().oauth_app_id)?;
            self.service.get(&caller, &id).await
        }
        .await;
        respond(result.map(|a| pb::GetOAuthAppResponse {
            oauth_app: Some(app(a)),
        }))
    }

    async fn list_o_auth_apps(
        &self,
        req: Request<pb::ListOAuthAppsRequest>,
    ) -> Result<Response<pb::ListOAuthAppsResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let mut v = Violations::default();
            let workspace = v.check(WorkspaceId::parse("workspace_id", &r.workspace_id));
            let provider = (!r.provider_id.is_empty())
                .then(|| v.check(ProviderId::parse("provider_id", &r.provider_id)))
                .flatten();
            v.finish()?;
            self.service
                .list(&caller, &parsed(workspace)?, provider.as_ref())
                .await
        }
        .await;
        respond(result.map(|apps| pb::ListOAuthAppsResponse {
            oauth_apps: apps.into_iter().map(app).collect(),
        }))
    }

    async fn update_o_auth_app(
        &self,
        req: Request<pb::UpdateOAuthAppRequest>,
    ) -> Result<Response<pb::UpdateOAuthAppResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = update(req.get_ref())?;
            self.service.update(&caller, r).await
        }
        .await;
        respond(result.map(|a| pb::UpdateOAuthAppResponse {
            oauth_app: Some(app(a)),
        }))
    }

    async fn delete_o_auth_app(
        &self,
        req: Request<pb::DeleteOAuthAppRequest>,
    ) -> Result<Response<pb::DeleteOAuthAppResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = app_id(&req.get_ref().oauth_app_id)?;
            self.service.delete(&caller, &id, req.get_ref().force).await
        }
        .await;
        respond(result.map(|d| pb::DeleteOAuthAppResponse {
            needs_reconnect_credential_ids: d.marked_needs_reconnect,
        }))
    }

    async fn rotate_o_auth_app_secret(
        &self,
        req: Request<pb::RotateOAuthAppSecretRequest>,
    ) -> Result<Response<pb::RotateOAuthAppSecretResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let mut v = Violations::default();
            let id = v.check(parse_app_id("oauth_app_id", &r.oauth_app_id));
            let secret = v.check(parse_client_secret("client_secret", &r.client_secret));
            v.finish()?;
            self.service
                .rotate_secret(&caller, &parsed(id)?, parsed(secret)?)
                .await
        }
        .await;
        respond(result.map(|a| pb::RotateOAuthAppSecretResponse {
            oauth_app: Some(app(a)),
        }))
    }

    async fn retire_o_auth_app_secret(
        &self,
        req: Request<pb::RetireOAuthAppSecretRequest>,
    ) -> Result<Response<pb::RetireOAuthAppSecretResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let id = app_id(&req.get_ref().oauth_app_id)?;
            self.service.retire_secret(&caller, &id).await
        }
        .await;
        respond(result.map(|a| pb::RetireOAuthAppSecretResponse {
            oauth_app: Some(app(a)),
        }))
    }

    async fn create_workspace_provider(
        &self,
        req: Request<pb::CreateWorkspaceProviderRequest>,
    ) -> Result<Response<pb::CreateWorkspaceProviderResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let input = provider_input(&r.workspace_id, &r.provider_id, r.definition.as_ref(), 0)?;
            self.service.create_provider(&caller, input).await
        }
        .await;
        respond(result.map(|p| pb::CreateWorkspaceProviderResponse {
            provider: Some(provider(p)),
        }))
    }

    async fn get_workspace_provider(
        &self,
        req: Request<pb::GetWorkspaceProviderRequest>,
    ) -> Result<Response<pb::GetWorkspaceProviderResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let (workspace, id) = provider_key(&r.workspace_id, &r.provider_id)?;
            self.service.get_provider(&caller, &workspace, &id).await
        }
        .await;
        respond(result.map(|p| pb::GetWorkspaceProviderResponse {
            provider: Some(provider(p)),
        }))
    }

    async fn list_workspace_providers(
        &self,
        req: Request<pb::ListWorkspaceProvidersRequest>,
    ) -> Result<Response<pb::ListWorkspaceProvidersResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let workspace = WorkspaceId::parse("workspace_id", &req.get_ref().workspace_id)
                .map_err(|v| BrokerError::InvalidArgument(vec![v]))?;
            self.service.list_providers(&caller, &workspace).await
        }
        .await;
        respond(result.map(|ps| pb::ListWorkspaceProvidersResponse {
            providers: ps.into_iter().map(provider).collect(),
        }))
    }

    async fn update_workspace_provider(
        &self,
        req: Request<pb::UpdateWorkspaceProviderRequest>,
    ) -> Result<Response<pb::UpdateWorkspaceProviderResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let input = provider_input(
                &r.workspace_id,
                &r.provider_id,
                r.definition.as_ref(),
                r.expected_version,
            )?;
            self.service.update_provider(&caller, input).await
        }
        .await;
        respond(result.map(|p| pb::UpdateWorkspaceProviderResponse {
            provider: Some(provider(p)),
        }))
    }

    async fn delete_workspace_provider(
        &self,
        req: Request<pb::DeleteWorkspaceProviderRequest>,
    ) -> Result<Response<pb::DeleteWorkspaceProviderResponse>, Status> {
        let caller = caller(&req)?;
        let result = async {
            let r = req.get_ref();
            let (workspace, id) = provider_key(&r.workspace_id, &r.provider_id)?;
            self.service.delete_provider(&caller, &workspace, &id).await
        }
        .await;
        respond(result.map(|()| pb::DeleteWorkspaceProviderResponse {}))
    }
}

fn definition_out(
    d: cb_broker::workspace_providers::Definition,
) -> (pb::WorkspaceProviderDefinition, String) {
    (
        pb::WorkspaceProviderDefinition {
            display_name: d.display_name,
            issuer: d.issuer.unwrap_or_default(),
            discover: false,
            authorize_url: d.authorize_url,
            token_url: d.token_url,
            revocation_url: d.revocation_url.unwrap_or_default(),
            userinfo_url: d.userinfo_url,
            subject_pointer: d.subject_pointer,
            label_pointer: d.label_pointer,
            client_auth: d.client_auth,
            pkce: if d.pkce { "on" } else { "off" }.to_owned(),
            scope_separator: d.scope_separator,
            scopes: d.scopes,
            default_scopes: d.default_scopes,
        },
        d.discovered_from.unwrap_or_default(),
    )
}

fn provider(p: WorkspaceProvider) -> pb::WorkspaceProvider {
    let (definition, discovered_from) = definition_out(p.definition);
    pb::WorkspaceProvider {
        provider_id: p.id,
        workspace_id: p.workspace_id,
        definition: Some(definition),
        discovered_from,
        created_by: p.created_by,
        create_time: Some(convert::timestamp(p.created_at)),
        update_time: Some(convert::timestamp(p.updated_at)),
        version: p.version,
    }
}

/// The workspace and provider ids of a request.
fn provider_key(workspace: &str, id: &str) -> Result<(WorkspaceId, ProviderId), BrokerError> {
    let mut v = Violations::default();
    let workspace = v.check(WorkspaceId::parse("workspace_id", workspace));
    let id = v.check(ProviderId::parse("provider_id", id));
    v.finish()?;
    Ok((parsed(workspace)?, parsed(id)?))
}

fn provider_input(
    workspace: &str,
    id: &str,
    d: Option<&pb::WorkspaceProviderDefinition>,
    expected_version: i64,
) -> Result<ProviderInput, BrokerError> {
    let (workspace_id, id) = provider_key(workspace, id)?;
    let d = d.ok_or_else(|| BrokerError::invalid("definition", "is required"))?;
    let given = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let pkce = match d.pkce.as_str() {
        "" => None,
        "on" => Some(true),
        "off" => Some(false),
        _ => return Err(BrokerError::invalid("definition.pkce", "must be on or off")),
    };
    Ok(ProviderInput {
        workspace_id,
        id,
        display_name: d.display_name.clone(),
        issuer: given(&d.issuer),
        discover: d.discover,
        authorize_url: given(&d.authorize_url),
        token_url: given(&d.token_url),
        revocation_url: given(&d.revocation_url),
        userinfo_url: given(&d.userinfo_url),
        subject_pointer: given(&d.subject_pointer),
        label_pointer: given(&d.label_pointer),
        client_auth: given(&d.client_auth),
        pkce,
        scope_separator: given(&d.scope_separator),
        scopes: d.scopes.clone(),
        default_scopes: d.default_scopes.clone(),
        expected_version: (expected_version != 0).then_some(expected_version),
    })
}
