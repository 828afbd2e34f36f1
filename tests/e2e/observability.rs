//! Operability: traces continue the caller's W3C context and reach an OTLP collector, metrics
//! count a scripted flow, health follows the database, limits and deadlines hold, and the
//! operator commands print what they should (and no secret).

use crate::support::broker::{
    BrokerProcess, T0, TestBroker, config_toml, error_details, fake_grant_import, provider_toml,
    with_fake_provider,
};
use crate::support::client::{ALICE, Client};
use crate::support::fake_provider::{FakeConfig, FakeProvider, TokenFailure, rotating};
use crate::support::otlp_collector::OtlpCollector;
use crate::support::pg;
use crate::support::sample;
use crate::support::tcp_proxy::TcpProxy;
use crate::support::wait::{wait_for, wait_until_sync};
use cb_proto::v1 as pb;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn t0_secs() -> i64 {
    T0.as_millis() / 1000
}

/// Imports a grant of `fake` whose access token expires at `expires_at_secs`; returns its id.
async fn import(
    client: &mut Client,
    fake: &FakeProvider,
    subject: &str,
    expires_at_secs: i64,
) -> String {
    client
        .import_fake(fake, subject, expires_at_secs)
        .await
        .unwrap()
        .id
}

/// A broker on SQLite (or `database_url`) with the fake provider and the metrics endpoint.
async fn broker(
    fake: &FakeProvider,
    database_url: Option<&str>,
    tune: impl FnOnce(&mut credential_broker::runtime::config::Config),
) -> TestBroker {
    TestBroker::with_fake(fake, database_url, |config| {
        config.telemetry.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        tune(config);
    })
    .await
}

// ---- traces ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refreshing_get_access_token_is_traced_under_the_callers_span() {
    let collector = OtlpCollector::start().await;
    let fake = FakeProvider::start(rotating()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, db.clone());
    config.tokens.refresh_scan_interval_seconds = 0;
    with_fake_provider(&mut config, &fake, "fake", &[]);
    let toml = format!(
        "{}[telemetry]\notlp_endpoint = {:?}\nservice_name = \"cb-trace-test\"\n{}",
        config_toml(&config, &db),
        collector.endpoint(),
        provider_toml(&fake)
    );
    let mut broker = BrokerProcess::spawn(dir.path(), "broker", &toml).await;
    let mut client = broker.client(ALICE).await;
    // Expired long ago by the real clock: the first GetAccessToken must refresh.
    let imported = client
        .import_fake(&fake, "acct-trace", t0_secs() - 3600)
        .await
        .unwrap();
    let (id, old_access, old_refresh) = (imported.id, imported.access, imported.refresh);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut call = client.request(pb::GetAccessTokenRequest {
        credential_id: id.clone(),
        workflow_id: "wf-1".into(),
        ..Default::default()
    });
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    let issued = client
        .creds
        .get_access_token(call)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fake.refresh_calls(), 1);

    let status = broker.terminate().await;
    assert!(
        status.success(),
        "broker exit {status:?}; log:\n{}",
        broker.log()
    );
    let spans: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect();
    let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
    let rpc = spans
        .iter()
        .find(|s| s.name == "credentialbroker.v1.CredentialService/GetAccessToken")
        .unwrap_or_else(|| panic!("no RPC span in the caller's trace: {names:?}"));
    assert_eq!(
        rpc.parent_span_id, parent_id,
        "the caller's span is the parent"
    );
    assert_eq!(rpc.kind, 2, "server span");
    assert_eq!(rpc.service_name, "cb-trace-test");
    assert_eq!(rpc.attr("rpc.method"), Some("GetAccessToken"));
    assert_eq!(rpc.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(rpc.attr("caller"), Some("anonymous"));

    // Every span of the request descends from the RPC span.
    let descends = |s: &crate::support::otlp_collector::ReceivedSpan| {
        let mut parent = s.parent_span_id.clone();
        for _ in 0..20 {
            if parent == rpc.span_id {
                return true;
            }
            match spans.iter().find(|p| p.span_id == parent) {
                Some(p) => parent = p.parent_span_id.clone(),
                None => return false,
            }
        }
        false
    };
    let refresh = spans
        .iter()
        .find(|s| s.name == "refresh")
        .unwrap_or_else(|| panic!("no refresh span: {names:?}"));
    assert!(descends(refresh), "refresh span outside the RPC: {names:?}");
    assert_eq!(refresh.attr("credential_id"), Some(id.as_str()));
    assert_eq!(refresh.attr("provider"), Some("fake"));
    assert_eq!(refresh.attr("outcome"), Some("refreshed"));
    let provider_call = spans
        .iter()
        .find(|s| s.name == "oauth.refresh")
        .unwrap_or_else(|| panic!("no provider HTTP span: {names:?}"));
    assert!(descends(provider_call));
    assert_eq!(provider_call.kind, 3, "client span");
    assert_eq!(provider_call.attr("outcome"), Some("ok"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "provider.refresh" && descends(s)),
        "{names:?}"
    );
    let db_ops: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("db.system") == Some("sqlite") && descends(s))
        .filter_map(|s| s.attr("db.operation"))
        .collect();
    for op in [
        "get_credential",
        "acquire_refresh_lease",
        "complete_refresh",
    ] {
        assert!(db_ops.contains(&op), "no database span {op}: {db_ops:?}");
    }
    // The data key was cached by the import; a KMS span appears only on a cache miss, so the
    // KMS decorator is checked through the import's own trace instead.
    assert!(
        collector
            .spans()
            .iter()
            .any(|s| s.name == "kms.generate_data_key" && s.attr("kms.provider") == Some("local")),
        "no KMS span at all"
    );

    // No attribute of any exported span carries a token.
    let secrets = [
        old_access.as_str(),
        old_refresh.as_str(),
        issued.access_token.as_str(),
    ];
    for s in collector.spans() {
        for (k, v) in &s.attributes {
            for secret in secrets {
                assert!(
                    !v.contains(secret),
                    "span {} attribute {k} holds a token",
                    s.name
                );
            }
        }
    }
}

// ---- metrics -----------------------------------------------------------------------------------

async fn scrape(addr: SocketAddr) -> String {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_a_scripted_flow() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker(&fake, None, |c| c.telemetry.credentials_gauge_seconds = 1).await;
    let addr = b.metrics_addr();
    let mut client = b.client(ALICE).await;
    let good = import(&mut client, &fake, "acct-1", t0_secs() + 60).await;
    let doomed = import(&mut client, &fake, "acct-2", t0_secs() + 60).await;

    client.token(&good).await.unwrap(); // refresh (miss)
    // From memory; the refresh's own change notification may evict the entry once, so one of
    // these may read the database again.
    for _ in 0..3 {
        client.token(&good).await.unwrap();
    }
    let missing = client
        .token(&uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    fake.push_token_failure(TokenFailure::InvalidGrant);
    let dead = client.token(&doomed).await.unwrap_err();
    assert_eq!(dead.code(), Code::FailedPrecondition);

    // The gauge is read from the database every second.
    let text = wait_for(
        Duration::from_secs(10),
        "credentials gauge updated",
        || async {
            let text = scrape(addr).await;
            let reconnect = sample(
                &text,
                r#"credential_broker_credentials{status="NEEDS_RECONNECT"}"#,
            );
            if reconnect == Some(1.0) {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    let rpc = |method: &str, code: &str| {
        format!(
            r#"credential_broker_rpc_requests_total{{service="credentialbroker.v1.CredentialService",method="{method}",code="{code}"}}"#
        )
    };
    expect(&rpc("ImportCredential", "OK"), 2.0);
    expect(&rpc("GetAccessToken", "OK"), 4.0);
    expect(&rpc("GetAccessToken", "NOT_FOUND"), 1.0);
    expect(&rpc("GetAccessToken", "FAILED_PRECONDITION"), 1.0);
    expect(
        r#"credential_broker_rpc_duration_seconds_count{service="credentialbroker.v1.CredentialService",method="GetAccessToken",code="OK"}"#,
        4.0,
    );
    let hits = sample(
        &text,
        r#"credential_broker_token_issuance_total{result="OK",cache="hit"}"#,
    );
    let misses = sample(
        &text,
        r#"credential_broker_token_issuance_total{result="OK",cache="miss"}"#,
    );
    assert!(
        matches!((hits, misses), (Some(h), Some(m)) if h + m == 4.0 && h >= 2.0),
        "hits {hits:?} misses {misses:?}"
    );
    expect(
        r#"credential_broker_token_issuance_total{result="CREDENTIAL_NOT_FOUND",cache="miss"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_token_issuance_total{result="CREDENTIAL_NEEDS_RECONNECT",cache="miss"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_refreshes_total{provider="fake",outcome="refreshed"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_refreshes_total{provider="fake",outcome="needs_reconnect"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_provider_calls_total{provider="fake",operation="refresh",outcome="ok"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_provider_calls_total{provider="fake",operation="refresh",outcome="permanent"}"#,
        1.0,
    );
    expect("credential_broker_provider_refresh_attempts_total", 2.0);
    expect("credential_broker_singleflight_joins_total", 0.0);
    expect("credential_broker_lease_waits_total", 0.0);
    expect(
        r#"credential_broker_provider_circuit_open{provider="fake"}"#,
        0.0,
    );
    expect(r#"credential_broker_credentials{status="ACTIVE"}"#, 1.0);
    expect(
        r#"credential_broker_credentials{status="NEEDS_RECONNECT"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_credentials{status="DISCONNECTED"}"#,
        0.0,
    );
    // Health beside status: the revoked grant is counted by its cause.
    expect(
        r#"credential_broker_credential_health{health="HEALTHY"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_credential_health{health="GRANT_REVOKED"}"#,
        1.0,
    );
    expect(
        r#"credential_broker_credential_health{health="PROVIDER_OUTAGE"}"#,
        0.0,
    );
    expect(
        r#"credential_broker_dependency_up{dependency="database"}"#,
        1.0,
    );
    expect(r#"credential_broker_dependency_up{dependency="kms"}"#, 1.0);
    // Two imports sealed new data keys; the refresh re-sealed under a cached one.
    assert!(
        sample(
            &text,
            r#"credential_broker_kms_calls_total{operation="generate_data_key",outcome="ok"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(sample(&text, "credential_broker_dek_cache_hits_total").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "credential_broker_dek_cache_entries").is_some());
    assert!(text.trim_end().ends_with("# EOF"));
    assert!(!text.contains(&fake.config().client_secret));
}

// ---- health ------------------------------------------------------------------------------------

async fn serving(channel: &Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status())
        .unwrap_or(ServingStatus::Unknown)
}

async fn wait_for_health(channel: &Channel, service: &str, want: ServingStatus) {
    let what = format!("health {service:?} becomes {want:?}");
    wait_for(Duration::from_secs(30), &what, || async {
        let now = serving(channel, service).await;
        if now == want { Ok(()) } else { Err(now) }
    })
    .await;
}

/// `host:port` of a PostgreSQL URL, and the URL with it replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> (String, String) {
    let start = url.find("://").unwrap() + 3;
    let end = start + url[start..].find('/').unwrap_or(url.len() - start);
    let authority = &url[start..end];
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    (
        hostport,
        format!("{}{userinfo}{addr}{}", &url[..start], &url[end..]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_follows_the_database_down_and_back() {
    let Some(db) = pg::fresh_database("health_flip").await else {
        return;
    };
    let (upstream, _) = through(&db.url, SocketAddr::from(([127, 0, 0, 1], 1)));
    let proxy = TcpProxy::start(&upstream).await;
    let (_, proxied_url) = through(&db.url, proxy.addr);
    let fake = FakeProvider::start(rotating()).await;
    let mut b = broker(&fake, Some(&proxied_url), |c| {
        c.health.database_check_seconds = 1;
        c.health.check_timeout_seconds = 1;
    })
    .await;
    let metrics = b.metrics_addr();
    let channel = b.channel().await;
    for service in [
        "",
        "credentialbroker.v1.CredentialService",
        "credentialbroker.v1.MembershipService",
        "liveness",
    ] {
        assert_eq!(
            serving(&channel, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }

    proxy.cut();
    wait_for_health(&channel, "", ServingStatus::NotServing).await;
    for service in [
        "credentialbroker.v1.CredentialService",
        "credentialbroker.v1.MembershipService",
    ] {
        assert_eq!(serving(&channel, service).await, ServingStatus::NotServing);
    }
    assert_eq!(
        serving(&channel, "liveness").await,
        ServingStatus::Serving,
        "liveness must not restart pods over a database outage"
    );
    let text = scrape(metrics).await;
    assert_eq!(
        sample(
            &text,
            r#"credential_broker_dependency_up{dependency="database"}"#
        ),
        Some(0.0),
        "{text}"
    );

    proxy.restore();
    wait_for_health(&channel, "", ServingStatus::Serving).await;
    wait_for_health(
        &channel,
        "credentialbroker.v1.CredentialService",
        ServingStatus::Serving,
    )
    .await;
    let text = scrape(metrics).await;
    assert_eq!(
        sample(
            &text,
            r#"credential_broker_dependency_up{dependency="database"}"#
        ),
        Some(1.0)
    );
    // The broker works again.
    let mut client = b.client(ALICE).await;
    import(&mut client, &fake, "after-outage", t0_secs() + 3600).await;

    // Shutdown: a health-checking client (Watch) hears NOT_SERVING, then its stream ends
    // instead of holding the drain open.
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    // With an hour of grace, a Watch stream holding the drain open would hang the stop.
    tokio::time::timeout(
        Duration::from_secs(30),
        b.stop_with_grace(Duration::from_secs(3600)),
    )
    .await
    .expect("an open Watch stream held the shutdown until the grace period ended");
    let last = watch.message().await;
    assert!(
        matches!(&last, Ok(Some(r)) if r.status() == ServingStatus::NotServing),
        "{last:?}"
    );
    drop(proxy);
    db.drop_database().await;
}

// ---- limits ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_over_its_concurrency_limit_gets_resource_exhausted() {
    let fake = FakeProvider::start(FakeConfig {
        token_delay: Duration::from_millis(1500),
        ..rotating()
    })
    .await;
    let b = broker(&fake, None, |c| c.limits.max_concurrent_per_caller = 2).await;
    let mut client = b.client(ALICE).await;
    let first = import(&mut client, &fake, "acct-1", t0_secs() + 60).await;
    let second = import(&mut client, &fake, "acct-2", t0_secs() + 60).await;
    let slow: Vec<_> = [first, second.clone()]
        .into_iter()
        .map(|id| {
            let mut c = client.clone();
            tokio::spawn(async move { c.token(&id).await })
        })
        .collect();
    // Both calls are in flight once both refreshes reached the (slow) provider.
    wait_until_sync(Duration::from_secs(10), "both refreshes started", || {
        fake.refresh_calls() >= 2
    })
    .await;
    let refused = client.token(&second).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(error_details(&refused).0, "CALLER_CONCURRENCY_LIMIT");
    for call in slow {
        call.await.unwrap().unwrap();
    }
    // Permits are returned: the caller may call again.
    client.token(&second).await.unwrap();
    let text = scrape(b.metrics_addr()).await;
    assert_eq!(
        sample(
            &text,
            r#"credential_broker_rpc_rejected_total{caller="anonymous",reason="concurrency_limit"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_oversized_request_is_refused() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker(&fake, None, |c| c.limits.max_request_bytes = 4096).await;
    let mut client = b.client(ALICE).await;
    let (mut req, _, _) = fake_grant_import(&fake, "big", t0_secs() + 3600);
    req.description = "x".repeat(16 * 1024);
    let e = client.import(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{e:?}"
    );
    // A normal request still passes.
    import(&mut client, &fake, "small", t0_secs() + 3600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_callers_deadline_is_honoured_and_the_refresh_still_lands() {
    let fake = FakeProvider::start(FakeConfig {
        token_delay: Duration::from_secs(2),
        ..rotating()
    })
    .await;
    let b = broker(&fake, None, |_| {}).await;
    let mut client = b.client(ALICE).await;
    let imported = client
        .import_fake(&fake, "acct-1", t0_secs() + 60)
        .await
        .unwrap();
    let id = imported.id;
    let mut call = client.request(pb::GetAccessTokenRequest {
        credential_id: id.clone(),
        workflow_id: "wf-1".into(),
        ..Default::default()
    });
    call.set_timeout(Duration::from_millis(300));
    let e = client.creds.get_access_token(call).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // The provider has not answered yet (it rotates the refresh token when it does): the caller
    // was answered at its deadline, not when the provider was.
    assert!(
        fake.is_current_refresh_token(&imported.refresh),
        "answered only when the provider did"
    );
    // The refresh already sent is not cancelled: its (rotated) result is stored, and the next
    // call is served without a second provider call.
    client.token(&id).await.unwrap();
    assert_eq!(fake.refresh_calls(), 1);
    assert_eq!(fake.reuse_detections(), 0);
}

// ---- operator commands -------------------------------------------------------------------------

fn run(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cb-e2e-broker"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CREDENTIAL_BROKER_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_commands_show_metadata_and_check_providers() {
    let fake = FakeProvider::start(rotating()).await;
    let mut b = broker(&fake, None, |_| {}).await;
    let mut client = b.client(ALICE).await;
    let imported = client
        .import_fake(&fake, "acct-ok", t0_secs() + 3600)
        .await
        .unwrap();
    let (ok, access, refresh) = (imported.id, imported.access, imported.refresh);
    let doomed = import(&mut client, &fake, "acct-dead", t0_secs() + 60).await;
    fake.push_token_failure(TokenFailure::InvalidGrant);
    client.token(&doomed).await.unwrap_err();
    let config = b.config.clone();
    b.stop().await;

    let db = config.database.url.expose().to_owned();
    let toml = config_toml(&config, &db) + &provider_toml(&fake);
    let path = b.dir.path().join("ops.toml");
    std::fs::write(&path, &toml).unwrap();

    let (ok_exit, out, err) = run(
        &["credentials", "list", "--status", "needs-reconnect"],
        &path,
    );
    assert!(ok_exit, "{err}");
    assert!(out.contains(&doomed) && !out.contains(&ok), "{out}");
    assert!(out.contains("invalid_grant"), "the reason is shown: {out}");
    assert!(out.contains("GRANT_REVOKED"), "the health is shown: {out}");
    let by_health = |health: &str| {
        run(
            &[
                "credentials",
                "list",
                "--status",
                "active",
                "--health",
                health,
            ],
            &path,
        )
    };
    let (ok_exit, out, err) = by_health("healthy");
    assert!(ok_exit && out.contains(&ok), "{out}{err}");
    let (ok_exit, out, err) = by_health("provider-outage");
    assert!(ok_exit && !out.contains(&ok), "{out}{err}");
    let (_, out, _) = run(
        &[
            "credentials",
            "list",
            "--status",
            "needs-reconnect",
            "--workspace",
            "other-ws",
        ],
        &path,
    );
    assert!(!out.contains(&doomed), "{out}");
    let (_, out, _) = run(
        &["credentials", "list", "--status", "active", "--json"],
        &path,
    );
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], ok.as_str());

    let (ok_exit, out, err) = run(&["credentials", "show", &ok], &path);
    assert!(ok_exit, "{err}");
    for expected in [
        ok.as_str(),
        "ws1",
        "fake",
        "acct-ok@example.com",
        "ACTIVE",
        "alice@example.com",
    ] {
        assert!(out.contains(expected), "{expected} missing from\n{out}");
    }
    let (ok_exit, out, _) = run(&["credentials", "show", &doomed, "--json"], &path);
    assert!(ok_exit);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "NEEDS_RECONNECT");
    assert_eq!(shown["health"], "GRANT_REVOKED");
    assert_eq!(shown["health_error_code"], "invalid_grant");
    assert_eq!(shown["health_failures"], 1);
    let (_, out, _) = run(&["credentials", "show", &doomed], &path);
    let line = out
        .lines()
        .find(|l| l.starts_with("health:"))
        .unwrap_or_default();
    assert!(
        line.contains("GRANT_REVOKED") && line.contains("last error invalid_grant"),
        "{out}"
    );
    assert_eq!(shown["members"][0]["role"], "ADMIN");
    let (missing_exit, _, err) = run(&["credentials", "show", "nope"], &path);
    assert!(!missing_exit && err.contains("nope"), "{err}");
    for (_, out, err) in [
        run(&["credentials", "show", &ok, "--json"], &path),
        run(
            &["credentials", "list", "--status", "active", "--json"],
            &path,
        ),
    ] {
        for secret in [
            access.as_str(),
            refresh.as_str(),
            &fake.config().client_secret,
        ] {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "a secret was printed"
            );
        }
    }

    // providers: fake is configured; --check passes.
    let (ok_exit, out, err) = run(&["providers", "--check"], &path);
    assert!(ok_exit, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("fake "))
        .unwrap_or_default();
    assert!(line.contains("yes") && line.contains("config"), "{out}");
    assert!(!out.contains(&fake.config().client_secret));
    // A provider named in the config without its secret fails the check, naming what is missing.
    let broken = format!("{toml}[providers.github]\nclient_id = \"only-the-id\"\n");
    std::fs::write(&path, broken).unwrap();
    let (ok_exit, out, err) = run(&["providers", "--check"], &path);
    assert!(!ok_exit, "--check must fail: {out}");
    assert!(
        err.contains("github") && err.contains("client_secret"),
        "{err}"
    );
    let (ok_exit, out, _) = run(&["providers", "--json"], &path);
    assert!(ok_exit);
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    let github = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "github")
        .unwrap();
    assert_eq!(github["configured"], false);
    assert_eq!(github["named_in_config"], true);
}
