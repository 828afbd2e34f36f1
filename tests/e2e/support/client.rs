//! One typed client for the broker's API, acting as one user: the steps tests repeat (import a
//! grant, connect through the fake provider, get a token, list, get) as one call each.

use crate::support::broker::REDIRECT_URI;
use crate::support::fake_provider::FakeProvider;
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use cb_proto::v1::membership_service_client::MembershipServiceClient;
use cb_proto::v1::o_auth_app_service_client::OAuthAppServiceClient;
use cb_proto::v1::webhook_service_client::WebhookServiceClient;
use std::collections::HashMap;
use tonic::Status;
use tonic::transport::Channel;

/// The end user a call is made for (`x-actor-*` metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `x-actor-id`.
    pub id: &'static str,
    /// `x-actor-email`.
    pub email: &'static str,
}

impl Actor {
    /// The user `id` with `email`.
    pub const fn new(id: &'static str, email: &'static str) -> Self {
        Self { id, email }
    }
}

/// The user most tests act as.
pub const ALICE: Actor = Actor::new("u-alice", "alice@example.com");

/// A second user, for visibility and membership checks.
pub const BOB: Actor = Actor::new("u-bob", "bob@example.com");

/// A credential imported from a grant of the fake provider, with the tokens given to the broker.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The credential's id.
    pub id: String,
    /// The imported access token.
    pub access: String,
    /// The imported refresh token.
    pub refresh: String,
}

/// Both services over one channel, every call made as `actor`. The raw tonic clients stay
/// public for calls with no helper here.
#[derive(Clone)]
pub struct Client {
    /// CredentialService.
    pub creds: CredentialServiceClient<Channel>,
    /// MembershipService.
    pub members: MembershipServiceClient<Channel>,
    /// OAuthAppService.
    pub apps: OAuthAppServiceClient<Channel>,
    /// WebhookService.
    pub webhooks: WebhookServiceClient<Channel>,
    /// Who the calls are made for.
    pub actor: Actor,
    /// The workspace the calls say the actor is an admin of (`x-actor-workspace-*`), if any.
    pub admin_of: Option<&'static str>,
}

impl Client {
    /// A client over `channel` acting as `actor`.
    pub fn new(channel: Channel, actor: Actor) -> Self {
        Self {
            creds: CredentialServiceClient::new(channel.clone()),
            members: MembershipServiceClient::new(channel.clone()),
            apps: OAuthAppServiceClient::new(channel.clone()),
            webhooks: WebhookServiceClient::new(channel),
            actor,
            admin_of: None,
        }
    }

    /// The same connection acting as `actor`.
    pub fn acting_as(&self, actor: Actor) -> Self {
        Self {
            actor,
            ..self.clone()
        }
    }

    /// The same connection and actor, as an admin of `workspace`.
    pub fn admin_of(&self, workspace: &'static str) -> Self {
        Self {
            admin_of: Some(workspace),
            ..self.clone()
        }
    }

    /// `msg` with this client's actor metadata.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let Actor { id, email } = self.actor;
        match self.admin_of {
            None => crate::support::broker::as_actor(msg, id, email),
            Some(ws) => crate::support::broker::as_workspace_admin(msg, id, email, ws),
        }
    }

    /// ListProviders: the catalog as the broker serves it.
    pub async fn providers(&mut self) -> Result<Vec<pb::Provider>, Status> {
        let request = self.request(pb::ListProvidersRequest::default());
        let response = self.creds.list_providers(request).await?.into_inner();
        Ok(response.providers)
    }

    /// ImportCredential.
    pub async fn import(
        &mut self,
        req: pb::ImportCredentialRequest,
    ) -> Result<pb::Credential, Status> {
        let request = self.request(req);
        let response = self.creds.import_credential(request).await?.into_inner();
        Ok(response
            .credential
            .expect("ImportCredential answers the credential"))
    }

    /// Imports a grant `fake` issues to `subject` (provider `fake`, workspace `ws1`) whose access
    /// token expires at `expires_at_secs` (Unix seconds).
    pub async fn import_fake(
        &mut self,
        fake: &FakeProvider,
        subject: &str,
        expires_at_secs: i64,
    ) -> Result<Imported, Status> {
        let (req, access, refresh) =
            crate::support::broker::fake_grant_import(fake, subject, expires_at_secs);
        let credential = self.import(req).await?;
        Ok(Imported {
            id: credential.credential_id,
            access,
            refresh,
        })
    }

    /// GetAccessToken for `id` (workflow `wf-1`).
    pub async fn token(&mut self, id: &str) -> Result<pb::GetAccessTokenResponse, Status> {
        self.token_with(pb::GetAccessTokenRequest {
            credential_id: id.into(),
            workflow_id: "wf-1".into(),
            ..Default::default()
        })
        .await
    }

    /// GetAccessToken with a request of the test's own.
    pub async fn token_with(
        &mut self,
        req: pb::GetAccessTokenRequest,
    ) -> Result<pb::GetAccessTokenResponse, Status> {
        let request = self.request(req);
        self.creds
            .get_access_token(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// StartConnect for provider `provider_id` in workspace `ws1`, with the test redirect URI.
    pub async fn start_connect(
        &mut self,
        provider_id: &str,
    ) -> Result<pb::StartConnectResponse, Status> {
        self.start_connect_scopes(provider_id, &[]).await
    }

    /// [`Self::start_connect`] asking for `scopes`.
    pub async fn start_connect_scopes(
        &mut self,
        provider_id: &str,
        scopes: &[&str],
    ) -> Result<pb::StartConnectResponse, Status> {
        let request = self.request(pb::StartConnectRequest {
            workspace_id: "ws1".into(),
            provider_id: provider_id.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            redirect_uri: REDIRECT_URI.into(),
            ..Default::default()
        });
        self.creds
            .start_connect(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// StartReconnect of credential `id`, with the test redirect URI and no extra scopes.
    pub async fn start_reconnect(
        &mut self,
        id: &str,
    ) -> Result<pb::StartReconnectResponse, Status> {
        let request = self.request(pb::StartReconnectRequest {
            credential_id: id.into(),
            redirect_uri: REDIRECT_URI.into(),
            scopes: vec![],
        });
        self.creds
            .start_reconnect(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// CompleteConnect with what the provider's redirect to `callback` carries; the whole answer.
    pub async fn complete_connect_response(
        &mut self,
        callback: &url::Url,
    ) -> Result<pb::CompleteConnectResponse, Status> {
        let q: HashMap<String, String> = callback.query_pairs().into_owned().collect();
        self.complete_connect_with(callback_request(&q)).await
    }

    /// CompleteConnect with a request of the test's own.
    pub async fn complete_connect_with(
        &mut self,
        req: pb::CompleteConnectRequest,
    ) -> Result<pb::CompleteConnectResponse, Status> {
        let request = self.request(req);
        self.creds
            .complete_connect(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// CompleteConnect with what the provider's redirect to `callback` carries.
    pub async fn complete_connect(
        &mut self,
        callback: &url::Url,
    ) -> Result<pb::Credential, Status> {
        let done = self.complete_connect_response(callback).await?;
        Ok(done
            .credential
            .expect("CompleteConnect answers the credential"))
    }

    /// The whole connect flow with provider `fake` (configured as `fake`): StartConnect, the
    /// provider's consent, CompleteConnect.
    pub async fn connect(&mut self, fake: &FakeProvider) -> Result<pb::Credential, Status> {
        let started = self.start_connect("fake").await?;
        let callback = fake
            .approve(&url::Url::parse(&started.authorization_url).unwrap())
            .await;
        self.complete_connect(&callback).await
    }

    /// CreateOAuthApp for provider `provider_id` in `workspace_id` (allowing every scope).
    pub async fn create_app(
        &mut self,
        workspace_id: &str,
        provider_id: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<pb::OAuthApp, Status> {
        let request = self.request(app_request(
            workspace_id,
            provider_id,
            client_id,
            client_secret,
        ));
        let response = self.apps.create_o_auth_app(request).await?.into_inner();
        Ok(response.oauth_app.expect("CreateOAuthApp answers the app"))
    }

    /// TestOAuthApp with the test redirect URI: each check, and whether the answer says ok.
    pub async fn diagnose(&mut self, app: &str) -> (Vec<AppCheck>, bool) {
        let request = self.request(pb::TestOAuthAppRequest {
            oauth_app_id: app.into(),
            redirect_uri: crate::support::broker::REDIRECT_URI.into(),
        });
        let answer = self
            .apps
            .test_o_auth_app(request)
            .await
            .expect("TestOAuthApp answers")
            .into_inner();
        let checks = answer
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.verdict(),
                    c.detail.clone(),
                    c.hint.clone(),
                )
            })
            .collect();
        (checks, answer.ok)
    }

    /// The first 1000 audit events about `credential_id` (empty: all), newest first
    /// (ListAuditEvents: operators and development mode only).
    pub async fn audit_events(
        &mut self,
        credential_id: &str,
    ) -> Result<Vec<pb::AuditEvent>, Status> {
        let request = self.request(pb::ListAuditEventsRequest {
            credential_id: credential_id.to_owned(),
            page_size: 1000,
            ..Default::default()
        });
        let response = self.creds.list_audit_events(request).await?.into_inner();
        Ok(response.events)
    }

    /// GetCredential.
    pub async fn get(&mut self, id: &str) -> Result<pb::Credential, Status> {
        let request = self.request(pb::GetCredentialRequest {
            credential_id: id.into(),
        });
        let response = self.creds.get_credential(request).await?.into_inner();
        Ok(response
            .credential
            .expect("GetCredential answers the credential"))
    }

    /// One page of ListCredentials.
    pub async fn list_page(
        &mut self,
        req: pb::ListCredentialsRequest,
    ) -> Result<pb::ListCredentialsResponse, Status> {
        let request = self.request(req);
        self.creds
            .list_credentials(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The first page of ListCredentials in workspace `ws1`.
    pub async fn list(&mut self) -> Result<Vec<pb::Credential>, Status> {
        let page = self
            .list_page(pb::ListCredentialsRequest {
                workspace_id: "ws1".into(),
                ..Default::default()
            })
            .await?;
        Ok(page.credentials)
    }

    /// UpdateCredential.
    pub async fn update(
        &mut self,
        req: pb::UpdateCredentialRequest,
    ) -> Result<pb::Credential, Status> {
        let request = self.request(req);
        let response = self.creds.update_credential(request).await?.into_inner();
        Ok(response
            .credential
            .expect("UpdateCredential answers the credential"))
    }

    /// One page of ListCredentialEvents.
    pub async fn events_page(
        &mut self,
        req: pb::ListCredentialEventsRequest,
    ) -> Result<pb::ListCredentialEventsResponse, Status> {
        let request = self.request(req);
        self.creds
            .list_credential_events(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every event of workspace `ws1` (all pages), oldest first.
    pub async fn events(&mut self) -> Result<Vec<pb::CredentialEvent>, Status> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .events_page(pb::ListCredentialEventsRequest {
                    workspace_id: "ws1".into(),
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await?;
            all.extend(page.events);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            assert_ne!(page.next_page_token, page_token, "the same page again");
            page_token = page.next_page_token;
        }
        panic!("more than {MAX_PAGES} pages of events");
    }

    /// WatchCredentialEvents: the open stream.
    pub async fn watch(
        &mut self,
        req: pb::WatchCredentialEventsRequest,
    ) -> Result<tonic::Streaming<pb::WatchCredentialEventsResponse>, Status> {
        let request = self.request(req);
        self.creds
            .watch_credential_events(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// DisconnectCredential.
    pub async fn disconnect(
        &mut self,
        id: &str,
    ) -> Result<pb::DisconnectCredentialResponse, Status> {
        let request = self.request(pb::DisconnectCredentialRequest {
            credential_id: id.into(),
        });
        self.creds
            .disconnect_credential(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// AddMember: invites `email` to credential `id` with `role`.
    pub async fn add_member(
        &mut self,
        id: &str,
        email: &str,
        role: pb::MemberRole,
    ) -> Result<pb::Member, Status> {
        let request = self.request(pb::AddMemberRequest {
            credential_id: id.into(),
            email: email.into(),
            role: role as i32,
        });
        let response = self.members.add_member(request).await?.into_inner();
        Ok(response.member.expect("AddMember answers the member"))
    }

    /// AcceptInvitation to credential `id`.
    pub async fn accept_invitation(&mut self, id: &str) -> Result<pb::Member, Status> {
        let request = self.request(pb::AcceptInvitationRequest {
            credential_id: id.into(),
        });
        let response = self.members.accept_invitation(request).await?.into_inner();
        Ok(response
            .member
            .expect("AcceptInvitation answers the member"))
    }

    /// UpdateMemberRole: gives `email` the role `role` on credential `id`.
    pub async fn update_member_role(
        &mut self,
        id: &str,
        email: &str,
        role: pb::MemberRole,
    ) -> Result<pb::Member, Status> {
        let request = self.request(pb::UpdateMemberRoleRequest {
            credential_id: id.into(),
            email: email.into(),
            role: role as i32,
        });
        let response = self.members.update_member_role(request).await?.into_inner();
        Ok(response
            .member
            .expect("UpdateMemberRole answers the member"))
    }

    /// RemoveMember: removes `email` from credential `id`.
    pub async fn remove_member(&mut self, id: &str, email: &str) -> Result<(), Status> {
        let request = self.request(pb::RemoveMemberRequest {
            credential_id: id.into(),
            email: email.into(),
        });
        self.members.remove_member(request).await?;
        Ok(())
    }

    /// ListMembers of credential `id`.
    pub async fn list_members(&mut self, id: &str) -> Result<Vec<pb::Member>, Status> {
        let request = self.request(pb::ListMembersRequest {
            credential_id: id.into(),
        });
        let response = self.members.list_members(request).await?.into_inner();
        Ok(response.members)
    }
}

/// The CompleteConnect request for the parameters `q` of the provider's redirect (state, code,
/// or error and its description).
pub fn callback_request(q: &HashMap<String, String>) -> pb::CompleteConnectRequest {
    let param = |name: &str| q.get(name).cloned().unwrap_or_default();
    pb::CompleteConnectRequest {
        state: param("state"),
        code: param("code"),
        error: param("error"),
        error_description: param("error_description"),
        ..Default::default()
    }
}

/// An UpdateCredentialRequest that renames credential `id` (and changes nothing else).
pub fn rename_request(id: &str, display_name: &str) -> pb::UpdateCredentialRequest {
    pb::UpdateCredentialRequest {
        credential: Some(pb::Credential {
            credential_id: id.into(),
            display_name: display_name.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
    }
}

/// A CreateOAuthAppRequest for `provider_id` in `workspace_id`, named after its client id,
/// allowing every scope.
pub fn app_request(
    workspace_id: &str,
    provider_id: &str,
    client_id: &str,
    client_secret: &str,
) -> pb::CreateOAuthAppRequest {
    pb::CreateOAuthAppRequest {
        workspace_id: workspace_id.into(),
        provider_id: provider_id.into(),
        display_name: format!("App {client_id}"),
        client_id: client_id.into(),
        client_secret: client_secret.into(),
        allowed_scopes: vec![],
    }
}

/// A response message that carries the credential the call acted on.
pub trait CarriesCredential {
    /// The credential, if the broker put it in.
    fn into_credential(self) -> Option<pb::Credential>;
}

macro_rules! carries_credential {
    ($($response:ty),*) => {
        $(impl CarriesCredential for $response {
            fn into_credential(self) -> Option<pb::Credential> {
                self.credential
            }
        })*
    };
}

carries_credential!(
    pb::ImportCredentialResponse,
    pb::GetCredentialResponse,
    pb::CompleteConnectResponse,
    pb::UpdateCredentialResponse,
    pb::DisconnectCredentialResponse
);

/// The answer of a call made with a raw tonic client (custom metadata), when it must succeed.
pub trait Answered {
    /// The credential of a successful answer; panics on an error or a missing credential.
    fn credential(self) -> pb::Credential;
}

impl<T: CarriesCredential> Answered for Result<tonic::Response<T>, Status> {
    fn credential(self) -> pb::Credential {
        self.expect("the call succeeds")
            .into_inner()
            .into_credential()
            .expect("the answer carries the credential")
    }
}

/// Every audit event matching `filter` (read with the bearer `token`, every page), after the
/// events `b` buffers are written.
pub async fn audit_events(
    b: &crate::support::broker::TestBroker,
    c: &mut CredentialServiceClient<Channel>,
    token: &str,
    filter: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    b.flush_audit().await;
    let mut events = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let mut request = tonic::Request::new(pb::ListAuditEventsRequest {
            page_size: 1000,
            page_token: page_token.clone(),
            ..filter.clone()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let page = c.list_audit_events(request).await.unwrap().into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        assert_ne!(page.next_page_token, page_token, "the same page again");
        page_token = page.next_page_token;
    }
    panic!("more than {MAX_PAGES} pages of audit events");
}

/// Pages a listing helper reads before it gives up (a loop with a bound).
const MAX_PAGES: usize = 1000;

/// The `count=N` an aggregated audit row carries in its detail (1 when absent).
pub fn audit_count(e: &pb::AuditEvent) -> u64 {
    e.detail
        .split_whitespace()
        .find_map(|w| w.strip_prefix("count="))
        .map_or(1, |n| n.parse().unwrap())
}

/// One check of a TestOAuthApp answer: (name, verdict, detail, hint).
pub type AppCheck = (String, pb::CheckVerdict, String, String);

/// The verdict of check `name` (panics, listing the checks, when there is none).
pub fn verdict_of(checks: &[AppCheck], name: &str) -> pb::CheckVerdict {
    checks
        .iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
        .1
}
