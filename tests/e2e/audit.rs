//! The audit trail: every RPC of both services leaves an event naming its caller, actor and
//! credential, and issued tokens are all accounted for at any rate.

use crate::access_control::{
    EXECUTOR_TOKEN, OPERATOR_TOKEN, STRICT_EXECUTOR_TOKEN, WEB_TOKEN, broker_with_callers,
};
use crate::support::broker::{
    REDIRECT_URI, T0, TestBroker, fake_grant_import, from_service as call,
};
use crate::support::client::{
    Answered, audit_count, audit_events, callback_request, rename_request,
};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use tonic::transport::Channel;

const ALICE: (&str, &str) = ("u-alice", "alice@example.com");
const BOB: (&str, &str) = ("u-bob", "bob@example.com");

/// Every event of the log (operator read, every page), after the buffered events are written.
async fn all_events(
    b: &TestBroker,
    c: &mut CredentialServiceClient<Channel>,
    filter: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    audit_events(b, c, OPERATOR_TOKEN, filter).await
}

/// `request` from the web backend on Alice's behalf.
fn as_alice<T>(request: T) -> tonic::Request<T> {
    call(request, WEB_TOKEN, Some(ALICE))
}

/// `request` from the web backend on Bob's behalf.
fn as_bob<T>(request: T) -> tonic::Request<T> {
    call(request, WEB_TOKEN, Some(BOB))
}

/// `request` from the operator service, for no actor.
fn from_operator<T>(request: T) -> tonic::Request<T> {
    call(request, OPERATOR_TOKEN, None)
}

/// `msg` from the web backend for Alice as an admin of ws1.
fn ws1_admin<T>(msg: T) -> tonic::Request<T> {
    let mut r = as_alice(msg);
    r.metadata_mut()
        .insert("x-actor-workspace-id", "ws1".parse().unwrap());
    r.metadata_mut()
        .insert("x-actor-workspace-role", "admin".parse().unwrap());
    r
}

/// The `count=N` a buffered row carries (1 when absent).
fn count(e: &pb::AuditEvent) -> u64 {
    audit_count(e)
}

/// Calls every RPC of CredentialService and MembershipService once, as the services the docs
/// give them to, and finds each call's event with its caller, actor, credential and outcome.
#[tokio::test]
async fn every_rpc_leaves_an_event_with_caller_actor_and_credential() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker_with_callers(&fake).await;
    let mut c = b.credentials().await;
    let mut m = b.members().await;
    let alice = Some(ALICE);
    let bob = Some(BOB);

    c.list_providers(as_alice(pb::ListProvidersRequest::default()))
        .await
        .unwrap();
    // The fake's authorize endpoint logs in as `user-1`: the reconnect below is that account.
    let (import, _, _) = fake_grant_import(&fake, "user-1", T0.as_millis() / 1000 + 3600);
    let id = c
        .import_credential(call(import, OPERATOR_TOKEN, alice))
        .await
        .credential()
        .credential_id;
    let with_id = || pb::GetCredentialRequest {
        credential_id: id.clone(),
    };
    c.get_credential(as_alice(with_id())).await.unwrap();
    c.list_credentials(as_alice(pb::ListCredentialsRequest {
        workspace_id: "ws1".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    c.update_credential(as_alice(rename_request(&id, "Renamed")))
        .await
        .unwrap();
    c.start_connect(as_alice(pb::StartConnectRequest {
        workspace_id: "ws1".into(),
        provider_id: "fake".into(),
        redirect_uri: REDIRECT_URI.into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    // A state the broker never issued: refused, and the refusal is audited.
    c.complete_connect(as_alice(pb::CompleteConnectRequest {
        state: "never-issued".into(),
        code: "code".into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    let reconnect = c
        .start_reconnect(as_alice(pb::StartReconnectRequest {
            credential_id: id.clone(),
            redirect_uri: REDIRECT_URI.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let callback = fake
        .approve(&url::Url::parse(&reconnect.authorization_url).unwrap())
        .await;
    let params = callback.query_pairs().into_owned().collect();
    c.complete_connect(as_alice(callback_request(&params)))
        .await
        .unwrap();
    c.get_access_token(call(
        pb::GetAccessTokenRequest {
            credential_id: id.clone(),
            workflow_id: "wf-1".into(),
            execution_id: "ex-1".into(),
            ..Default::default()
        },
        EXECUTOR_TOKEN,
        alice,
    ))
    .await
    .unwrap();
    // A run grant: asked for by the web backend for Alice, presented by the executor that must
    // present one, then revoked.
    let run = pb::CreateRunGrantRequest {
        credential_ids: vec![id.clone()],
        workflow_id: "wf-2".into(),
        execution_id: "ex-2".into(),
        ..Default::default()
    };
    let grant = c.create_run_grant(as_alice(run)).await;
    let grant = grant.unwrap().into_inner();
    let token = pb::GetAccessTokenRequest {
        credential_id: id.clone(),
        block_id: "blk-2".into(),
        ..Default::default()
    };
    let mut with_grant = call(token, STRICT_EXECUTOR_TOKEN, None);
    with_grant
        .metadata_mut()
        .insert("x-run-grant", grant.run_grant.parse().unwrap());
    c.get_access_token(with_grant).await.unwrap();
    let revoke = pb::RevokeRunGrantRequest {
        run_grant_id: grant.run_grant_id.clone(),
    };
    c.revoke_run_grant(as_alice(revoke)).await.unwrap();
    m.add_member(as_alice(pb::AddMemberRequest {
        credential_id: id.clone(),
        email: BOB.1.into(),
        role: pb::MemberRole::Member as i32,
    }))
    .await
    .unwrap();
    m.update_member_role(as_alice(pb::UpdateMemberRoleRequest {
        credential_id: id.clone(),
        email: BOB.1.into(),
        role: pb::MemberRole::Admin as i32,
    }))
    .await
    .unwrap();
    m.accept_invitation(as_bob(pb::AcceptInvitationRequest {
        credential_id: id.clone(),
    }))
    .await
    .unwrap();
    m.list_members(as_bob(pb::ListMembersRequest {
        credential_id: id.clone(),
    }))
    .await
    .unwrap();
    m.remove_member(as_alice(pb::RemoveMemberRequest {
        credential_id: id.clone(),
        email: BOB.1.into(),
    }))
    .await
    .unwrap();
    c.disconnect_credential(as_alice(pb::DisconnectCredentialRequest {
        credential_id: id.clone(),
    }))
    .await
    .unwrap();
    c.list_audit_events(call(
        pb::ListAuditEventsRequest {
            credential_id: id.clone(),
            ..Default::default()
        },
        OPERATOR_TOKEN,
        alice,
    ))
    .await
    .unwrap();
    c.list_credential_events(as_alice(pb::ListCredentialEventsRequest {
        workspace_id: "ws1".into(),
        credential_id: id.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    drop(
        c.watch_credential_events(from_operator(pb::WatchCredentialEventsRequest {
            workspace_id: "ws1".into(),
            start_at_end: true,
            ..Default::default()
        }))
        .await
        .unwrap(),
    );
    let unknown = c
        .list_webhook_deliveries(from_operator(pb::ListWebhookDeliveriesRequest {
            endpoint_id: "no-such-endpoint".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    // Denied by the caller layer: an executor may not read the log; nobody may call unnamed.
    c.list_audit_events(call(
        pb::ListAuditEventsRequest::default(),
        EXECUTOR_TOKEN,
        alice,
    ))
    .await
    .unwrap_err();
    c.get_credential(call(with_id(), "not-a-configured-token", bob))
        .await
        .unwrap_err();

    // Workspace OAuth apps, managed by the operator service on its own.
    let mut apps =
        cb_proto::v1::o_auth_app_service_client::OAuthAppServiceClient::new(b.channel().await);
    let app = apps
        .create_o_auth_app(from_operator(crate::support::client::app_request(
            "ws1",
            "fake",
            "app-client",
            "app-secret",
        )))
        .await
        .unwrap()
        .into_inner()
        .oauth_app
        .unwrap()
        .oauth_app_id;
    let app_id = || app.clone();
    apps.get_o_auth_app(from_operator(pb::GetOAuthAppRequest {
        oauth_app_id: app_id(),
    }))
    .await
    .unwrap();
    apps.list_o_auth_apps(from_operator(pb::ListOAuthAppsRequest {
        workspace_id: "ws1".into(),
        provider_id: String::new(),
    }))
    .await
    .unwrap();
    apps.update_o_auth_app(from_operator(pb::UpdateOAuthAppRequest {
        oauth_app_id: app_id(),
        display_name: "Renamed".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    apps.rotate_o_auth_app_secret(from_operator(pb::RotateOAuthAppSecretRequest {
        oauth_app_id: app_id(),
        client_secret: "app-secret-2".into(),
    }))
    .await
    .unwrap();
    apps.retire_o_auth_app_secret(from_operator(pb::RetireOAuthAppSecretRequest {
        oauth_app_id: app_id(),
    }))
    .await
    .unwrap();
    apps.test_o_auth_app(from_operator(pb::TestOAuthAppRequest {
        oauth_app_id: app_id(),
        redirect_uri: REDIRECT_URI.into(),
    }))
    .await
    .unwrap();
    apps.delete_o_auth_app(from_operator(pb::DeleteOAuthAppRequest {
        oauth_app_id: app_id(),
        force: false,
    }))
    .await
    .unwrap();

    // A provider the workspace defines at runtime (endpoints given: no network).
    let definition = || pb::WorkspaceProviderDefinition {
        authorize_url: "https://auth.acme.example/authorize".into(),
        token_url: "https://auth.acme.example/token".into(),
        userinfo_url: "https://auth.acme.example/userinfo".into(),
        ..Default::default()
    };
    apps.create_workspace_provider(from_operator(pb::CreateWorkspaceProviderRequest {
        workspace_id: "ws1".into(),
        provider_id: "acme".into(),
        definition: Some(definition()),
    }))
    .await
    .unwrap();
    apps.get_workspace_provider(from_operator(pb::GetWorkspaceProviderRequest {
        workspace_id: "ws1".into(),
        provider_id: "acme".into(),
    }))
    .await
    .unwrap();
    apps.list_workspace_providers(from_operator(pb::ListWorkspaceProvidersRequest {
        workspace_id: "ws1".into(),
    }))
    .await
    .unwrap();
    apps.update_workspace_provider(from_operator(pb::UpdateWorkspaceProviderRequest {
        workspace_id: "ws1".into(),
        provider_id: "acme".into(),
        definition: Some(definition()),
        expected_version: 0,
    }))
    .await
    .unwrap();
    apps.delete_workspace_provider(from_operator(pb::DeleteWorkspaceProviderRequest {
        workspace_id: "ws1".into(),
        provider_id: "acme".into(),
    }))
    .await
    .unwrap();

    // A webhook endpoint managed through the API, by the web backend for a workspace admin
    // (the secret is in no event: secrets.rs scans them).
    let mut hooks =
        cb_proto::v1::webhook_service_client::WebhookServiceClient::new(b.channel().await);
    let endpoint_id = hooks
        .create_webhook_endpoint(ws1_admin(pb::CreateWebhookEndpointRequest {
            workspace_id: "ws1".into(),
            url: "https://hooks.example.com/audit".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
        .endpoint_id;
    let endpoint = || endpoint_id.clone();
    hooks
        .get_webhook_endpoint(ws1_admin(pb::GetWebhookEndpointRequest {
            endpoint_id: endpoint(),
        }))
        .await
        .unwrap();
    hooks
        .list_webhook_endpoints(ws1_admin(pb::ListWebhookEndpointsRequest {
            workspace_id: "ws1".into(),
        }))
        .await
        .unwrap();
    hooks
        .update_webhook_endpoint(ws1_admin(pb::UpdateWebhookEndpointRequest {
            endpoint_id: endpoint(),
            enable: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    hooks
        .rotate_webhook_secret(ws1_admin(pb::RotateWebhookSecretRequest {
            endpoint_id: endpoint(),
        }))
        .await
        .unwrap();
    hooks
        .retire_webhook_secret(ws1_admin(pb::RetireWebhookSecretRequest {
            endpoint_id: endpoint(),
        }))
        .await
        .unwrap();
    hooks
        .delete_webhook_endpoint(ws1_admin(pb::DeleteWebhookEndpointRequest {
            endpoint_id: endpoint(),
        }))
        .await
        .unwrap();

    let events = all_events(&b, &mut c, pb::ListAuditEventsRequest::default()).await;
    let cred = id.as_str();
    // (action, calling service, actor, credential id, outcome)
    let expected = [
        ("provider.list", "web", ALICE.0, "", "ok"),
        ("credential.import", "operator", ALICE.0, cred, "ok"),
        ("credential.get", "web", ALICE.0, cred, "ok"),
        ("credential.list", "web", ALICE.0, "", "ok"),
        ("credential.update", "web", ALICE.0, cred, "ok"),
        ("connect.start", "web", ALICE.0, "", "ok"),
        (
            "credential.connect",
            "web",
            ALICE.0,
            "",
            "CONNECT_STATE_UNKNOWN",
        ),
        ("connect.reconnect_start", "web", ALICE.0, cred, "ok"),
        ("credential.reconnect", "web", ALICE.0, cred, "ok"),
        ("token.issue", "executor", ALICE.0, cred, "ok"),
        ("token.issue", "strict-executor", ALICE.0, cred, "ok"),
        ("run_grant.create", "web", ALICE.0, cred, "ok"),
        ("run_grant.revoke", "web", ALICE.0, "", "ok"),
        ("member.add", "web", ALICE.0, cred, "ok"),
        ("member.update_role", "web", ALICE.0, cred, "ok"),
        ("member.accept", "web", BOB.0, cred, "ok"),
        ("member.list", "web", BOB.0, cred, "ok"),
        ("member.remove", "web", ALICE.0, cred, "ok"),
        ("credential.disconnect", "web", ALICE.0, cred, "ok"),
        ("audit.list", "operator", ALICE.0, cred, "ok"),
        ("oauth_app.create", "operator", "", "", "ok"),
        ("oauth_app.get", "operator", "", "", "ok"),
        ("oauth_app.list", "operator", "", "", "ok"),
        ("oauth_app.update", "operator", "", "", "ok"),
        ("oauth_app.rotate_secret", "operator", "", "", "ok"),
        ("oauth_app.retire_secret", "operator", "", "", "ok"),
        ("oauth_app.test", "operator", "", "", "ok"),
        ("oauth_app.delete", "operator", "", "", "ok"),
        ("workspace_provider.create", "operator", "", "", "ok"),
        ("workspace_provider.get", "operator", "", "", "ok"),
        ("workspace_provider.list", "operator", "", "", "ok"),
        ("workspace_provider.update", "operator", "", "", "ok"),
        ("workspace_provider.delete", "operator", "", "", "ok"),
        ("webhook_endpoint.create", "web", ALICE.0, "", "ok"),
        ("webhook_endpoint.get", "web", ALICE.0, "", "ok"),
        ("webhook_endpoint.list", "web", ALICE.0, "", "ok"),
        ("webhook_endpoint.update", "web", ALICE.0, "", "ok"),
        ("webhook_endpoint.rotate_secret", "web", ALICE.0, "", "ok"),
        ("webhook_endpoint.retire_secret", "web", ALICE.0, "", "ok"),
        ("webhook_endpoint.delete", "web", ALICE.0, "", "ok"),
        ("event.list", "web", ALICE.0, cred, "ok"),
        ("event.watch", "operator", "", "", "ok"),
        (
            "rpc.ListAuditEvents",
            "executor",
            ALICE.0,
            "",
            "CALLER_NOT_ALLOWED",
        ),
        (
            "rpc.GetCredential",
            "unauthenticated",
            BOB.0,
            "",
            "UNAUTHENTICATED",
        ),
    ];
    for (action, service, actor, credential_id, outcome) in expected {
        let found = events.iter().any(|e| {
            e.action == action
                && e.service == service
                && e.actor == actor
                && e.credential_id == credential_id
                && e.outcome == outcome
        });
        assert!(
            found,
            "no {action} event by {service} for {actor} on {credential_id:?} with {outcome}; \
             events: {events:#?}"
        );
    }
    let issued = |service: &str| {
        events
            .iter()
            .find(|e| e.action == "token.issue" && e.service == service)
            .unwrap()
            .detail
            .clone()
    };
    assert_eq!(issued("executor"), "workflow=wf-1 execution=ex-1");
    // With a grant: its run, and the block the call named.
    assert_eq!(
        issued("strict-executor"),
        format!(
            "run_grant={} workflow=wf-2 block=blk-2 execution=ex-2",
            grant.run_grant_id
        )
    );
    // Every action the code can record was met above (the docs list the same set).
    let met: std::collections::BTreeSet<String> = events
        .iter()
        .map(|e| {
            if e.action.starts_with("rpc.") {
                "rpc.<Method>".to_owned()
            } else {
                e.action.clone()
            }
        })
        .collect();
    let all: std::collections::BTreeSet<String> = cb_broker::audit::ACTIONS
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    assert_eq!(met, all);
}

/// Concurrent issuances with distinct execution ids, each repeated: every call is counted, in
/// one row per execution, written by a few flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_issuances_with_distinct_executions_are_all_counted() {
    const EXECUTIONS: usize = 500;
    const REPEATS: usize = 4;
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker_with_callers(&fake).await;
    let mut c = b.credentials().await;
    let (import, _, _) = fake_grant_import(&fake, "acct-1", T0.as_millis() / 1000 + 3600);
    let id = c
        .import_credential(call(import, OPERATOR_TOKEN, Some(ALICE)))
        .await
        .credential()
        .credential_id;
    b.app().flush_audit().await;
    let before = b.app().audit_stats();
    let mut calls = tokio::task::JoinSet::new();
    for task in 0..50 {
        let mut c = c.clone();
        let id = id.clone();
        calls.spawn(async move {
            for n in (task..EXECUTIONS * REPEATS).step_by(50) {
                c.get_access_token(call(
                    pb::GetAccessTokenRequest {
                        credential_id: id.clone(),
                        workflow_id: "wf-1".into(),
                        execution_id: format!("ex-{}", n % EXECUTIONS),
                        ..Default::default()
                    },
                    EXECUTOR_TOKEN,
                    Some(ALICE),
                ))
                .await
                .unwrap();
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let rows = all_events(
        &b,
        &mut c,
        pb::ListAuditEventsRequest {
            credential_id: id.clone(),
            action: "token.issue".into(),
            ..Default::default()
        },
    )
    .await;
    let total: u64 = rows.iter().map(count).sum();
    assert_eq!(
        total,
        (EXECUTIONS * REPEATS) as u64,
        "every issuance counted"
    );
    let executions: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|e| {
            e.detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix("execution="))
        })
        .collect();
    assert_eq!(executions.len(), EXECUTIONS, "each execution keeps its id");
    // A row per (execution, flush window): never a row per call beyond the repeats' spread.
    assert!(
        rows.len() <= EXECUTIONS * REPEATS,
        "{} rows for {} calls",
        rows.len(),
        EXECUTIONS * REPEATS
    );
    let after = b.app().audit_stats();
    assert!(after.events_written - before.events_written >= (EXECUTIONS * REPEATS) as u64);
    assert_eq!(
        after.merged + after.dropped_full + after.dropped_write_failed,
        0
    );
    // What a full buffer would do is exported, at 0 here.
    let metrics = b.app().metrics_text();
    for line in [
        "credential_broker_audit_events_merged_total 0",
        "credential_broker_audit_events_dropped_total{reason=\"buffer_full\"} 0",
        "credential_broker_audit_events_dropped_total{reason=\"write_failed\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}
