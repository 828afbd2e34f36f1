//! Load you cannot be knocked over by: limits that act before authentication (connection cap,
//! handshake and idle timeouts, global concurrency with load shedding), and denied calls that
//! cost no database write each.

use crate::access_control::{EXECUTOR_TOKEN, OPERATOR_TOKEN, broker_with_callers};
use crate::support::broker::{
    TestBroker, as_actor, error_details, fake_grant_import, with_fake_provider,
};
use crate::support::client::{Answered, audit_count, audit_events};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use cb_proto::v1 as pb;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A broker whose `limits` are changed by `f`.
async fn broker_with_limits(
    f: impl FnOnce(&mut credential_broker::runtime::config::LimitsConfig),
) -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    f(&mut config.limits);
    TestBroker::start(config, dir).await.unwrap()
}

/// Reads until the server closes the connection; fails the test if it is still open after 15 s.
async fn closed_by_server(mut conn: TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => panic!("{what}: the broker kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {} // SETTINGS, pings: keep reading
        }
    }
}

async fn serving(b: &TestBroker) {
    let r = HealthClient::new(b.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, 1, "SERVING");
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_after_the_handshake_timeout() {
    let b = broker_with_limits(|l| l.handshake_timeout_seconds = 1).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(b.addr()).await.unwrap());
    }
    // A slow-loris client that sends part of the preface is closed too.
    let mut partial = TcpStream::connect(b.addr()).await.unwrap();
    partial.write_all(&H2_PREFACE[..10]).await.unwrap();
    silent.push(partial);
    for (i, conn) in silent.into_iter().enumerate() {
        closed_by_server(conn, &format!("silent connection {i}")).await;
    }
    serving(&b).await;
}

#[tokio::test]
async fn connections_without_calls_are_closed_after_the_idle_timeout() {
    let b = broker_with_limits(|l| {
        l.idle_timeout_seconds = 1;
        l.keepalive_interval_seconds = 600;
    })
    .await;
    let mut conn = TcpStream::connect(b.addr()).await.unwrap();
    conn.write_all(H2_PREFACE).await.unwrap();
    closed_by_server(conn, "idle HTTP/2 connection").await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let b = broker_with_limits(|l| {
        l.max_connections = 3;
        l.handshake_timeout_seconds = 60;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(b.addr()).await.unwrap();
        c.write_all(H2_PREFACE).await.unwrap();
        held.push(c);
    }
    // The listener accepts in order: the fourth finds no permit and is closed.
    let extra = TcpStream::connect(b.addr()).await.unwrap();
    closed_by_server(extra, "fourth connection").await;
    drop(held);
    // Closed connections give their permits back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ok = match tonic::transport::Channel::from_shared(format!("http://{}", b.addr()))
            .unwrap()
            .connect()
            .await
        {
            Ok(ch) => HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "permits were not given back"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn calls_beyond_the_global_limit_are_shed_while_probes_still_answer() {
    let fake = FakeProvider::start(FakeConfig {
        token_delay: Duration::from_secs(3),
        ..FakeConfig::default()
    })
    .await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    config.limits.max_concurrent_calls = 2;
    with_fake_provider(&mut config, &fake, "fake", &[]);
    let b = TestBroker::start(config, dir).await.unwrap();
    let mut c = b.credentials().await;
    // Two credentials whose tokens expired: each GetAccessToken waits on the slow provider.
    let mut ids = Vec::new();
    for n in 0..2 {
        let (req, _, _) = fake_grant_import(&fake, &format!("slow-{n}"), 1);
        let imported = c
            .import_credential(as_actor(req, "u-alice", "alice@example.com"))
            .await
            .unwrap()
            .into_inner();
        ids.push(imported.credential.unwrap().credential_id);
    }
    let mut slow = Vec::new();
    for id in ids {
        let mut c = b.credentials().await;
        slow.push(tokio::spawn(async move {
            c.get_access_token(as_actor(
                pb::GetAccessTokenRequest {
                    credential_id: id,
                    ..Default::default()
                },
                "u-alice",
                "alice@example.com",
            ))
            .await
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.token_calls() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow calls never reached the provider"
        );
        tokio::task::yield_now().await;
    }
    let shed = c
        .list_providers(as_actor(
            pb::ListProvidersRequest::default(),
            "u-alice",
            "alice@example.com",
        ))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), tonic::Code::Unavailable, "{shed:?}");
    assert_eq!(error_details(&shed).0, "SERVER_OVERLOADED");
    serving(&b).await;
    for call in slow {
        call.await.unwrap().unwrap();
    }
    // The permits came back.
    c.list_providers(as_actor(
        pb::ListProvidersRequest::default(),
        "u-alice",
        "alice@example.com",
    ))
    .await
    .unwrap();
}

fn bearer<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test]
async fn ten_thousand_unauthenticated_calls_cost_few_writes_and_executors_keep_working() {
    const FLOOD: usize = 10_000;
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker_with_callers(&fake).await;
    let mut operator = b.credentials().await;
    let (mut req, _, _) = fake_grant_import(&fake, "flooded", 4_000_000_000);
    req.admin_email = "alice@example.com".into();
    let id = operator
        .import_credential(bearer(req, Some(OPERATOR_TOKEN)))
        .await
        .credential()
        .credential_id;

    let executor_ok = Arc::new(AtomicUsize::new(0));
    let executor_failed = Arc::new(AtomicUsize::new(0));
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let executor = {
        let (ok, failed, flooding) = (
            executor_ok.clone(),
            executor_failed.clone(),
            flooding.clone(),
        );
        let (mut c, id) = (b.credentials().await, id.clone());
        tokio::spawn(async move {
            while flooding.load(Ordering::Relaxed) {
                let mut r = as_actor(
                    pb::GetAccessTokenRequest {
                        credential_id: id.clone(),
                        ..Default::default()
                    },
                    "u-alice",
                    "alice@example.com",
                );
                r.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {EXECUTOR_TOKEN}").parse().unwrap(),
                );
                match c.get_access_token(r).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("executor call failed: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    let sent = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let (mut c, sent, id) = (b.credentials().await, sent.clone(), id.clone());
        flooders.push(tokio::spawn(async move {
            while sent.fetch_add(1, Ordering::Relaxed) < FLOOD {
                let err = c
                    .get_credential(bearer(
                        pb::GetCredentialRequest {
                            credential_id: id.clone(),
                        },
                        None,
                    ))
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), tonic::Code::Unauthenticated);
            }
        }));
    }
    for f in flooders {
        f.await.unwrap();
    }
    flooding.store(false, Ordering::Relaxed);
    executor.await.unwrap();
    assert!(
        executor_ok.load(Ordering::Relaxed) > 0,
        "the executor made no call"
    );
    assert_eq!(
        executor_failed.load(Ordering::Relaxed),
        0,
        "executor calls failed during the flood"
    );

    let filter = pb::ListAuditEventsRequest {
        action: "rpc.GetCredential".into(),
        ..Default::default()
    };
    let rows = audit_events(&b, &mut operator, OPERATOR_TOKEN, filter).await;
    let counted: u64 = rows
        .iter()
        .map(|e| {
            assert_eq!(e.outcome, "UNAUTHENTICATED", "{e:?}");
            audit_count(e)
        })
        .sum();
    assert_eq!(counted, FLOOD as u64, "every denial is accounted for");
    assert!(
        rows.len() <= 200,
        "{} audit rows for {FLOOD} denied calls: writes must be aggregated",
        rows.len()
    );
}
