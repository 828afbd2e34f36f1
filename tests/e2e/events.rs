//! Credential health and lifecycle events (issue 14): refresh failures classified by cause
//! against the real-HTTP fake provider, the event log written with each change, and
//! WatchCredentialEvents followed across broker processes and resumed by cursor.

use crate::support::broker::{
    BrokerProcess, TestBroker, assert_status, config_toml, error_details, provider_toml, t0_secs,
    with_fake_provider,
};
use crate::support::client::{ALICE, BOB, Client, rename_request};
use crate::support::fake_provider::{FakeProvider, TokenFailure, rotating};
use crate::support::pg;
use crate::support::sample;
use crate::support::wait::{wait_for, wait_until_sync};
use crate::support::webhook_receiver::{Received, WebhookReceiver, verified_independently};
use cb_proto::v1 as pb;
use std::time::Duration;
use tonic::Code;

/// The events of one credential as (type, cause, detail), oldest first.
async fn events_of(client: &mut Client, id: &str) -> Vec<(String, String, String)> {
    client
        .events_page(pb::ListCredentialEventsRequest {
            workspace_id: "ws1".into(),
            credential_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| (type_name(e.r#type), e.cause, e.detail))
        .collect()
}

/// `CREDENTIAL_EVENT_TYPE_X` → `x`.
fn type_name(t: i32) -> String {
    pb::CredentialEventType::try_from(t)
        .unwrap()
        .as_str_name()
        .trim_start_matches("CREDENTIAL_EVENT_TYPE_")
        .to_ascii_lowercase()
}

fn event(kind: &str, cause: &str, detail: &str) -> (String, String, String) {
    (kind.into(), cause.into(), detail.into())
}

fn health(c: &pb::Credential) -> pb::CredentialHealthInfo {
    c.health
        .clone()
        .expect("every credential carries its health")
}

/// An outage, a revoked grant and a rejected client, each against the real fake provider, are
/// told apart: only the revoked grant needs a reconnect; the outage never does, and its
/// recovery (clock moved past the circuit breaker's cooldown, not slept) writes `recovered`.
async fn refresh_failures_are_classified_by_cause(database_url: Option<&str>) {
    let fake = FakeProvider::start(rotating()).await;
    let b = TestBroker::with_fake(&fake, database_url, |c| {
        c.tokens.breaker_cooldown_seconds = 2;
    })
    .await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let expired = t0_secs() - 10;

    // Revoked grant: NEEDS_RECONNECT, health GRANT_REVOKED with the provider's code.
    let revoked = alice
        .import_fake(&fake, "acct-revoked", expired)
        .await
        .unwrap();
    fake.push_token_failure(TokenFailure::InvalidGrant);
    let err = alice.token(&revoked.id).await.unwrap_err();
    assert_eq!(error_details(&err).0, "CREDENTIAL_NEEDS_RECONNECT");
    let c = alice.get(&revoked.id).await.unwrap();
    assert_eq!(c.status, pb::CredentialStatus::NeedsReconnect as i32);
    let h = health(&c);
    assert_eq!(h.health, pb::CredentialHealth::GrantRevoked as i32);
    assert_eq!(h.last_error_code, "invalid_grant");
    assert_eq!(h.failure_count, 1);
    assert!(h.cause.contains("invalid_grant"), "{}", h.cause);
    assert_eq!(h.since_time.map(|t| t.seconds), Some(t0_secs()));

    // Rejected client: the app is at fault, not the grant: stays ACTIVE, its own reason.
    let misconfigured = alice
        .import_fake(&fake, "acct-client", expired)
        .await
        .unwrap();
    fake.push_token_failure(TokenFailure::InvalidClient);
    let err = alice.token(&misconfigured.id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_details(&err).0, "PROVIDER_CLIENT_REJECTED");
    let c = alice.get(&misconfigured.id).await.unwrap();
    assert_eq!(c.status, pb::CredentialStatus::Active as i32);
    let h = health(&c);
    assert_eq!(h.health, pb::CredentialHealth::ClientMisconfigured as i32);
    assert_eq!(h.last_error_code, "invalid_client");
    // The operator fixed the client (the injected failure was one-shot): the grant was kept.
    alice.token(&misconfigured.id).await.unwrap();
    let h = health(&alice.get(&misconfigured.id).await.unwrap());
    assert_eq!(h.health, pb::CredentialHealth::Healthy as i32);

    // Provider outage: UNAVAILABLE, still ACTIVE, health PROVIDER_OUTAGE — never a reconnect.
    let outage = alice
        .import_fake(&fake, "acct-outage", expired)
        .await
        .unwrap();
    fake.configure(|f| f.token_failure = Some(TokenFailure::ServerError));
    for attempt in 0..3 {
        let err = alice.token(&outage.id).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "attempt {attempt}");
        assert_eq!(error_details(&err).0, "PROVIDER_UNAVAILABLE");
        let c = alice.get(&outage.id).await.unwrap();
        assert_eq!(
            c.status,
            pb::CredentialStatus::Active as i32,
            "an outage never becomes NEEDS_RECONNECT"
        );
        let h = health(&c);
        assert_eq!(h.health, pb::CredentialHealth::ProviderOutage as i32);
        assert_eq!(h.failure_count, attempt + 1);
        assert_eq!(h.since_time.map(|t| t.seconds), Some(t0_secs()));
        assert!(
            ["temporarily_unavailable", "rate_limited"].contains(&h.last_error_code.as_str()),
            "{}",
            h.last_error_code
        );
    }
    // The health filter finds exactly the credentials in each state.
    let by_health = |health: pb::CredentialHealth| pb::ListCredentialsRequest {
        workspace_id: "ws1".into(),
        include_disconnected: true,
        health: health as i32,
        ..Default::default()
    };
    let ids = |page: pb::ListCredentialsResponse| -> Vec<String> {
        page.credentials
            .into_iter()
            .map(|c| c.credential_id)
            .collect()
    };
    let page = alice
        .list_page(by_health(pb::CredentialHealth::ProviderOutage))
        .await
        .unwrap();
    assert_eq!(ids(page), vec![outage.id.clone()]);
    let page = alice
        .list_page(by_health(pb::CredentialHealth::GrantRevoked))
        .await
        .unwrap();
    assert_eq!(ids(page), vec![revoked.id.clone()]);

    // The provider is back; past the breaker's cooldown the next refresh recovers.
    fake.configure(|f| f.token_failure = None);
    b.clock.advance(Duration::from_secs(3));
    alice.token(&outage.id).await.unwrap();
    let c = alice.get(&outage.id).await.unwrap();
    assert_eq!(c.status, pb::CredentialStatus::Active as i32);
    let h = health(&c);
    assert_eq!(h.health, pb::CredentialHealth::Healthy as i32);
    assert_eq!((h.failure_count, h.last_error_code.as_str()), (0, ""));

    // Each story is in the event log, in order; a long outage is one refresh_failed, not one
    // per retry.
    let outage_events = events_of(&mut alice, &outage.id).await;
    assert_eq!(outage_events.len(), 3, "{outage_events:?}");
    assert_eq!(outage_events[0], event("connected", "imported", ""));
    assert_eq!(
        (outage_events[1].0.as_str(), outage_events[1].1.as_str()),
        ("refresh_failed", "provider_outage")
    );
    assert_eq!(outage_events[2], event("recovered", "provider_outage", ""));
    let revoked_events = events_of(&mut alice, &revoked.id).await;
    assert_eq!(revoked_events.len(), 3, "{revoked_events:?}");
    assert_eq!(
        revoked_events[1],
        event("refresh_failed", "grant_revoked", "invalid_grant")
    );
    assert_eq!(revoked_events[2].0, "needs_reconnect");
    assert_eq!(
        events_of(&mut alice, &misconfigured.id).await[1..],
        [
            event("refresh_failed", "client_misconfigured", "invalid_client"),
            event("recovered", "client_misconfigured", ""),
        ]
    );
}

#[tokio::test]
async fn refresh_failures_are_classified_by_cause_on_sqlite() {
    refresh_failures_are_classified_by_cause(None).await;
}

#[tokio::test]
async fn refresh_failures_are_classified_by_cause_on_postgres() {
    let Some(db) = pg::fresh_database("events_classified").await else {
        return;
    };
    refresh_failures_are_classified_by_cause(Some(&db.url)).await;
    db.drop_database().await;
}

/// Every change writes its event with the actor; a user who is not a workspace admin sees only
/// the events of credentials they are a member of; a user must name the workspace.
#[tokio::test]
async fn events_record_each_change_and_are_visible_to_members_only() {
    let fake = FakeProvider::start(rotating()).await;
    let b = TestBroker::with_fake(&fake, None, |_| {}).await;
    let mut alice = b.client(ALICE).await;
    let mut bob = b.client(BOB).await;
    let shared = alice
        .import_fake(&fake, "acct-shared", t0_secs() + 3600)
        .await
        .unwrap();
    let private = alice
        .import_fake(&fake, "acct-private", t0_secs() + 3600)
        .await
        .unwrap();
    assert!(bob.events().await.unwrap().is_empty(), "not a member yet");

    alice
        .add_member(&shared.id, BOB.email, pb::MemberRole::Member)
        .await
        .unwrap();
    bob.accept_invitation(&shared.id).await.unwrap();
    alice
        .update(rename_request(&shared.id, "Renamed"))
        .await
        .unwrap();
    alice.remove_member(&shared.id, BOB.email).await.unwrap();
    alice.disconnect(&private.id).await.unwrap();

    let all = alice.admin_of("ws1").events().await.unwrap();
    let story: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.credential_id.as_str(),
                type_name(e.r#type),
                e.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        story,
        [
            (shared.id.as_str(), "connected".to_owned(), ALICE.id),
            (private.id.as_str(), "connected".to_owned(), ALICE.id),
            (shared.id.as_str(), "member_invited".to_owned(), ALICE.id),
            (shared.id.as_str(), "member_joined".to_owned(), BOB.id),
            (shared.id.as_str(), "updated".to_owned(), ALICE.id),
            (shared.id.as_str(), "member_removed".to_owned(), ALICE.id),
            (private.id.as_str(), "disconnected".to_owned(), ALICE.id),
        ]
    );
    let cursors: Vec<i64> = all.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let ids: std::collections::BTreeSet<_> = all.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), all.len(), "event ids are unique");
    assert!(
        all[2].detail.contains("bob@example.com"),
        "{}",
        all[2].detail
    );

    // Bob was removed: he sees nothing any more. Alice (member of both, not a workspace admin)
    // sees every event of her two credentials.
    assert!(bob.events().await.unwrap().is_empty());
    assert_eq!(alice.events().await.unwrap().len(), all.len());

    // Paging: one event per page walks the same log.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    for _ in 0..=all.len() {
        let page = alice
            .events_page(pb::ListCredentialEventsRequest {
                workspace_id: "ws1".into(),
                page_size: 1,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap();
        paged.extend(page.events);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, all);

    let err = alice
        .events_page(pb::ListCredentialEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_details(&err).1, vec!["workspace_id".to_owned()]);
}

/// The next event (not heartbeat) of a watch, within a deadline.
async fn next_event(
    stream: &mut tonic::Streaming<pb::WatchCredentialEventsResponse>,
    within: Duration,
) -> pb::CredentialEvent {
    next_event_by(stream, tokio::time::Instant::now() + within).await
}

/// The next event (not heartbeat) of a watch, before `deadline`.
async fn next_event_by(
    stream: &mut tonic::Streaming<pb::WatchCredentialEventsResponse>,
    deadline: tokio::time::Instant,
) -> pb::CredentialEvent {
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event before the deadline"))
            .unwrap()
            .expect("the stream stays open");
        if let Some(pb::watch_credential_events_response::Message::Event(e)) = message.message {
            return e;
        }
    }
}

/// A watch on broker process B sees a disconnect done on process A within 1 s of the write
/// (PostgreSQL LISTEN/NOTIFY wakes it: the poll fallback is set to a minute, so only the
/// notification can deliver it within the deadline, which runs from before the write's call). Killed mid-way and resumed from its last cursor, it misses nothing and
/// repeats nothing; an idle watch sends heartbeats carrying its cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_one_replica_follows_another_and_resumes_from_its_cursor() {
    let Some(db) = pg::fresh_database("events_watch").await else {
        return;
    };
    let fake = FakeProvider::start(rotating()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestBroker::config(&dir, db.url.clone());
    config.tokens.refresh_scan_interval_seconds = 0;
    with_fake_provider(&mut config, &fake, "fake", &[]);
    let toml = config_toml(&config, &db.url)
        + &provider_toml(&fake)
        + "[events]\nwatch_poll_ms = 60000\nheartbeat_seconds = 1\n";
    let a = BrokerProcess::spawn(dir.path(), "replica-a", &toml).await;
    let b = BrokerProcess::spawn(dir.path(), "replica-b", &toml).await;
    let mut on_a = a.client(ALICE).await;
    let mut on_b = b.client(ALICE).await.admin_of("ws1");
    let expires = t0_secs() + 3600;

    let first = on_a.import_fake(&fake, "acct-1", expires).await.unwrap();
    let mut watch = on_b
        .watch(pb::WatchCredentialEventsRequest {
            workspace_id: "ws1".into(),
            start_at_end: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let written = tokio::time::Instant::now();
    on_a.disconnect(&first.id).await.unwrap();
    let seen = next_event_by(&mut watch, written + Duration::from_secs(1)).await;
    assert_eq!(
        (seen.credential_id.as_str(), type_name(seen.r#type)),
        (first.id.as_str(), "disconnected".to_owned()),
        "the watch starts at the end: the earlier connect is not replayed"
    );

    // Kill the stream; changes keep happening on A meanwhile.
    let mut last = seen.cursor;
    let written = tokio::time::Instant::now();
    let second = on_a.import_fake(&fake, "acct-2", expires).await.unwrap();
    let next = next_event_by(&mut watch, written + Duration::from_secs(1)).await;
    assert_eq!(type_name(next.r#type), "connected");
    last = last.max(next.cursor);
    drop(watch);
    let third = on_a.import_fake(&fake, "acct-3", expires).await.unwrap();
    on_a.disconnect(&second.id).await.unwrap();
    on_a.disconnect(&third.id).await.unwrap();

    // Resume after the last cursor received: exactly the log's events after it.
    let log = on_a.admin_of("ws1").events().await.unwrap();
    let expected: Vec<_> = log.iter().filter(|e| e.cursor > last).cloned().collect();
    assert_eq!(expected.len(), 3, "{expected:?}");
    let mut resumed = on_b
        .watch(pb::WatchCredentialEventsRequest {
            workspace_id: "ws1".into(),
            after_cursor: last,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(next_event(&mut resumed, Duration::from_secs(5)).await);
    }
    assert_eq!(got, expected, "no gap, no duplicate, same order");

    // Idle: a heartbeat with the cursor reached.
    let beat = tokio::time::timeout(Duration::from_secs(10), resumed.message())
        .await
        .expect("a heartbeat on an idle stream")
        .unwrap()
        .unwrap();
    match beat.message {
        Some(pb::watch_credential_events_response::Message::Heartbeat(h)) => {
            assert_eq!(h.cursor, expected.last().unwrap().cursor);
        }
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    drop((a, b));
    db.drop_database().await;
}

const SECRET_NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_OLD: &str = "whsec_c2VjcmV0LWJlZm9yZS10aGUtcm90YXRpb24tMTIzNDU2";

fn endpoint(
    id: &str,
    receiver: &WebhookReceiver,
    secrets: &[&str],
) -> credential_broker::runtime::config::WebhookSettings {
    credential_broker::runtime::config::WebhookSettings {
        id: id.into(),
        workspace_id: "ws1".into(),
        url: receiver.url(),
        secrets: secrets
            .iter()
            .map(|s| credential_broker::runtime::config::SecretValue::new((*s).to_owned()))
            .collect(),
        event_types: Vec::new(),
    }
}

/// Moves every broker's injected clock (tests move time, they never sleep).
fn advance(brokers: &[&TestBroker], d: Duration) {
    for b in brokers {
        b.clock.advance(d);
    }
}

/// Webhooks: an endpoint down for 5 minutes of injected time, then up, receives every event,
/// in order per credential, signed under both secrets of a rotation (checked by an independent
/// verifier); retries carry the same `webhook-id`; an endpoint that never answers is disabled
/// after the configured period. `second` is another broker on the same database (PostgreSQL):
/// both dispatch, none sends a delivery twice concurrently.
async fn webhooks_are_delivered_signed_in_order_despite_an_outage(database_url: Option<&str>) {
    let receiver = WebhookReceiver::start(true).await;
    let dead = WebhookReceiver::start(false).await;
    let filtered = WebhookReceiver::start(true).await;
    let fake = FakeProvider::start(rotating()).await;
    let tune = |c: &mut credential_broker::runtime::config::Config| {
        c.outbound.allow_loopback = true;
        c.events.webhook_poll_ms = 20;
        c.events.webhook_backoff_seconds = 10;
        c.events.webhook_max_backoff_seconds = 60;
        c.events.webhook_disable_after_seconds = 400;
        c.webhooks = vec![
            endpoint("main", &receiver, &[SECRET_NEW, SECRET_OLD]),
            endpoint("dead", &dead, &[SECRET_NEW]),
            credential_broker::runtime::config::WebhookSettings {
                event_types: vec!["disconnected".into(), "webhook_endpoint_disabled".into()],
                ..endpoint("filtered", &filtered, &[SECRET_NEW])
            },
        ];
    };
    let b = TestBroker::with_fake(&fake, database_url, tune).await;
    let second = match database_url {
        Some(url) => Some(TestBroker::with_fake(&fake, Some(url), tune).await),
        None => None,
    };
    let brokers: Vec<&TestBroker> = std::iter::once(&b).chain(second.as_ref()).collect();
    let mut alice = b.client(ALICE).await;
    let expires = t0_secs() + 3600;
    let delivered = |receiver: &WebhookReceiver| -> Vec<Received> {
        receiver
            .received()
            .into_iter()
            .filter(|r| r.status == 204)
            .collect()
    };

    let a = alice.import_fake(&fake, "acct-a", expires).await.unwrap();
    wait_until_sync(Duration::from_secs(10), "the first event delivered", || {
        delivered(&receiver).len() == 1
    })
    .await;

    // Down: four more changes on two credentials.
    receiver.set_up(false);
    alice
        .update(rename_request(&a.id, "A renamed"))
        .await
        .unwrap();
    let c2 = alice.import_fake(&fake, "acct-b", expires).await.unwrap();
    alice.disconnect(&a.id).await.unwrap();
    alice
        .update(rename_request(&c2.id, "B renamed"))
        .await
        .unwrap();
    wait_until_sync(Duration::from_secs(10), "first attempts refused", || {
        receiver
            .received()
            .iter()
            .filter(|r| r.status == 503)
            .count()
            >= 2
    })
    .await;
    // Retries come with time: one minute, then the rest of five minutes, still down.
    advance(&brokers, Duration::from_secs(60));
    let head = receiver.received()[1].id.clone();
    wait_until_sync(
        Duration::from_secs(10),
        "a retry of the same delivery",
        || receiver.received().iter().filter(|r| r.id == head).count() >= 2,
    )
    .await;
    advance(&brokers, Duration::from_secs(240));
    wait_until_sync(Duration::from_secs(10), "another retry", || {
        receiver.received().iter().filter(|r| r.id == head).count() >= 3
    })
    .await;

    // Up again: past the longest backoff everything arrives.
    receiver.set_up(true);
    advance(&brokers, Duration::from_secs(120));
    // The credentials' events (the dead endpoint's disabling, a workspace event, may come).
    let log: Vec<_> = alice
        .admin_of("ws1")
        .events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.credential_id.is_empty())
        .collect();
    assert_eq!(log.len(), 5, "{log:?}");
    wait_until_sync(Duration::from_secs(20), "every event delivered", || {
        let got = delivered(&receiver);
        log.iter().all(|e| got.iter().any(|r| r.id == e.event_id))
    })
    .await;
    let got = delivered(&receiver);
    // At least once: the injected clock jumps past the delivery lease, so a send in flight at
    // that moment may be claimed and sent again by the other broker — with the same webhook-id,
    // possibly after the credential's next event (the first send finished and released it).
    // A receiver keeps the first of each webhook-id: those are every logged event, in order per
    // credential.
    let mut ids: Vec<&str> = Vec::new();
    for r in &got {
        if !ids.contains(&r.id.as_str()) {
            ids.push(r.id.as_str());
        }
    }
    for credential in [&a.id, &c2.id] {
        let in_log: Vec<&str> = log
            .iter()
            .filter(|e| &e.credential_id == credential)
            .map(|e| e.event_id.as_str())
            .collect();
        let in_order: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| in_log.contains(id))
            .collect();
        assert_eq!(in_order, in_log, "ordered per credential");
    }
    // Retries carry the webhook-id of their event; payloads name the event.
    let all: Vec<Received> = receiver
        .received()
        .into_iter()
        .filter(|r| log.iter().any(|e| e.event_id == r.id))
        .collect();
    for r in got.iter().filter(|r| all.iter().any(|a| a.id == r.id)) {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let e = log.iter().find(|e| e.event_id == r.id).unwrap();
        assert_eq!(body["data"]["event_id"], r.id.as_str());
        assert_eq!(body["data"]["credential_id"], e.credential_id.as_str());
        assert_eq!(body["type"], format!("credential.{}", type_name(e.r#type)));
        assert!(!String::from_utf8_lossy(&r.body).contains("whsec_"));
    }
    // Every request, refused or accepted, verifies under each secret of the rotation, and
    // fails under a secret the endpoint does not have.
    assert!(verified_independently(&all, &[SECRET_NEW]));
    assert!(verified_independently(&all, &[SECRET_OLD]));
    assert!(!verified_independently(
        &all,
        &["whsec_b3RoZXItc2VjcmV0LXRoYXQtbm9ib2R5LWhhcw=="]
    ));

    // The endpoint that never answered: failing for longer than 400 s, it is disabled.
    let store = cb_store::open(b.config.database.url.expose(), 2)
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the dead endpoint disabled",
        || {
            let store = store.clone();
            async move {
                match store.webhook_endpoint("dead").await.unwrap() {
                    Some(e) if e.disabled_at.is_some() => Ok(()),
                    other => Err(other),
                }
            }
        },
    )
    .await;
    assert_eq!(
        store
            .webhook_endpoint("main")
            .await
            .unwrap()
            .map(|e| e.disabled_at),
        Some(None),
        "failing for 5 minutes, below the limit"
    );

    // Its disabling is a workspace event (no credential), written with it: workspace admins
    // read it (also by type), a member of every credential who is no admin does not, and the
    // endpoint still enabled receives it, signed, typed `workspace.…`.
    let disabled_type = pb::CredentialEventType::WebhookEndpointDisabled as i32;
    let workspace_events: Vec<_> = alice
        .admin_of("ws1")
        .events_page(pb::ListCredentialEventsRequest {
            workspace_id: "ws1".into(),
            types: vec![disabled_type],
            ..Default::default()
        })
        .await
        .unwrap()
        .events;
    assert_eq!(workspace_events.len(), 1, "{workspace_events:?}");
    let off = &workspace_events[0];
    assert_eq!(
        (
            off.credential_id.as_str(),
            off.detail.as_str(),
            off.actor.as_str()
        ),
        ("", "endpoint=dead", "")
    );
    assert!(
        alice
            .events()
            .await
            .unwrap()
            .iter()
            .all(|e| e.r#type != disabled_type),
        "members of credentials do not see workspace events"
    );
    wait_until_sync(Duration::from_secs(10), "the disabling delivered", || {
        delivered(&receiver).iter().any(|r| r.id == off.event_id)
    })
    .await;
    let notice: Vec<Received> = delivered(&receiver)
        .into_iter()
        .filter(|r| r.id == off.event_id)
        .collect();
    let body: serde_json::Value = serde_json::from_slice(&notice[0].body).unwrap();
    assert_eq!(body["type"], "workspace.webhook_endpoint_disabled");
    assert_eq!(body["data"]["credential_id"], serde_json::Value::Null);
    assert!(verified_independently(&notice, &[SECRET_OLD]));
    assert!(dead.received().iter().all(|r| r.id != off.event_id));
    // The endpoint with an event-type filter received only those types, in order.
    wait_until_sync(
        Duration::from_secs(10),
        "the filtered endpoint served",
        || delivered(&filtered).iter().any(|r| r.id == off.event_id),
    )
    .await;
    let disconnected = log
        .iter()
        .find(|e| type_name(e.r#type) == "disconnected")
        .unwrap();
    // (At least once: a clock jump past a claim's lease mid-send may repeat a delivery, with
    // the same webhook-id.)
    let mut only: Vec<String> = delivered(&filtered).into_iter().map(|r| r.id).collect();
    only.dedup();
    assert_eq!(only, [disconnected.event_id.clone(), off.event_id.clone()]);
    // Counted once across the replicas; deliveries counted by outcome.
    let counted = |series: &str| -> f64 {
        brokers
            .iter()
            .map(|b| sample(&b.app().metrics_text(), series).unwrap_or(0.0))
            .sum()
    };
    assert_eq!(
        counted("credential_broker_webhook_endpoints_disabled_total"),
        1.0
    );
    assert!(
        counted("credential_broker_webhook_deliveries_total{outcome=\"delivered\"}")
            >= (log.len() + 1) as f64
    );
    assert!(counted("credential_broker_webhook_deliveries_total{outcome=\"rejected\"}") >= 2.0);

    let log_rows = store.list_webhook_deliveries("main", 100, 0).await.unwrap();
    assert_eq!(
        log_rows.len(),
        log.len() + 1,
        "one delivery log row per event"
    );
    assert!(log_rows.iter().all(|d| d.state == "DELIVERED"));
    assert!(log_rows.iter().any(|d| d.attempts >= 3));

    // The same log through ListWebhookDeliveries, page by page, for an admin of ws1: attempts,
    // last status, the workspace event's empty credential; the dead endpoint shows disabled.
    let admin = alice.admin_of("ws1");
    let deliveries = |endpoint: &str, page_token: String| pb::ListWebhookDeliveriesRequest {
        endpoint_id: endpoint.into(),
        page_size: 2,
        page_token,
    };
    let mut paged = Vec::new();
    let mut page_token = String::new();
    for _ in 0..=log_rows.len() {
        let page = admin
            .creds
            .clone()
            .list_webhook_deliveries(admin.request(deliveries("main", page_token)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((page.workspace_id.as_str(), page.disabled), ("ws1", false));
        paged.extend(page.deliveries);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    let paged_ids: Vec<i64> = paged.iter().map(|d| d.delivery_id).collect();
    let stored_ids: Vec<i64> = log_rows.iter().map(|d| d.id).collect();
    assert_eq!(paged_ids, stored_ids);
    assert!(
        paged
            .iter()
            .all(|d| d.delivered && d.last_http_status == 204)
    );
    assert!(
        paged
            .iter()
            .all(|d| d.deliver_time.is_some() && d.last_error.is_empty())
    );
    assert!(paged.iter().any(|d| d.attempts >= 3));
    assert!(
        paged.iter().any(|d| d.credential_id.is_empty()),
        "the workspace event"
    );
    let dead_log = admin
        .creds
        .clone()
        .list_webhook_deliveries(admin.request(deliveries("dead", String::new())))
        .await
        .unwrap()
        .into_inner();
    assert!(dead_log.disabled);
    let first = &dead_log.deliveries[0];
    assert_eq!((first.delivered, first.last_http_status), (false, 503));
    assert_eq!(first.last_error, "HTTP 503");
    // A member of ws1 who is not its admin is refused; another workspace's admin, or an
    // unknown endpoint, finds nothing.
    let mut member = alice.request(deliveries("main", String::new()));
    for (key, value) in [
        ("x-actor-workspace-id", "ws1"),
        ("x-actor-workspace-role", "member"),
    ] {
        member.metadata_mut().insert(key, value.parse().unwrap());
    }
    let refused = alice.creds.clone().list_webhook_deliveries(member).await;
    assert_status(
        &refused.unwrap_err(),
        Code::PermissionDenied,
        "WORKSPACE_ADMIN_REQUIRED",
    );
    let other = alice.admin_of("ws2");
    for endpoint in ["main", "nope"] {
        let hidden = other
            .creds
            .clone()
            .list_webhook_deliveries(other.request(deliveries(endpoint, String::new())))
            .await;
        assert_status(
            &hidden.unwrap_err(),
            Code::NotFound,
            "WEBHOOK_ENDPOINT_NOT_FOUND",
        );
    }

    // Operators read the log and the endpoint's state with `credential-broker webhooks`.
    let mut out = Vec::new();
    credential_broker::cli::ops::webhook_deliveries_command(
        &b.config,
        "dead",
        100,
        credential_broker::cli::ops::Format::Json,
        &mut out,
    )
    .await
    .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(shown["disabled"], true);
    assert_eq!(shown["deliveries"][0]["last_status"], 503);
    assert_eq!(shown["deliveries"][0]["last_error"], "HTTP 503");
    assert!(!String::from_utf8_lossy(&out).contains("whsec_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_delivered_signed_in_order_despite_an_outage_on_sqlite() {
    webhooks_are_delivered_signed_in_order_despite_an_outage(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_delivered_signed_in_order_despite_an_outage_on_postgres_two_brokers() {
    let Some(db) = pg::fresh_database("events_webhooks").await else {
        return;
    };
    webhooks_are_delivered_signed_in_order_despite_an_outage(Some(&db.url)).await;
    db.drop_database().await;
}

const DAY: Duration = Duration::from_secs(86_400);

/// A dormant grant whose refresh token dies after 90 idle days (catalog rule) is refreshed by
/// refresh-ahead before day 90, though its access token needs nothing for a year. Clock moved.
#[tokio::test]
async fn a_dormant_grant_with_a_90_day_idle_expiry_is_refreshed_before_day_90() {
    let fake = FakeProvider::start(rotating()).await;
    let b = TestBroker::with_fake(&fake, None, |c| {
        for p in c.custom_providers.iter_mut().filter(|p| p.id == "fake") {
            p.refresh.refresh_token_idle_seconds = Some(90 * 86_400);
        }
    })
    .await;
    let mut alice = b.client(ALICE).await;
    let dormant = alice
        .import_fake(&fake, "acct-dormant", t0_secs() + 365 * 86_400)
        .await
        .unwrap();
    b.clock.advance(DAY * 80);
    assert_eq!(b.refresh_due().await, 0, "not due on day 80");
    assert_eq!(fake.refresh_calls(), 0);
    b.clock.advance(DAY * 5);
    assert_eq!(b.refresh_due().await, 1, "due before day 90");
    assert_eq!(fake.refresh_calls(), 1);
    let c = alice.get(&dormant.id).await.unwrap();
    assert_eq!(
        c.last_refresh_time.map(|t| t.seconds),
        Some(t0_secs() + 85 * 86_400)
    );
    assert!(!fake.is_current_refresh_token(&dormant.refresh), "rotated");
    assert_eq!(health(&c).health, pb::CredentialHealth::Healthy as i32);
}

/// A grant with an absolute end is marked EXPIRING with one `expiring` event when it is within
/// the warning period (default 7 days); a refresh does not clear the warning (it does not move
/// the end). Clock moved, not slept.
#[tokio::test]
async fn a_grant_ending_within_the_warning_period_raises_one_expiring_event() {
    let fake = FakeProvider::start(rotating()).await;
    let b = TestBroker::with_fake(&fake, None, |_| {}).await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let (mut req, _, _) =
        crate::support::broker::fake_grant_import(&fake, "acct-end", t0_secs() + 3600);
    let ends_at = t0_secs() + 30 * 86_400;
    req.tokens.as_mut().unwrap().refresh_token_expire_time = Some(prost_types::Timestamp {
        seconds: ends_at,
        nanos: 0,
    });
    let id = alice.import(req).await.unwrap().credential_id;
    assert_eq!(b.warn_expiring().await, 0, "30 days left");
    b.clock.advance(DAY * 22);
    assert_eq!(b.warn_expiring().await, 0, "8 days left");
    b.clock.advance(DAY * 2);
    // The broker's own hourly scan (first run at start-up, on the same clock) may get there first
    // on a loaded machine: one of the two raises the warning, and only one.
    assert!(b.warn_expiring().await <= 1, "6 days left");
    assert_eq!(b.warn_expiring().await, 0, "warned once");
    let h = health(&alice.get(&id).await.unwrap());
    assert_eq!(h.health, pb::CredentialHealth::Expiring as i32);
    assert!(h.cause.contains("reconnect"), "{}", h.cause);
    let expiring = events_of(&mut alice, &id).await;
    let warning = event(
        "expiring",
        "expiring",
        &format!("ends_at={}", ends_at * 1000),
    );
    assert_eq!(expiring.last().unwrap(), &warning);
    assert_eq!(expiring.iter().filter(|e| **e == warning).count(), 1);

    // The access token expired long ago: a refresh succeeds, the warning stands.
    alice.token(&id).await.unwrap();
    let h = health(&alice.get(&id).await.unwrap());
    assert_eq!(h.health, pb::CredentialHealth::Expiring as i32);
    assert_eq!(
        events_of(&mut alice, &id).await,
        expiring,
        "no recovered event"
    );
    let page = alice
        .list_page(pb::ListCredentialsRequest {
            workspace_id: "ws1".into(),
            health: pb::CredentialHealth::Expiring as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.credentials.len(), 1);
}

/// A provider whose grants end a fixed time after consent (catalog
/// `refresh_token_absolute_seconds`, e.g. Spotify, Atlassian) and which says nothing of it in
/// its token responses: the catalog's rule stands in, refreshes do not move it, and the grant is
/// warned about a week before it ends.
#[tokio::test]
async fn the_catalogs_absolute_lifetime_raises_the_expiring_warning() {
    let fake = FakeProvider::start(rotating()).await;
    let b = TestBroker::with_fake(&fake, None, |c| {
        for p in c.custom_providers.iter_mut().filter(|p| p.id == "fake") {
            p.refresh.refresh_token_absolute_seconds = Some(30 * 86_400);
        }
    })
    .await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let id = alice
        .import_fake(&fake, "acct-absolute", t0_secs() + 3600)
        .await
        .unwrap()
        .id;
    b.clock.advance(DAY * 10);
    alice.token(&id).await.unwrap(); // a refresh on day 10
    assert_eq!(fake.refresh_calls(), 1);
    b.clock.advance(DAY * 12);
    assert_eq!(b.warn_expiring().await, 0, "8 days left");
    b.clock.advance(DAY * 2);
    assert_eq!(
        b.warn_expiring().await,
        1,
        "6 days left, counted from the import"
    );
    let events = events_of(&mut alice, &id).await;
    assert_eq!(
        events.last().unwrap(),
        &event(
            "expiring",
            "expiring",
            &format!("ends_at={}", (t0_secs() + 30 * 86_400) * 1000)
        )
    );
}

/// A stopping broker closes its watch streams cleanly (the client then resumes elsewhere by
/// cursor) instead of holding the shutdown until its grace period runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_ends_its_watches_cleanly() {
    let fake = FakeProvider::start(rotating()).await;
    let mut b = TestBroker::with_fake(&fake, None, |_| {}).await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let mut watch = alice
        .watch(pb::WatchCredentialEventsRequest {
            workspace_id: "ws1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    alice
        .import_fake(&fake, "acct-1", t0_secs() + 3600)
        .await
        .unwrap();
    next_event(&mut watch, Duration::from_secs(5)).await;
    b.stop_with_grace(Duration::from_secs(60)).await;
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the stream ended");
    assert!(matches!(end, Ok(None)), "a clean end of stream: {end:?}");
}
