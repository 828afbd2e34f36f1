//! Webhook endpoints managed through the API (WebhookService, decision 29): a workspace admin
//! creates an endpoint and receives its generated secret once; deliveries verify under it with
//! the independent Standard Webhooks verifier, under both secrets during a rotation and only
//! the new one after retiring; the URL passes the outbound policy; configured endpoints are
//! listed read-only; deleting stops deliveries.

use crate::support::broker::{TestBroker, assert_status, t0_secs};
use crate::support::client::{ALICE, BOB, Client, rename_request};
use crate::support::fake_provider::{FakeProvider, rotating};
use crate::support::wait::wait_until_sync;
use crate::support::webhook_receiver::{Received, WebhookReceiver, verified_independently};
use crate::support::{contains, pg, sqlite_bytes};
use cb_proto::v1 as pb;
use prost::Message;
use std::time::Duration;
use tonic::Code;

const CONFIG_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Requests the receiver accepted whose body mentions `event_type` (e.g. `credential.updated`).
fn delivered(receiver: &WebhookReceiver, event_type: &str) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.status == 204 && String::from_utf8_lossy(&r.body).contains(event_type))
        .collect()
}

fn create(workspace: &str, url: &str) -> pb::CreateWebhookEndpointRequest {
    pb::CreateWebhookEndpointRequest {
        workspace_id: workspace.into(),
        url: url.into(),
        description: "ops alerts".into(),
        ..Default::default()
    }
}

async fn get(
    admin: &mut Client,
    id: &str,
) -> Result<pb::GetWebhookEndpointResponse, tonic::Status> {
    let r = admin.request(pb::GetWebhookEndpointRequest {
        endpoint_id: id.into(),
    });
    admin
        .webhooks
        .get_webhook_endpoint(r)
        .await
        .map(tonic::Response::into_inner)
}

async fn list(
    admin: &mut Client,
    workspace: &str,
) -> Result<pb::ListWebhookEndpointsResponse, tonic::Status> {
    let r = admin.request(pb::ListWebhookEndpointsRequest {
        workspace_id: workspace.into(),
    });
    admin
        .webhooks
        .list_webhook_endpoints(r)
        .await
        .map(tonic::Response::into_inner)
}

async fn rotate(
    admin: &mut Client,
    id: &str,
) -> Result<pb::RotateWebhookSecretResponse, tonic::Status> {
    let r = admin.request(pb::RotateWebhookSecretRequest {
        endpoint_id: id.into(),
    });
    admin
        .webhooks
        .rotate_webhook_secret(r)
        .await
        .map(tonic::Response::into_inner)
}

async fn retire(
    admin: &mut Client,
    id: &str,
) -> Result<pb::RetireWebhookSecretResponse, tonic::Status> {
    let r = admin.request(pb::RetireWebhookSecretRequest {
        endpoint_id: id.into(),
    });
    admin
        .webhooks
        .retire_webhook_secret(r)
        .await
        .map(tonic::Response::into_inner)
}

async fn delete(admin: &mut Client, id: &str) -> Result<(), tonic::Status> {
    let r = admin.request(pb::DeleteWebhookEndpointRequest {
        endpoint_id: id.into(),
    });
    admin.webhooks.delete_webhook_endpoint(r).await.map(drop)
}

/// The whole life of an API endpoint, beside a configured one. `database_url`: PostgreSQL,
/// with a second broker on the same database — the endpoint is created on one and its
/// deliveries (including after a rotation made on the other) are sent by either.
async fn an_api_endpoint_delivers_signed_with_its_generated_secret(database_url: Option<&str>) {
    let receiver = WebhookReceiver::start(true).await;
    let configured = WebhookReceiver::start(true).await;
    let fake = FakeProvider::start(rotating()).await;
    let tune = |c: &mut credential_broker::runtime::config::Config| {
        c.outbound.allow_loopback = true;
        c.events.webhook_poll_ms = 20;
        c.webhooks = vec![credential_broker::runtime::config::WebhookSettings {
            id: "cfg-hook".into(),
            workspace_id: "ws1".into(),
            url: configured.url(),
            secrets: vec![credential_broker::runtime::config::SecretValue::new(
                CONFIG_SECRET.to_owned(),
            )],
            event_types: Vec::new(),
        }];
    };
    let b = TestBroker::with_fake(&fake, database_url, tune).await;
    // A replica: the same configuration and key, another process's worth of state.
    let second = match database_url {
        Some(_) => Some(b.replica().await),
        None => None,
    };
    let mut alice = b.client(ALICE).await;
    let mut admin = alice.admin_of("ws1");
    let mut admin_elsewhere = match &second {
        Some(s) => s.client(ALICE).await.admin_of("ws1"),
        None => admin.clone(),
    };
    let expires = t0_secs() + 3600;

    let r = admin.request(create("ws1", &receiver.url()));
    let created = admin
        .webhooks
        .create_webhook_endpoint(r)
        .await
        .unwrap()
        .into_inner();
    let first_secret = created.secret.clone();
    let endpoint = created.endpoint.unwrap();
    let id = endpoint.endpoint_id.clone();
    assert!(
        first_secret.starts_with("whsec_"),
        "a Standard Webhooks secret"
    );
    assert!(id.starts_with("whe_"), "{id}");
    assert_eq!(endpoint.source, pb::WebhookEndpointSource::Api as i32);
    assert_eq!(endpoint.secret_versions, vec![1]);
    assert_eq!(endpoint.description, "ops alerts");

    // Read back (on either replica): never the secret, and the configured endpoint beside it.
    let mut read = Vec::new();
    let got = get(&mut admin_elsewhere, &id).await.unwrap();
    assert_eq!(got.endpoint.as_ref().unwrap().url, receiver.url());
    read.extend(got.encode_to_vec());
    let listed = list(&mut admin, "ws1").await.unwrap();
    read.extend(listed.encode_to_vec());
    let sources: Vec<(String, i32)> = listed
        .endpoints
        .iter()
        .map(|e| (e.endpoint_id.clone(), e.source))
        .collect();
    assert_eq!(
        sources,
        vec![
            (
                "cfg-hook".to_owned(),
                pb::WebhookEndpointSource::Config as i32
            ),
            (id.clone(), pb::WebhookEndpointSource::Api as i32),
        ]
    );

    // A credential event reaches it, signed with the returned secret.
    let a = alice.import_fake(&fake, "acct-a", expires).await.unwrap();
    wait_until_sync(Duration::from_secs(10), "the connect delivered", || {
        !delivered(&receiver, "credential.connected").is_empty()
    })
    .await;
    let connected = delivered(&receiver, "credential.connected");
    assert!(verified_independently(&connected, &[&first_secret]));
    assert!(!verified_independently(&connected, &[CONFIG_SECRET]));

    // Rotated on the other replica: the next delivery carries two signatures, each verifying.
    let rotated = rotate(&mut admin_elsewhere, &id).await.unwrap();
    let second_secret = rotated.secret.clone();
    assert!(second_secret.starts_with("whsec_"));
    assert_ne!(second_secret, first_secret);
    assert_eq!(rotated.endpoint.unwrap().secret_versions, vec![2, 1]);
    let err = rotate(&mut admin, &id).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "WEBHOOK_SECRET_LIMIT");
    alice
        .update(rename_request(&a.id, "during rotation"))
        .await
        .unwrap();
    wait_until_sync(Duration::from_secs(10), "the rename delivered", || {
        !delivered(&receiver, "credential.updated").is_empty()
    })
    .await;
    let during = delivered(&receiver, "credential.updated");
    assert_eq!(
        during[0].signature.split(' ').count(),
        2,
        "{:?}",
        during[0].signature
    );
    assert!(verified_independently(&during, &[&first_secret]));
    assert!(verified_independently(&during, &[&second_secret]));

    // Retired: only the new secret signs.
    let retired = retire(&mut admin, &id).await.unwrap();
    read.extend(retired.encode_to_vec());
    assert_eq!(retired.endpoint.unwrap().secret_versions, vec![2]);
    let err = retire(&mut admin, &id).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "WEBHOOK_NO_PREVIOUS_SECRET");
    alice.disconnect(&a.id).await.unwrap();
    wait_until_sync(Duration::from_secs(10), "the disconnect delivered", || {
        !delivered(&receiver, "credential.disconnected").is_empty()
    })
    .await;
    let after = delivered(&receiver, "credential.disconnected");
    assert_eq!(after[0].signature.split(' ').count(), 1);
    assert!(verified_independently(&after, &[&second_secret]));
    assert!(!verified_independently(&after, &[&first_secret]));

    // Only `disconnected` from now on: a rename is filtered out, a disconnect is not.
    let r = admin.request(pb::UpdateWebhookEndpointRequest {
        endpoint_id: id.clone(),
        event_types: vec![pb::CredentialEventType::Disconnected as i32],
        description: "disconnects only".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["event_types".into(), "description".into()],
        }),
        ..Default::default()
    });
    let updated = admin
        .webhooks
        .update_webhook_endpoint(r)
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(
        updated.event_types,
        vec![pb::CredentialEventType::Disconnected as i32]
    );
    let c = alice.import_fake(&fake, "acct-c", expires).await.unwrap();
    alice
        .update(rename_request(&c.id, "filtered out"))
        .await
        .unwrap();
    alice.disconnect(&c.id).await.unwrap();
    wait_until_sync(
        Duration::from_secs(10),
        "the second disconnect delivered",
        || delivered(&receiver, "credential.disconnected").len() == 2,
    )
    .await;
    assert_eq!(
        delivered(&receiver, "credential.updated").len(),
        1,
        "no new rename"
    );
    assert_eq!(
        delivered(&receiver, "credential.connected").len(),
        1,
        "no new connect"
    );

    // The configured endpoint is read-only through the API.
    let r = admin.request(pb::UpdateWebhookEndpointRequest {
        endpoint_id: "cfg-hook".into(),
        enable: true,
        ..Default::default()
    });
    let err = admin.webhooks.update_webhook_endpoint(r).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "WEBHOOK_ENDPOINT_READ_ONLY");
    let err = rotate(&mut admin, "cfg-hook").await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "WEBHOOK_ENDPOINT_READ_ONLY");
    let err = delete(&mut admin, "cfg-hook").await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "WEBHOOK_ENDPOINT_READ_ONLY");

    // Deleted: the next event goes to the configured endpoint only.
    delete(&mut admin, &id).await.unwrap();
    let err = get(&mut admin_elsewhere, &id).await.unwrap_err();
    assert_status(&err, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
    let before = receiver.received().len();
    let d = alice.import_fake(&fake, "acct-d", expires).await.unwrap();
    alice.disconnect(&d.id).await.unwrap();
    // Deliveries of one event are created together and sent in order: once the configured
    // endpoint has the disconnect, a delivery to the deleted one would have been sent too.
    wait_until_sync(
        Duration::from_secs(10),
        "the configured endpoint has it",
        || {
            configured.received().iter().any(|r| {
                r.status == 204 && String::from_utf8_lossy(&r.body).contains(d.id.as_str())
            }) && configured
                .received()
                .iter()
                .filter(|r| String::from_utf8_lossy(&r.body).contains(d.id.as_str()))
                .count()
                == 2
        },
    )
    .await;
    assert_eq!(
        receiver.received().len(),
        before,
        "nothing sent after the delete"
    );

    // Every call was audited, without a secret; nothing said ever carried one.
    b.flush_audit().await;
    if let Some(s) = &second {
        s.flush_audit().await;
    }
    let r = alice.request(pb::ListAuditEventsRequest {
        page_size: 1000,
        ..Default::default()
    });
    let audit = alice
        .creds
        .list_audit_events(r)
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "webhook_endpoint.create",
        "webhook_endpoint.get",
        "webhook_endpoint.list",
        "webhook_endpoint.update",
        "webhook_endpoint.rotate_secret",
        "webhook_endpoint.retire_secret",
        "webhook_endpoint.delete",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    for e in &audit {
        read.extend(e.encode_to_vec());
    }
    for secret in [&first_secret, &second_secret] {
        let key = secret.trim_start_matches("whsec_");
        assert!(!contains(&read, secret) && !contains(&read, key));
        if database_url.is_none() {
            let stored = sqlite_bytes(b.dir.path());
            assert!(
                !contains(&stored, secret) && !contains(&stored, key),
                "sealed at rest"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_endpoint_delivers_signed_with_its_generated_secret_on_sqlite() {
    an_api_endpoint_delivers_signed_with_its_generated_secret(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_endpoint_delivers_signed_with_its_generated_secret_on_postgres_two_brokers() {
    let Some(db) = pg::fresh_database("webhooks_api").await else {
        return;
    };
    an_api_endpoint_delivers_signed_with_its_generated_secret(Some(&db.url)).await;
    db.drop_database().await;
}

/// URLs the outbound policy refuses are refused when set, with the reason; only workspace
/// admins manage endpoints, and an endpoint of another workspace does not exist for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_refused_bad_urls_and_other_workspaces() {
    let fake = FakeProvider::start(rotating()).await;
    // The default outbound policy: https only, no loopback, no private ranges.
    let b = TestBroker::with_fake(&fake, None, |_| {}).await;
    let mut admin = b.client(ALICE).await.admin_of("ws1");
    for url in [
        "http://hooks.example.com/x",
        "https://10.1.2.3/hook",
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest",
        "https://user:pw@hooks.example.com/x",
    ] {
        let r = admin.request(create("ws1", url));
        let err = admin.webhooks.create_webhook_endpoint(r).await.unwrap_err();
        assert_status(&err, Code::FailedPrecondition, "OUTBOUND_REFUSED");
        assert!(err.message().starts_with("url: "), "{}", err.message());
    }
    let r = admin.request(create("ws1", "not a url"));
    let err = admin.webhooks.create_webhook_endpoint(r).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");

    let r = admin.request(create("ws1", "https://hooks.example.com/x"));
    let id = admin
        .webhooks
        .create_webhook_endpoint(r)
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
        .endpoint_id;
    let r = admin.request(pb::UpdateWebhookEndpointRequest {
        endpoint_id: id.clone(),
        url: "https://192.168.1.20/hook".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["url".into()],
        }),
        ..Default::default()
    });
    let err = admin.webhooks.update_webhook_endpoint(r).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "OUTBOUND_REFUSED");
    assert_eq!(
        get(&mut admin, &id).await.unwrap().endpoint.unwrap().url,
        "https://hooks.example.com/x",
        "unchanged"
    );

    // A member of ws1 who is not its admin is refused; an admin of ws2 is told it does not
    // exist (and may not list ws1's).
    let member_of_ws1 = |msg| {
        let mut r = crate::support::broker::as_actor(msg, "u-bob", "bob@example.com");
        r.metadata_mut()
            .insert("x-actor-workspace-id", "ws1".parse().unwrap());
        r.metadata_mut()
            .insert("x-actor-workspace-role", "member".parse().unwrap());
        r
    };
    let mut member = b.client(BOB).await;
    let r = member_of_ws1(pb::GetWebhookEndpointRequest {
        endpoint_id: id.clone(),
    });
    let err = member.webhooks.get_webhook_endpoint(r).await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "WORKSPACE_ADMIN_REQUIRED");
    let err = list(&mut member, "ws1").await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "WORKSPACE_ADMIN_REQUIRED");
    let mut other = b.client(BOB).await.admin_of("ws2");
    let err = get(&mut other, &id).await.unwrap_err();
    assert_status(&err, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
    let err = delete(&mut other, &id).await.unwrap_err();
    assert_status(&err, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
    let err = list(&mut other, "ws1").await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "WORKSPACE_ADMIN_REQUIRED");
    let r = other.request(create("ws1", "https://hooks.example.com/y"));
    let err = other.webhooks.create_webhook_endpoint(r).await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "WORKSPACE_ADMIN_REQUIRED");
}

/// An API endpoint that keeps failing is disabled like a configured one; UpdateWebhookEndpoint
/// with `enable` re-enables it, and its pending delivery then arrives (time is moved, not slept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_api_endpoint_is_re_enabled_and_catches_up() {
    let receiver = WebhookReceiver::start(false).await;
    let fake = FakeProvider::start(rotating()).await;
    let b = TestBroker::with_fake(&fake, None, |c| {
        c.outbound.allow_loopback = true;
        c.events.webhook_poll_ms = 20;
        c.events.webhook_backoff_seconds = 10;
        c.events.webhook_max_backoff_seconds = 10;
        c.events.webhook_disable_after_seconds = 60;
    })
    .await;
    let mut alice = b.client(ALICE).await;
    let mut admin = alice.admin_of("ws1");
    let r = admin.request(create("ws1", &receiver.url()));
    let created = admin
        .webhooks
        .create_webhook_endpoint(r)
        .await
        .unwrap()
        .into_inner();
    let id = created.endpoint.unwrap().endpoint_id;
    alice
        .import_fake(&fake, "acct-a", t0_secs() + 3600)
        .await
        .unwrap();
    wait_until_sync(Duration::from_secs(10), "a first refused attempt", || {
        !receiver.received().is_empty()
    })
    .await;
    // Past the disable period, the retry fails again and disables it.
    b.clock.advance(Duration::from_secs(120));
    crate::support::wait::wait_for(Duration::from_secs(10), "the endpoint disabled", || {
        let mut admin = admin.clone();
        let id = id.clone();
        async move {
            let e = get(&mut admin, &id).await.unwrap().endpoint.unwrap();
            if e.disabled { Ok(e) } else { Err(e) }
        }
    })
    .await;

    receiver.set_up(true);
    let r = admin.request(pb::UpdateWebhookEndpointRequest {
        endpoint_id: id.clone(),
        enable: true,
        ..Default::default()
    });
    let enabled = admin
        .webhooks
        .update_webhook_endpoint(r)
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert!(!enabled.disabled && enabled.failing_since_time.is_none());
    b.clock.advance(Duration::from_secs(30));
    wait_until_sync(
        Duration::from_secs(10),
        "the pending delivery arrives",
        || !delivered(&receiver, "credential.connected").is_empty(),
    )
    .await;
    assert!(verified_independently(
        &delivered(&receiver, "credential.connected"),
        &[&created.secret]
    ));
}
