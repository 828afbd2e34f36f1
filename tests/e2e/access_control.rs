//! Caller authentication, the RPC allow-list and the per-credential roles, on every RPC.
//!
//! The authorization matrix is generated from one table: every RPC found in the API descriptor ×
//! {no identity, bad token, executor (run grants optional), executor that must present run grants
//! (without one, with the persona's own), web, operator} × {non-member, invited, member, admin,
//! workspace admin}. An RPC added to the proto without a row here fails the test.

use crate::support::broker::{REDIRECT_URI, TestBroker, error_details, with_fake_provider};
use crate::support::client::Answered;
use crate::support::client::{ALICE, Client, rename_request};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use cb_proto::v1 as pb;
use credential_broker::layers::auth::token_sha256_hex;
use credential_broker::runtime::config::{CallerConfig, RunGrantMode};
use prost::Message;
use std::collections::BTreeSet;
use tonic::Code;

pub const EXECUTOR_TOKEN: &str = "executor-token-1f3a";
pub const WEB_TOKEN: &str = "web-token-77b1";
pub const OPERATOR_TOKEN: &str = "operator-token-c0de";
/// The executor configured with `run_grants = "required"`.
pub const STRICT_EXECUTOR_TOKEN: &str = "strict-executor-token-9e2d";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    NoIdentity,
    BadToken,
    Executor,
    /// `run_grants = "required"`, presenting no grant.
    StrictExecutor,
    /// `run_grants = "required"`, presenting a grant the web backend obtained for the persona
    /// and the credential (or, where the persona could not get one, a made-up grant).
    StrictExecutorWithGrant,
    Web,
    Operator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Persona {
    NonMember,
    Invited,
    Member,
    Admin,
    WorkspaceAdmin,
}

impl Persona {
    fn actor(self) -> (&'static str, &'static str) {
        match self {
            Persona::NonMember => ("u-stranger", "stranger@example.com"),
            Persona::Invited => ("u-invited", "invited@example.com"),
            Persona::Member => ("u-member", "member@example.com"),
            Persona::Admin => ("u-admin", "admin@example.com"),
            Persona::WorkspaceAdmin => ("u-wsadmin", "wsadmin@example.com"),
        }
    }
    fn sees(self) -> bool {
        matches!(
            self,
            Persona::Member | Persona::Admin | Persona::WorkspaceAdmin
        )
    }
    fn administers(self) -> bool {
        matches!(self, Persona::Admin | Persona::WorkspaceAdmin)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Code(Code),
}

/// What the actor needs on the credential, per RPC — the one table.
#[derive(Clone, Copy, Debug)]
enum Needs {
    /// No credential involved (catalog, import, audit, connect start/finish).
    Nothing,
    /// Sees the credential (Member or above); ListCredentials filters instead of failing.
    Sees,
    /// Admin on the credential.
    Admin,
    /// An invitation or membership of their own.
    OwnMembership,
    /// Filters what it returns.
    Filtered,
    /// A token: the actor must see the credential; an executor that must present a run grant
    /// needs one covering it (the grant's actor then counts, not the metadata).
    Token,
    /// The run grant (created by the workspace admin) must be the actor's own or of a
    /// workspace they administer.
    OwnGrant,
    /// An admin of the workspace (no credential involved): others are refused.
    WorkspaceAdmin,
    /// An admin of the workspace of an existing OAuth app (or webhook endpoint): it does not
    /// exist for others.
    WorkspaceAdminApp,
}

const TABLE: &[(&str, &[Service], Needs)] = &[
    (
        "ListProviders",
        &[Service::Web, Service::Operator],
        Needs::Nothing,
    ),
    ("StartConnect", &[Service::Web], Needs::Nothing),
    ("CompleteConnect", &[Service::Web], Needs::Nothing),
    ("StartReconnect", &[Service::Web], Needs::Admin),
    ("GetCredential", READERS, Needs::Sees),
    ("ListCredentials", READERS, Needs::Filtered),
    ("UpdateCredential", &[Service::Web], Needs::Admin),
    ("DisconnectCredential", &[Service::Web], Needs::Admin),
    ("GetAccessToken", EXECUTORS, Needs::Token),
    ("ImportCredential", &[Service::Operator], Needs::Nothing),
    ("ListAuditEvents", &[Service::Operator], Needs::Nothing),
    (
        "ListCredentialEvents",
        &[Service::Web, Service::Operator],
        Needs::Filtered,
    ),
    (
        "WatchCredentialEvents",
        &[Service::Web, Service::Operator],
        Needs::Filtered,
    ),
    (
        "ListWebhookDeliveries",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "ListMembers",
        &[Service::Web, Service::Operator],
        Needs::Sees,
    ),
    ("AddMember", &[Service::Web], Needs::Admin),
    ("UpdateMemberRole", &[Service::Web], Needs::Admin),
    ("RemoveMember", &[Service::Web], Needs::Admin),
    ("AcceptInvitation", &[Service::Web], Needs::OwnMembership),
    ("CreateRunGrant", &[Service::Web], Needs::Sees),
    ("RevokeRunGrant", &[Service::Web], Needs::OwnGrant),
    (
        "CreateOAuthApp",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "ListOAuthApps",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "GetOAuthApp",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "UpdateOAuthApp",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "DeleteOAuthApp",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "RotateOAuthAppSecret",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "RetireOAuthAppSecret",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "TestOAuthApp",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "CreateWorkspaceProvider",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "GetWorkspaceProvider",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "ListWorkspaceProviders",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "UpdateWorkspaceProvider",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "DeleteWorkspaceProvider",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "CreateWebhookEndpoint",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "ListWebhookEndpoints",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdmin,
    ),
    (
        "GetWebhookEndpoint",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "UpdateWebhookEndpoint",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "DeleteWebhookEndpoint",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "RotateWebhookSecret",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
    (
        "RetireWebhookSecret",
        &[Service::Web, Service::Operator],
        Needs::WorkspaceAdminApp,
    ),
];

const READERS: &[Service] = &[
    Service::Executor,
    Service::StrictExecutor,
    Service::StrictExecutorWithGrant,
    Service::Web,
    Service::Operator,
];

const EXECUTORS: &[Service] = &[
    Service::Executor,
    Service::StrictExecutor,
    Service::StrictExecutorWithGrant,
];

fn expected(rpc: &str, service: Service, persona: Persona) -> Expect {
    let (_, allowed, needs) = TABLE.iter().find(|(name, ..)| *name == rpc).unwrap();
    match service {
        Service::NoIdentity | Service::BadToken => return Expect::Code(Code::Unauthenticated),
        s if !allowed.contains(&s) => return Expect::Code(Code::PermissionDenied),
        _ => {}
    }
    let visible_or_404 = |ok: bool| {
        if ok {
            Expect::Ok
        } else {
            Expect::Code(Code::NotFound)
        }
    };
    match needs {
        Needs::Nothing | Needs::Filtered => Expect::Ok,
        Needs::Sees => visible_or_404(persona.sees()),
        Needs::Token => match service {
            Service::StrictExecutor => Expect::Code(Code::PermissionDenied),
            Service::StrictExecutorWithGrant if !persona.sees() => {
                Expect::Code(Code::PermissionDenied)
            }
            _ => visible_or_404(persona.sees()),
        },
        Needs::OwnGrant => visible_or_404(persona == Persona::WorkspaceAdmin),
        Needs::Admin if persona == Persona::Member => Expect::Code(Code::PermissionDenied),
        Needs::Admin => visible_or_404(persona.administers()),
        Needs::OwnMembership => visible_or_404(matches!(
            persona,
            Persona::Invited | Persona::Member | Persona::Admin
        )),
        Needs::WorkspaceAdmin if persona == Persona::WorkspaceAdmin => Expect::Ok,
        Needs::WorkspaceAdmin => Expect::Code(Code::PermissionDenied),
        Needs::WorkspaceAdminApp => visible_or_404(persona == Persona::WorkspaceAdmin),
    }
}

fn rpcs_in_descriptor() -> BTreeSet<String> {
    let fds = prost_types::FileDescriptorSet::decode(cb_proto::FILE_DESCRIPTOR_SET).unwrap();
    fds.file
        .iter()
        .filter(|f| f.package() == "credentialbroker.v1")
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
        .collect()
}

/// A broker with three calling services and a fake provider configured as `fake`.
pub async fn broker_with_callers(fake: &FakeProvider) -> TestBroker {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    config.callers = [
        ("executor", "executor", EXECUTOR_TOKEN),
        ("strict-executor", "executor", STRICT_EXECUTOR_TOKEN),
        ("web", "web", WEB_TOKEN),
        ("operator", "operator", OPERATOR_TOKEN),
    ]
    .into_iter()
    .map(|(name, role, token)| CallerConfig {
        name: name.into(),
        role: role.into(),
        token_sha256: Some(token_sha256_hex(token)),
        unsigned_actor: true,
        // The plain executor keeps working without grants (the migration mode); the strict
        // one has the default.
        run_grants: (name == "executor").then_some(RunGrantMode::Optional),
        ..Default::default()
    })
    .collect();
    with_fake_provider(&mut config, fake, "fake", &[]);
    // A webhook endpoint of ws1 whose delivery log ListWebhookDeliveries reads (nothing
    // listens: deliveries are refused at once and retried).
    config.outbound.allow_loopback = true;
    config.webhooks = vec![credential_broker::runtime::config::WebhookSettings {
        id: "hook".into(),
        workspace_id: "ws1".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secrets: vec![credential_broker::runtime::config::SecretValue::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        )],
        event_types: Vec::new(),
    }];
    TestBroker::start(config, dir).await.unwrap()
}

fn request<T>(msg: T, service: Service, persona: Option<Persona>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let token = match service {
        Service::NoIdentity => None,
        Service::BadToken => Some("not-a-configured-token"),
        Service::Executor => Some(EXECUTOR_TOKEN),
        Service::StrictExecutor | Service::StrictExecutorWithGrant => Some(STRICT_EXECUTOR_TOKEN),
        Service::Web => Some(WEB_TOKEN),
        Service::Operator => Some(OPERATOR_TOKEN),
    };
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(p) = persona {
        let (id, email) = p.actor();
        r.metadata_mut().insert("x-actor-id", id.parse().unwrap());
        r.metadata_mut()
            .insert("x-actor-email", email.parse().unwrap());
        if p == Persona::WorkspaceAdmin {
            r.metadata_mut()
                .insert("x-actor-workspace-id", "ws1".parse().unwrap());
            r.metadata_mut()
                .insert("x-actor-workspace-role", "admin".parse().unwrap());
        }
    }
    r
}

/// A fresh credential in ws1: admin@ is Admin, member@ and other@ are active Members, invited@ is
/// invited. Returns its id.
async fn fresh_credential(c: &mut Client, fake: &FakeProvider, n: usize) -> String {
    let (access, refresh) = fake.issue_grant(&format!("acct-{n}"));
    let imported = c
        .creds
        .import_credential(request(
            pb::ImportCredentialRequest {
                workspace_id: "ws1".into(),
                provider_id: "fake".into(),
                account: Some(pb::ProviderAccount {
                    subject: format!("acct-{n}"),
                    label: "acct".into(),
                }),
                display_name: format!("cred {n}"),
                tokens: Some(pb::TokenSet {
                    access_token: access,
                    refresh_token: refresh,
                    access_token_expire_time: Some(prost_types::Timestamp {
                        seconds: 4_000_000_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                admin_email: "admin@example.com".into(),
                ..Default::default()
            },
            Service::Operator,
            None,
        ))
        .await
        .credential()
        .credential_id;
    for (email, role) in [
        ("member@example.com", pb::MemberRole::Member),
        ("other@example.com", pb::MemberRole::Member),
        ("invited@example.com", pb::MemberRole::Member),
    ] {
        c.members
            .add_member(request(
                pb::AddMemberRequest {
                    credential_id: imported.clone(),
                    email: email.into(),
                    role: role as i32,
                },
                Service::Web,
                Some(Persona::Admin),
            ))
            .await
            .unwrap();
    }
    for who in [
        ("u-member", "member@example.com"),
        ("u-other", "other@example.com"),
    ] {
        let mut r = request(
            pb::AcceptInvitationRequest {
                credential_id: imported.clone(),
            },
            Service::Web,
            None,
        );
        r.metadata_mut()
            .insert("x-actor-id", who.0.parse().unwrap());
        r.metadata_mut()
            .insert("x-actor-email", who.1.parse().unwrap());
        c.members.accept_invitation(r).await.unwrap();
    }
    imported
}

/// A provider definition that needs no network (endpoints given).
fn provider_definition() -> pb::WorkspaceProviderDefinition {
    pb::WorkspaceProviderDefinition {
        authorize_url: "https://auth.acme.example/authorize".into(),
        token_url: "https://auth.acme.example/token".into(),
        userinfo_url: "https://auth.acme.example/userinfo".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    }
}

/// A fresh provider id.
fn provider_id() -> String {
    format!("p{}", uuid::Uuid::now_v7().simple())
}

/// A provider of ws1 made by the operator service; its id.
async fn fresh_provider(c: &mut Client) -> String {
    let provider_id = provider_id();
    c.apps
        .create_workspace_provider(request(
            pb::CreateWorkspaceProviderRequest {
                workspace_id: "ws1".into(),
                provider_id: provider_id.clone(),
                definition: Some(provider_definition()),
            },
            Service::Operator,
            None,
        ))
        .await
        .unwrap();
    provider_id
}

/// A webhook endpoint request of ws1 (the matrix broker allows loopback; nothing listens).
fn endpoint_request() -> pb::CreateWebhookEndpointRequest {
    pb::CreateWebhookEndpointRequest {
        workspace_id: "ws1".into(),
        url: "http://127.0.0.1:9/matrix".into(),
        ..Default::default()
    }
}

/// A webhook endpoint of ws1 made by the operator service (with a second secret when
/// `rotated`); its id.
async fn fresh_endpoint(c: &mut Client, rotated: bool) -> String {
    let endpoint_id = c
        .webhooks
        .create_webhook_endpoint(request(endpoint_request(), Service::Operator, None))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
        .endpoint_id;
    if rotated {
        c.webhooks
            .rotate_webhook_secret(request(
                pb::RotateWebhookSecretRequest {
                    endpoint_id: endpoint_id.clone(),
                },
                Service::Operator,
                None,
            ))
            .await
            .unwrap();
    }
    endpoint_id
}

/// An OAuth app of ws1 for `fake` holding two secrets, made by the operator service.
async fn fresh_app(c: &mut Client) -> String {
    let created = c
        .apps
        .create_o_auth_app(request(
            crate::support::client::app_request("ws1", "fake", "app-client", "app-secret-1"),
            Service::Operator,
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .oauth_app
        .unwrap();
    c.apps
        .rotate_o_auth_app_secret(request(
            pb::RotateOAuthAppSecretRequest {
                oauth_app_id: created.oauth_app_id.clone(),
                client_secret: "app-secret-2".into(),
            },
            Service::Operator,
            None,
        ))
        .await
        .unwrap();
    created.oauth_app_id
}

async fn call(
    c: &mut Client,
    rpc: &str,
    id: &str,
    service: Service,
    persona: Persona,
) -> Result<(), tonic::Status> {
    let p = Some(persona);
    let cid = id.to_owned();
    let grant = match service {
        Service::StrictExecutorWithGrant => Some(grant_for(c, id, persona).await),
        _ => None,
    };
    // One RPC as this cell's caller and persona; only whether it was allowed matters.
    macro_rules! rpc {
        ($service:ident . $method:ident, $msg:expr) => {{
            let mut r = request($msg, service, p);
            if let Some(g) = &grant {
                r.metadata_mut().insert("x-run-grant", g.parse().unwrap());
            }
            c.$service.$method(r).await.map(drop)
        }};
    }
    match rpc {
        "ListProviders" => rpc!(creds.list_providers, pb::ListProvidersRequest::default()),
        "StartConnect" => rpc!(
            creds.start_connect,
            pb::StartConnectRequest {
                workspace_id: "ws1".into(),
                provider_id: "fake".into(),
                redirect_uri: REDIRECT_URI.into(),
                ..Default::default()
            }
        ),
        "CompleteConnect" => {
            // Start as the same persona, then deny at the provider: a clean, authorized outcome.
            let started = c
                .creds
                .start_connect(request(
                    pb::StartConnectRequest {
                        workspace_id: "ws1".into(),
                        provider_id: "fake".into(),
                        redirect_uri: REDIRECT_URI.into(),
                        ..Default::default()
                    },
                    Service::Web,
                    p,
                ))
                .await;
            let state = started.map(|r| r.into_inner().state).unwrap_or_default();
            let r = c
                .creds
                .complete_connect(request(
                    pb::CompleteConnectRequest {
                        state,
                        error: "access_denied".into(),
                        ..Default::default()
                    },
                    service,
                    p,
                ))
                .await;
            // A provider denial is the expected, authorized answer.
            match r {
                Err(s)
                    if s.code() == Code::FailedPrecondition
                        && error_details(&s).0 == "PROVIDER_DENIED" =>
                {
                    Ok(())
                }
                other => other.map(drop),
            }
        }
        "StartReconnect" => rpc!(
            creds.start_reconnect,
            pb::StartReconnectRequest {
                credential_id: cid,
                redirect_uri: REDIRECT_URI.into(),
                ..Default::default()
            }
        ),
        "GetCredential" => rpc!(
            creds.get_credential,
            pb::GetCredentialRequest { credential_id: cid }
        ),
        "ListCredentials" => rpc!(
            creds.list_credentials,
            pb::ListCredentialsRequest {
                workspace_id: "ws1".into(),
                ..Default::default()
            }
        ),
        "UpdateCredential" => rpc!(creds.update_credential, rename_request(&cid, "renamed")),
        "DisconnectCredential" => rpc!(
            creds.disconnect_credential,
            pb::DisconnectCredentialRequest { credential_id: cid }
        ),
        "GetAccessToken" => rpc!(
            creds.get_access_token,
            pb::GetAccessTokenRequest {
                credential_id: cid,
                ..Default::default()
            }
        ),
        "ImportCredential" => rpc!(
            creds.import_credential,
            pb::ImportCredentialRequest {
                workspace_id: "ws1".into(),
                provider_id: "fake".into(),
                account: Some(pb::ProviderAccount {
                    subject: format!("imp-{}", cb_broker::types::CredentialId::generate()),
                    label: "x".into(),
                }),
                display_name: "imported".into(),
                tokens: Some(pb::TokenSet {
                    access_token: "at".into(),
                    ..Default::default()
                }),
                admin_email: "admin@example.com".into(),
                ..Default::default()
            }
        ),
        "ListAuditEvents" => rpc!(
            creds.list_audit_events,
            pb::ListAuditEventsRequest::default()
        ),
        "ListCredentialEvents" => rpc!(
            creds.list_credential_events,
            pb::ListCredentialEventsRequest {
                workspace_id: "ws1".into(),
                ..Default::default()
            }
        ),
        "WatchCredentialEvents" => rpc!(
            creds.watch_credential_events,
            pb::WatchCredentialEventsRequest {
                workspace_id: "ws1".into(),
                start_at_end: true,
                ..Default::default()
            }
        ),
        "ListWebhookDeliveries" => rpc!(
            creds.list_webhook_deliveries,
            pb::ListWebhookDeliveriesRequest {
                endpoint_id: "hook".into(),
                ..Default::default()
            }
        ),
        "ListMembers" => rpc!(
            members.list_members,
            pb::ListMembersRequest { credential_id: cid }
        ),
        "AddMember" => rpc!(
            members.add_member,
            pb::AddMemberRequest {
                credential_id: cid,
                email: "new@example.com".into(),
                role: pb::MemberRole::Member as i32,
            }
        ),
        "UpdateMemberRole" => rpc!(
            members.update_member_role,
            pb::UpdateMemberRoleRequest {
                credential_id: cid,
                email: "other@example.com".into(),
                role: pb::MemberRole::Admin as i32,
            }
        ),
        "RemoveMember" => rpc!(
            members.remove_member,
            pb::RemoveMemberRequest {
                credential_id: cid,
                email: "other@example.com".into(),
            }
        ),
        "AcceptInvitation" => rpc!(
            members.accept_invitation,
            pb::AcceptInvitationRequest { credential_id: cid }
        ),
        "CreateRunGrant" => rpc!(creds.create_run_grant, run_grant_request(cid)),
        "RevokeRunGrant" => {
            // The workspace admin's grant for this run.
            let run_grant_id = c
                .creds
                .create_run_grant(request(
                    run_grant_request(cid),
                    Service::Web,
                    Some(Persona::WorkspaceAdmin),
                ))
                .await
                .unwrap()
                .into_inner()
                .run_grant_id;
            rpc!(
                creds.revoke_run_grant,
                pb::RevokeRunGrantRequest { run_grant_id }
            )
        }
        "CreateWorkspaceProvider" => rpc!(
            apps.create_workspace_provider,
            pb::CreateWorkspaceProviderRequest {
                workspace_id: "ws1".into(),
                provider_id: provider_id(),
                definition: Some(provider_definition()),
            }
        ),
        "ListWorkspaceProviders" => rpc!(
            apps.list_workspace_providers,
            pb::ListWorkspaceProvidersRequest {
                workspace_id: "ws1".into(),
            }
        ),
        "GetWorkspaceProvider" => {
            let provider_id = fresh_provider(c).await;
            rpc!(
                apps.get_workspace_provider,
                pb::GetWorkspaceProviderRequest {
                    workspace_id: "ws1".into(),
                    provider_id,
                }
            )
        }
        "UpdateWorkspaceProvider" => {
            let provider_id = fresh_provider(c).await;
            rpc!(
                apps.update_workspace_provider,
                pb::UpdateWorkspaceProviderRequest {
                    workspace_id: "ws1".into(),
                    provider_id,
                    definition: Some(provider_definition()),
                    expected_version: 0,
                }
            )
        }
        "DeleteWorkspaceProvider" => {
            let provider_id = fresh_provider(c).await;
            rpc!(
                apps.delete_workspace_provider,
                pb::DeleteWorkspaceProviderRequest {
                    workspace_id: "ws1".into(),
                    provider_id,
                }
            )
        }
        "CreateOAuthApp" => rpc!(
            apps.create_o_auth_app,
            crate::support::client::app_request("ws1", "fake", "app-client", "app-secret")
        ),
        "ListOAuthApps" => rpc!(
            apps.list_o_auth_apps,
            pb::ListOAuthAppsRequest {
                workspace_id: "ws1".into(),
                provider_id: String::new(),
            }
        ),
        "CreateWebhookEndpoint" => rpc!(webhooks.create_webhook_endpoint, endpoint_request()),
        "ListWebhookEndpoints" => rpc!(
            webhooks.list_webhook_endpoints,
            pb::ListWebhookEndpointsRequest {
                workspace_id: "ws1".into(),
            }
        ),
        "GetWebhookEndpoint"
        | "UpdateWebhookEndpoint"
        | "DeleteWebhookEndpoint"
        | "RotateWebhookSecret"
        | "RetireWebhookSecret" => {
            // An endpoint of ws1 the operator made for this cell, deleted after it (a workspace
            // holds a bounded number of endpoints).
            let endpoint_id = fresh_endpoint(c, rpc == "RetireWebhookSecret").await;
            let id = endpoint_id.clone();
            let result = match rpc {
                "GetWebhookEndpoint" => rpc!(
                    webhooks.get_webhook_endpoint,
                    pb::GetWebhookEndpointRequest { endpoint_id: id }
                ),
                "UpdateWebhookEndpoint" => rpc!(
                    webhooks.update_webhook_endpoint,
                    pb::UpdateWebhookEndpointRequest {
                        endpoint_id: id,
                        description: "edited".into(),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["description".into()],
                        }),
                        ..Default::default()
                    }
                ),
                "DeleteWebhookEndpoint" => rpc!(
                    webhooks.delete_webhook_endpoint,
                    pb::DeleteWebhookEndpointRequest { endpoint_id: id }
                ),
                "RotateWebhookSecret" => rpc!(
                    webhooks.rotate_webhook_secret,
                    pb::RotateWebhookSecretRequest { endpoint_id: id }
                ),
                _ => rpc!(
                    webhooks.retire_webhook_secret,
                    pb::RetireWebhookSecretRequest { endpoint_id: id }
                ),
            };
            c.webhooks
                .delete_webhook_endpoint(request(
                    pb::DeleteWebhookEndpointRequest { endpoint_id },
                    Service::Operator,
                    None,
                ))
                .await
                .ok();
            result
        }
        app_rpc => {
            // The other app RPCs act on an app of ws1 that the operator made for this cell
            // (with a second secret, so there is one to retire).
            let oauth_app_id = fresh_app(c).await;
            match app_rpc {
                "GetOAuthApp" => rpc!(apps.get_o_auth_app, pb::GetOAuthAppRequest { oauth_app_id }),
                "UpdateOAuthApp" => rpc!(
                    apps.update_o_auth_app,
                    pb::UpdateOAuthAppRequest {
                        oauth_app_id,
                        display_name: "Renamed".into(),
                        ..Default::default()
                    }
                ),
                "DeleteOAuthApp" => rpc!(
                    apps.delete_o_auth_app,
                    pb::DeleteOAuthAppRequest {
                        oauth_app_id,
                        force: false,
                    }
                ),
                "RotateOAuthAppSecret" => {
                    rpc!(
                        apps.retire_o_auth_app_secret,
                        pb::RetireOAuthAppSecretRequest {
                            oauth_app_id: oauth_app_id.clone(),
                        }
                    )
                    .ok();
                    rpc!(
                        apps.rotate_o_auth_app_secret,
                        pb::RotateOAuthAppSecretRequest {
                            oauth_app_id,
                            client_secret: "app-secret-3".into(),
                        }
                    )
                }
                "RetireOAuthAppSecret" => rpc!(
                    apps.retire_o_auth_app_secret,
                    pb::RetireOAuthAppSecretRequest { oauth_app_id }
                ),
                "TestOAuthApp" => rpc!(
                    apps.test_o_auth_app,
                    pb::TestOAuthAppRequest {
                        oauth_app_id,
                        redirect_uri: REDIRECT_URI.into(),
                    }
                ),
                other => {
                    panic!("the matrix has no call for RPC {other}: add it to TABLE and call()")
                }
            }
        }
    }
}

fn run_grant_request(credential_id: String) -> pb::CreateRunGrantRequest {
    pb::CreateRunGrantRequest {
        credential_ids: vec![credential_id],
        workflow_id: "wf-matrix".into(),
        execution_id: "ex-matrix".into(),
        ..Default::default()
    }
}

/// The grant the web backend gets for `persona` and credential `id`; a persona that may not use
/// the credential gets none, and its executor can only present a made-up one.
async fn grant_for(c: &mut Client, id: &str, persona: Persona) -> String {
    match c
        .creds
        .create_run_grant(request(
            run_grant_request(id.to_owned()),
            Service::Web,
            Some(persona),
        ))
        .await
    {
        Ok(r) => r.into_inner().run_grant,
        Err(_) => "cbrg_made-up-by-the-executor".to_owned(),
    }
}

#[tokio::test]
async fn authorization_matrix_covers_every_rpc() {
    let in_api = rpcs_in_descriptor();
    let in_table: BTreeSet<String> = TABLE.iter().map(|(n, ..)| (*n).to_owned()).collect();
    assert_eq!(
        in_api, in_table,
        "every RPC of the API needs a row in the authorization table"
    );

    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker_with_callers(&fake).await;
    // Every call carries its own caller and actor metadata (`request`), not the client's actor.
    let mut c = b.client(ALICE).await;
    let services = [
        Service::NoIdentity,
        Service::BadToken,
        Service::Executor,
        Service::StrictExecutor,
        Service::StrictExecutorWithGrant,
        Service::Web,
        Service::Operator,
    ];
    let personas = [
        Persona::NonMember,
        Persona::Invited,
        Persona::Member,
        Persona::Admin,
        Persona::WorkspaceAdmin,
    ];
    let mut n = 0;
    let mut failures = Vec::new();
    for (rpc, ..) in TABLE {
        for service in services {
            for persona in personas {
                n += 1;
                let id = fresh_credential(&mut c, &fake, n).await;
                let got = match call(&mut c, rpc, &id, service, persona).await {
                    Ok(()) => Expect::Ok,
                    Err(s) => Expect::Code(s.code()),
                };
                let want = expected(rpc, service, persona);
                if got != want {
                    failures.push(format!(
                        "{rpc} as {service:?}/{persona:?}: expected {want:?}, got {got:?}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
