//! Tokens and secrets never appear in logs (at TRACE), errors, audit events or any response other
//! than GetAccessToken (and, for run grants, CreateRunGrant). The whole flow runs against the real binary with `log.filter = "trace"`,
//! and everything it said is scanned for every secret the fake provider ever issued.

use crate::support::broker::{BrokerProcess, TestBroker, config_toml, with_fake_provider};
use crate::support::client::{ALICE, Client};
use crate::support::fake_provider::{FakeConfig, FakeProvider, TokenFailure};
use crate::support::wait::{wait_for, wait_until_sync};
use crate::support::webhook_receiver::WebhookReceiver;
use cb_proto::v1 as pb;
use prost::Message;
use std::time::Duration;

/// Asks for tokens until the broker has refreshed (the fake saw another refresh call), keeping
/// each token issued; a failing call ends it. With one-second tokens a refresh is due within a
/// second.
async fn issue_until_refreshed(
    client: &mut Client,
    fake: &FakeProvider,
    request: pb::GetAccessTokenRequest,
    issued: &mut Vec<String>,
) -> Result<(), tonic::Status> {
    let before = fake.refresh_calls();
    let started = std::time::Instant::now();
    loop {
        let t = client.token_with(request.clone()).await?;
        issued.push(t.access_token);
        if fake.refresh_calls() > before {
            return Ok(());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no refresh came due"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The provider's consent at `authorization_url`, then CompleteConnect; the answer is recorded
/// in `said`. Returns it with the callback (to replay).
async fn consent(
    fake: &FakeProvider,
    client: &mut Client,
    authorization_url: &str,
    said: &mut Vec<u8>,
) -> (pb::CompleteConnectResponse, url::Url) {
    let callback = fake
        .approve(&url::Url::parse(authorization_url).unwrap())
        .await;
    let done = client.complete_connect_response(&callback).await.unwrap();
    said.extend(done.encode_to_vec());
    (done, callback)
}

/// Every secret-shaped value in `text`: the fake names its tokens `at_<port>_<n>`,
/// `rt_<port>_<n>` and `code_<port>_<n>`.
fn secrets_in(text: &str, port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in ["at_", "rt_", "code_"] {
        let needle = format!("{prefix}{port}_");
        let mut rest = text;
        while let Some(i) = rest.find(&needle) {
            let tail = &rest[i + needle.len()..];
            let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() {
                found.push(format!("{needle}{digits}"));
            }
            rest = tail;
        }
    }
    found
}

/// The signing secret of the traced flow's webhook endpoint.
const WEBHOOK_SECRET: &str = "whsec_dHJhY2VkLXdlYmhvb2stc2lnbmluZy1rZXktMTIzNA==";

/// The client secrets of the workspace OAuth app the traced flow connects through.
const APP_SECRETS: [&str; 2] = ["app-secret-traced-one", "app-secret-traced-two"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_errors_audit_or_responses() {
    // One-second tokens: a refresh comes due within a second (min_valid_for cannot force one).
    let fake = FakeProvider::start(FakeConfig {
        extra_clients: vec![("traced-app".into(), APP_SECRETS[0].into())],
        rotate_refresh_tokens: true,
        access_token_ttl: Some(std::time::Duration::from_secs(1)),
        ..FakeConfig::default()
    })
    .await;
    let port: u16 = url::Url::parse(&fake.base_url()).unwrap().port().unwrap();
    // A webhook endpoint of ws1: every event of the flow is signed with its secret.
    let hooks = WebhookReceiver::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, db.clone());
    with_fake_provider(&mut config, &fake, "fake", &[]);
    let fc = fake.config();
    let toml = config_toml(&config, &db).replace("filter = \"info\"", "filter = \"trace\"")
        + &format!(
            "[providers.fake]\nclient_id = {:?}\nclient_secret = {:?}\n",
            fc.client_id, fc.client_secret
        )
        + &crate::support::broker::custom_provider_toml(&fake)
        + &format!(
            "[outbound]\nallow_loopback = true\n[[webhooks]]\nid = \"traced-hook\"\n\
             workspace_id = \"ws1\"\nurl = {:?}\nsecrets = [{WEBHOOK_SECRET:?}]\n",
            hooks.url()
        );
    let broker = BrokerProcess::spawn(dir.path(), "traced", &toml).await;
    let mut client = broker.client(ALICE).await;
    let c = client.creds.clone();

    let mut said: Vec<u8> = Vec::new(); // every response and error except GetAccessToken
    let mut issued: Vec<String> = Vec::new(); // tokens legitimately returned by GetAccessToken
    let record_err = |said: &mut Vec<u8>, s: &tonic::Status| {
        said.extend(s.message().as_bytes());
        said.extend(s.details());
    };

    // A workspace OAuth app: the whole flow below goes through its client.
    let mut admin = client.admin_of("ws1");
    let app = admin
        .create_app("ws1", "fake", "traced-app", APP_SECRETS[0])
        .await
        .unwrap();
    said.extend(app.encode_to_vec());
    // A webhook endpoint made through the API: its generated secret is shown in the Create and
    // Rotate responses only (not scanned as `said`, like CreateRunGrant) and nowhere else.
    let created = admin
        .webhooks
        .create_webhook_endpoint(admin.request(pb::CreateWebhookEndpointRequest {
            workspace_id: "ws1".into(),
            url: hooks.url(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut api_hook_secrets = vec![created.secret];
    let api_hook = created.endpoint.unwrap().endpoint_id;
    let err = admin
        .create_app("ws1", "no-such-provider", "x", APP_SECRETS[1])
        .await
        .unwrap_err();
    record_err(&mut said, &err);

    // A provider the workspace defines at runtime, connected through an app of its own: its
    // client secret appears nowhere either.
    let base = fake.base_url();
    let defined = admin
        .apps
        .create_workspace_provider(admin.request(pb::CreateWorkspaceProviderRequest {
            workspace_id: "ws1".into(),
            provider_id: "traced-acme".into(),
            definition: Some(pb::WorkspaceProviderDefinition {
                authorize_url: format!("{base}/authorize"),
                token_url: format!("{base}/token"),
                revocation_url: format!("{base}/revoke"),
                userinfo_url: format!("{base}/userinfo"),
                scopes: vec!["read".into()],
                default_scopes: vec!["read".into()],
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    said.extend(defined.into_inner().encode_to_vec());
    let acme_app = admin
        .create_app("ws1", "traced-acme", "traced-app", APP_SECRETS[0])
        .await
        .unwrap();
    said.extend(acme_app.encode_to_vec());
    let start = client.start_connect("traced-acme").await.unwrap();
    said.extend(start.encode_to_vec());
    let (done, _) = consent(&fake, &mut client, &start.authorization_url, &mut said).await;
    let acme_id = done.credential.unwrap().credential_id;
    issued.push(client.token(&acme_id).await.unwrap().access_token);
    said.extend(client.disconnect(&acme_id).await.unwrap().encode_to_vec());

    // Connect.
    let start = client.start_connect("fake").await.unwrap();
    said.extend(start.encode_to_vec());
    let (done, _) = consent(&fake, &mut client, &start.authorization_url, &mut said).await;
    let id = done.credential.unwrap().credential_id;
    let get_token = |min: i64| pb::GetAccessTokenRequest {
        credential_id: id.clone(),
        min_valid_for: Some(prost_types::Duration {
            seconds: min,
            nanos: 0,
        }),
        ..Default::default()
    };
    // Issue, then refreshes (rotation).
    issued.push(client.token_with(get_token(60)).await.unwrap().access_token);
    // A run grant: handed out once (CreateRunGrant, not scanned as `said`), used by an executor,
    // and a made-up one refused.
    let grant = c
        .clone()
        .create_run_grant(client.request(pb::CreateRunGrantRequest {
            credential_ids: vec![id.clone()],
            workflow_id: "wf-secret-scan".into(),
            execution_id: "ex-secret-scan".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .run_grant;
    let with_grant = |g: &str| {
        let mut r = tonic::Request::new(get_token(60));
        r.metadata_mut().insert("x-run-grant", g.parse().unwrap());
        r
    };
    issued.push(
        c.clone()
            .get_access_token(with_grant(&grant))
            .await
            .unwrap()
            .into_inner()
            .access_token,
    );
    let made_up = format!("cbrg_{}", "Zm9yZ2Vk".repeat(6));
    let err = c
        .clone()
        .get_access_token(with_grant(&made_up))
        .await
        .unwrap_err();
    record_err(&mut said, &err);
    for _ in 0..2 {
        issue_until_refreshed(&mut client, &fake, get_token(3600), &mut issued)
            .await
            .unwrap();
    }
    // The app's secret is rotated before the provider knows the new one: the previous one is
    // tried after invalid_client, then retired once the provider switched.
    let rotate = admin.request(pb::RotateOAuthAppSecretRequest {
        oauth_app_id: app.oauth_app_id.clone(),
        client_secret: APP_SECRETS[1].into(),
    });
    let rotated = admin.apps.rotate_o_auth_app_secret(rotate).await.unwrap();
    said.extend(rotated.into_inner().encode_to_vec());
    issue_until_refreshed(&mut client, &fake, get_token(3600), &mut issued)
        .await
        .unwrap();
    fake.configure(|c| c.extra_clients = vec![("traced-app".into(), APP_SECRETS[1].into())]);
    let retire = admin.request(pb::RetireOAuthAppSecretRequest {
        oauth_app_id: app.oauth_app_id.clone(),
    });
    let retired = admin.apps.retire_o_auth_app_secret(retire).await.unwrap();
    said.extend(retired.into_inner().encode_to_vec());
    // A transient failure, then a dead grant.
    fake.push_token_failure(TokenFailure::ServerError);
    let _ = issue_until_refreshed(&mut client, &fake, get_token(3600), &mut issued).await;
    fake.push_token_failure(TokenFailure::InvalidGrant);
    let err = issue_until_refreshed(&mut client, &fake, get_token(3600), &mut issued)
        .await
        .unwrap_err();
    record_err(&mut said, &err);
    // Reconnect, rename, members, reads, disconnect, audit.
    let request = client.request(pb::StartReconnectRequest {
        credential_id: id.clone(),
        redirect_uri: crate::support::broker::REDIRECT_URI.into(),
        scopes: vec![],
    });
    let re = c
        .clone()
        .start_reconnect(request)
        .await
        .unwrap()
        .into_inner();
    said.extend(re.encode_to_vec());
    let (_, callback) = consent(&fake, &mut client, &re.authorization_url, &mut said).await;
    // A replayed code and state: errors must not echo them.
    let err = client
        .complete_connect_response(&callback)
        .await
        .unwrap_err();
    record_err(&mut said, &err);
    issued.push(client.token_with(get_token(60)).await.unwrap().access_token);
    said.extend(client.get(&id).await.unwrap().encode_to_vec());
    let list = client
        .list_page(pb::ListCredentialsRequest {
            workspace_id: "ws1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    said.extend(list.encode_to_vec());
    said.extend(client.disconnect(&id).await.unwrap().encode_to_vec());
    // The endpoint's delivery log (the disconnect delivered last, signed with the secret).
    wait_until_sync(Duration::from_secs(10), "the disconnect delivered", || {
        hooks
            .received()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("credential.disconnected"))
    })
    .await;
    let deliveries = admin
        .creds
        .list_webhook_deliveries(admin.request(pb::ListWebhookDeliveriesRequest {
            endpoint_id: "traced-hook".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!deliveries.deliveries.is_empty());
    said.extend(deliveries.encode_to_vec());
    let rotated = admin
        .webhooks
        .rotate_webhook_secret(admin.request(pb::RotateWebhookSecretRequest {
            endpoint_id: api_hook.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    api_hook_secrets.push(rotated.secret);
    let retired = admin
        .webhooks
        .retire_webhook_secret(admin.request(pb::RetireWebhookSecretRequest {
            endpoint_id: api_hook.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    said.extend(retired.encode_to_vec());
    let got = admin
        .webhooks
        .get_webhook_endpoint(admin.request(pb::GetWebhookEndpointRequest {
            endpoint_id: api_hook.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    said.extend(got.encode_to_vec());
    let listed = admin
        .webhooks
        .list_webhook_endpoints(admin.request(pb::ListWebhookEndpointsRequest {
            workspace_id: "ws1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.endpoints.len(),
        2,
        "the configured and the API endpoint"
    );
    said.extend(listed.encode_to_vec());
    let api_deliveries = admin
        .creds
        .list_webhook_deliveries(admin.request(pb::ListWebhookDeliveriesRequest {
            endpoint_id: api_hook.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    said.extend(api_deliveries.encode_to_vec());
    let err = client.token_with(get_token(60)).await.unwrap_err();
    record_err(&mut said, &err);
    // Token issuance is audited through a buffer the child writes within a moment.
    let audit = wait_for(
        Duration::from_secs(10),
        "buffered audit events land",
        || {
            let mut c = c.clone();
            async move {
                let audit = c
                    .list_audit_events(pb::ListAuditEventsRequest {
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let actions: Vec<String> = audit.events.iter().map(|e| e.action.clone()).collect();
                if actions.iter().any(|a| a == "token.issue") {
                    Ok(audit)
                } else {
                    Err(actions)
                }
            }
        },
    )
    .await;
    assert!(
        audit.events.iter().any(|e| e.action == "token.issue"),
        "token issuance is audited"
    );
    assert!(
        audit
            .events
            .iter()
            .any(|e| e.action == "credential.reconnect")
    );
    assert!(
        audit
            .events
            .iter()
            .any(|e| e.action == "credential.disconnect")
    );
    said.extend(audit.encode_to_vec());

    let log = broker.log();
    assert!(
        log.contains("TRACE") || log.contains("\"level\":\"TRACE\""),
        "the broker really logged at TRACE"
    );
    assert!(fake.refresh_calls() >= 2, "the flow refreshed");
    let said = String::from_utf8_lossy(&said).into_owned();
    let leaks_said = secrets_in(&said, port);
    assert!(
        leaks_said.is_empty(),
        "secrets in responses, errors or audit events: {leaks_said:?}"
    );
    let leaks_log = secrets_in(&log, port);
    assert!(
        leaks_log.is_empty(),
        "secrets in the TRACE log: {leaks_log:?}"
    );
    assert!(
        audit.events.iter().any(|e| e.action == "run_grant.create"),
        "the grant's creation is audited"
    );
    // No run grant at all (their prefix) in the log, errors or audit.
    assert!(!log.contains("cbrg_") && !said.contains("cbrg_"));
    assert!(
        fake.token_requests()
            .iter()
            .any(|r| r.client_id.as_deref() == Some("traced-app")),
        "the flow went through the workspace app"
    );
    let webhook_key = WEBHOOK_SECRET.trim_start_matches("whsec_");
    let api_hook_keys: Vec<&str> = api_hook_secrets
        .iter()
        .flat_map(|s| [s.as_str(), s.trim_start_matches("whsec_")])
        .collect();
    for secret in [fc.client_secret.as_str(), grant.as_str(), made_up.as_str()]
        .into_iter()
        .chain([WEBHOOK_SECRET, webhook_key])
        .chain(api_hook_keys)
        .chain(APP_SECRETS)
        .chain(issued.iter().map(String::as_str))
    {
        assert!(
            !said.contains(secret),
            "a secret reached a response other than GetAccessToken"
        );
        assert!(!log.contains(secret), "a secret reached the log");
    }
    // The scan would have seen them: GetAccessToken did return fake tokens.
    assert!(issued.iter().all(|t| !secrets_in(t, port).is_empty()));
}
