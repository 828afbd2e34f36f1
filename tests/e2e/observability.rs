//! Operability: traces continue the caller's W3C context and reach an OTLP collector, metrics
//! count a scripted flow, health follows the database, limits and deadlines hold, and the
//! operator commands print what they should (and no secret).

use crate::support::broker::{
    T0, TestBroker, as_actor, config_toml, error_details, fake_grant_import, free_port,
    with_fake_provider,
};
use crate::support::fake_provider::{FakeConfig, FakeProvider, TokenFailure};
use crate::support::otlp_collector::OtlpCollector;
use crate::support::pg;
use crate::support::tcp_proxy::TcpProxy;
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ALICE: (&str, &str) = ("u-alice", "alice@example.com");

fn rotating() -> FakeConfig {
    FakeConfig {
        rotate_refresh_tokens: true,
        reuse_revokes_grant: true,
        ..FakeConfig::default()
    }
}

fn t0_secs() -> i64 {
    T0.as_millis() / 1000
}

/// Imports a grant of `fake` whose access token expires at `expires_at_secs`; returns its id.
async fn import(
    client: &mut CredentialServiceClient<Channel>,
    fake: &FakeProvider,
    subject: &str,
    expires_at_secs: i64,
) -> String {
    let (req, _, _) = fake_grant_import(fake, subject, expires_at_secs);
    client
        .import_credential(as_actor(req, ALICE.0, ALICE.1))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap()
        .credential_id
}

fn token_request(id: &str) -> tonic::Request<pb::GetAccessTokenRequest> {
    as_actor(
        pb::GetAccessTokenRequest {
            credential_id: id.into(),
            workflow_id: "wf-1".into(),
            ..Default::default()
        },
        ALICE.0,
        ALICE.1,
    )
}

async fn token(
    client: &mut CredentialServiceClient<Channel>,
    id: &str,
) -> Result<pb::GetAccessTokenResponse, tonic::Status> {
    client
        .get_access_token(token_request(id))
        .await
        .map(tonic::Response::into_inner)
}

/// A broker on SQLite (or `database_url`) with the fake provider and the metrics endpoint.
async fn broker(
    fake: &FakeProvider,
    database_url: Option<&str>,
    tune: impl FnOnce(&mut credential_broker::runtime::config::Config),
) -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = database_url.map_or_else(
        || format!("sqlite://{}", dir.path().join("broker.db").display()),
        str::to_owned,
    );
    let mut config = TestBroker::config(&dir, url);
    with_fake_provider(&mut config, fake, "fake", &[]);
    config.tokens.refresh_scan_interval_seconds = 0;
    config.telemetry.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    tune(&mut config);
    TestBroker::start(config, dir).await.unwrap()
}

fn metrics_addr(b: &TestBroker) -> SocketAddr {
    b.config.telemetry.metrics_listen.expect("metrics endpoint")
}

// ---- traces ------------------------------------------------------------------------------------

/// The broker binary with `toml`, started with its stderr in `dir`; stopped with SIGTERM.
struct Process {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Process {
    async fn spawn(dir: &std::path::Path, toml: &str, addr: SocketAddr) -> Self {
        let config = dir.join("broker.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.join("broker.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cb-e2e-broker"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("CREDENTIAL_BROKER_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_SDK_DISABLED")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = Self { child, log };
        for _ in 0..200 {
            if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                && HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("broker did not start; log:\n{}", p.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit (graceful shutdown flushes the spans).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not stop; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn provider_toml(fake: &FakeProvider) -> String {
    let fc = fake.config();
    format!(
        "[providers.fake]\nclient_id = {:?}\nclient_secret = {:?}\n",
        fc.client_id, fc.client_secret
    ) + &crate::token_issuance::custom_provider_toml(fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refreshing_get_access_token_is_traced_under_the_callers_span() {
    let collector = OtlpCollector::start().await;
    let fake = FakeProvider::start(rotating()).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let db = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, db.clone());
    config.listen = addr;
    config.tokens.refresh_scan_interval_seconds = 0;
    with_fake_provider(&mut config, &fake, "fake", &[]);
    let toml = format!(
        "{}[telemetry]\notlp_endpoint = {:?}\nservice_name = \"cb-trace-test\"\n{}",
        config_toml(&config, &db),
        collector.endpoint(),
        provider_toml(&fake)
    );
    let mut broker = Process::spawn(dir.path(), &toml, addr).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CredentialServiceClient::new(channel);
    // Expired long ago by the real clock: the first GetAccessToken must refresh.
    let (req, old_access, old_refresh) = fake_grant_import(&fake, "acct-trace", t0_secs() - 3600);
    let id = client
        .import_credential(as_actor(req, ALICE.0, ALICE.1))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap()
        .credential_id;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut call = token_request(&id);
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    let issued = client.get_access_token(call).await.unwrap().into_inner();
    assert_eq!(fake.refresh_calls(), 1);

    let status = broker.terminate();
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

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

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
    let addr = metrics_addr(&b);
    let mut client = b.credentials().await;
    let good = import(&mut client, &fake, "acct-1", t0_secs() + 60).await;
    let doomed = import(&mut client, &fake, "acct-2", t0_secs() + 60).await;

    token(&mut client, &good).await.unwrap(); // refresh (miss)
    // From memory; the refresh's own change notification may evict the entry once, so one of
    // these may read the database again.
    for _ in 0..3 {
        token(&mut client, &good).await.unwrap();
    }
    let missing = token(&mut client, &uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    fake.push_token_failure(TokenFailure::InvalidGrant);
    let dead = token(&mut client, &doomed).await.unwrap_err();
    assert_eq!(dead.code(), Code::FailedPrecondition);

    // The gauge is read from the database every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(addr).await;
        if sample(
            &text,
            r#"credential_broker_credentials{status="NEEDS_RECONNECT"}"#,
        ) == Some(1.0)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "credentials gauge never updated:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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

async fn wait_for(channel: &Channel, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = serving(channel, service).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health {service:?} stayed {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let metrics = metrics_addr(&b);
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
    wait_for(&channel, "", ServingStatus::NotServing).await;
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
    wait_for(&channel, "", ServingStatus::Serving).await;
    wait_for(
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
    let mut client = b.credentials().await;
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
    let started = Instant::now();
    b.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an open Watch stream held the shutdown until the grace period ended"
    );
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
    let mut client = b.credentials().await;
    let first = import(&mut client, &fake, "acct-1", t0_secs() + 60).await;
    let second = import(&mut client, &fake, "acct-2", t0_secs() + 60).await;
    let slow: Vec<_> = [first, second.clone()]
        .into_iter()
        .map(|id| {
            let mut c = client.clone();
            tokio::spawn(async move { token(&mut c, &id).await })
        })
        .collect();
    // Both calls are in flight once both refreshes reached the (slow) provider.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.refresh_calls() < 2 {
        assert!(Instant::now() < deadline, "refreshes never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = token(&mut client, &second).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(error_details(&refused).0, "CALLER_CONCURRENCY_LIMIT");
    for call in slow {
        call.await.unwrap().unwrap();
    }
    // Permits are returned: the caller may call again.
    token(&mut client, &second).await.unwrap();
    let text = scrape(metrics_addr(&b)).await;
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
    let mut client = b.credentials().await;
    let (mut req, _, _) = fake_grant_import(&fake, "big", t0_secs() + 3600);
    req.description = "x".repeat(16 * 1024);
    let e = client
        .import_credential(as_actor(req, ALICE.0, ALICE.1))
        .await
        .unwrap_err();
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
    let mut client = b.credentials().await;
    let id = import(&mut client, &fake, "acct-1", t0_secs() + 60).await;
    let mut call = token_request(&id);
    call.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = client.get_access_token(call).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "answered only when the provider did"
    );
    // The refresh already sent is not cancelled: its (rotated) result is stored, and the next
    // call is served without a second provider call.
    token(&mut client, &id).await.unwrap();
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
    let mut client = b.credentials().await;
    let (req, access, refresh) = fake_grant_import(&fake, "acct-ok", t0_secs() + 3600);
    let ok = client
        .import_credential(as_actor(req, ALICE.0, ALICE.1))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap()
        .credential_id;
    let doomed = import(&mut client, &fake, "acct-dead", t0_secs() + 60).await;
    fake.push_token_failure(TokenFailure::InvalidGrant);
    token(&mut client, &doomed).await.unwrap_err();
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
