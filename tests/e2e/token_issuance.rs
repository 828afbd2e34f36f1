//! GetAccessToken and the refresh coordinator against a real HTTP fake provider that rotates
//! refresh tokens and, like real servers, revokes the whole grant when an old one is reused.

use crate::support::broker::{
    BrokerProcess, REDIRECT_URI, T0, TestBroker, as_actor, config_toml, error_details,
    fake_grant_import, provider_toml, with_fake_provider,
};
use crate::support::client::Answered;
use crate::support::fake_provider::{FakeConfig, FakeProvider, TokenFailure, rotating};
use crate::support::pg;
use crate::support::tcp_proxy::TcpProxy;
use crate::support::wait::{wait_for, wait_until_sync};
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use credential_broker::runtime::config::Config;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const ALICE: (&str, &str) = ("u-alice", "alice@example.com");

async fn broker_on(fake: &FakeProvider, database_url: Option<&str>) -> TestBroker {
    TestBroker::with_fake(fake, database_url, |config| {
        config.tokens.breaker_cooldown_seconds = 2;
    })
    .await
}

/// Imports a grant issued by `fake` whose access token expires `expires_in_secs` after `now_secs`.
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
        .credential()
        .credential_id
}

/// GetCredential of `id`, as Alice.
async fn get(client: &mut CredentialServiceClient<Channel>, id: &str) -> pb::Credential {
    let request = pb::GetCredentialRequest {
        credential_id: id.to_owned(),
    };
    client
        .get_credential(as_actor(request, ALICE.0, ALICE.1))
        .await
        .credential()
}

fn t0_secs() -> i64 {
    T0.as_millis() / 1000
}

async fn token(
    client: &mut CredentialServiceClient<Channel>,
    id: &str,
) -> Result<pb::GetAccessTokenResponse, tonic::Status> {
    client
        .get_access_token(as_actor(
            pb::GetAccessTokenRequest {
                credential_id: id.into(),
                workflow_id: "wf-1".into(),
                ..Default::default()
            },
            ALICE.0,
            ALICE.1,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn two_hundred_concurrent_callers_cause_exactly_one_refresh() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;
    // Expires in one minute: inside the default min_valid_for (3m45s), so it must be refreshed.
    let id = import(&mut client, &fake, "acct-1", t0_secs() + 60).await;
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut c = client.clone();
            let id = id.clone();
            tokio::spawn(async move { token(&mut c, &id).await })
        })
        .collect();
    let mut tokens = std::collections::BTreeSet::new();
    for c in calls {
        tokens.insert(c.await.unwrap().unwrap().access_token);
    }
    assert_eq!(
        fake.refresh_calls(),
        1,
        "exactly one refresh for 200 callers"
    );
    assert_eq!(tokens.len(), 1, "every caller got the refreshed token");
    let t = tokens.into_iter().next().unwrap();
    assert!(fake.is_valid_access_token(&t));
    assert_eq!(fake.reuse_detections(), 0);

    // The rotated refresh token was persisted: the next refresh (after expiry) still works.
    b.clock.advance(Duration::from_secs(3600));
    let again = token(&mut client, &id).await.unwrap();
    assert_ne!(again.access_token, t);
    assert_eq!(fake.refresh_calls(), 2);
    assert_eq!(
        fake.reuse_detections(),
        0,
        "no refresh token was ever reused"
    );
}

#[tokio::test]
async fn a_valid_token_is_served_from_memory() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;
    let id = import(&mut client, &fake, "acct-1", t0_secs() + 3600).await;
    let first = token(&mut client, &id).await.unwrap();
    let before = b.issuance_stats();
    for _ in 0..50 {
        assert_eq!(
            token(&mut client, &id).await.unwrap().access_token,
            first.access_token
        );
    }
    let after = b.issuance_stats();
    assert_eq!(
        after.cache_hits - before.cache_hits,
        50,
        "hot path served from memory"
    );
    assert_eq!(after.cache_misses, before.cache_misses);
    assert_eq!(fake.refresh_calls(), 0, "a valid token is not refreshed");
    // The caller may ask for more validity than is left: that forces a refresh.
    b.clock.advance(Duration::from_secs(600));
    let longer = client
        .get_access_token(as_actor(
            pb::GetAccessTokenRequest {
                credential_id: id.clone(),
                min_valid_for: Some(prost_types::Duration {
                    seconds: 3300,
                    nanos: 0,
                }),
                ..Default::default()
            },
            ALICE.0,
            ALICE.1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(longer.access_token, first.access_token);
    assert_eq!(fake.refresh_calls(), 1);
}

/// A token fresh from the provider satisfies any request: with tokens shorter than the default
/// `min_valid_for` (3 min 45 s) a credential is refreshed once per lifetime, not on every call.
#[tokio::test]
async fn short_lived_tokens_are_refreshed_once_per_lifetime_not_per_call() {
    for lifetime in [60, 20] {
        let lifetime = Duration::from_secs(lifetime);
        let fake = FakeProvider::start(FakeConfig {
            access_token_ttl: Some(lifetime),
            ..rotating()
        })
        .await;
        let b = broker_on(&fake, None).await;
        let mut client = b.credentials().await;
        let id = import(&mut client, &fake, "acct-1", t0_secs() - 10).await;
        // 100 sequential calls with the default min_valid_for over 70 % of a lifetime (the
        // broker's clock moves; nobody sleeps).
        let mut tokens = std::collections::BTreeSet::new();
        for _ in 0..100 {
            tokens.insert(token(&mut client, &id).await.unwrap().access_token);
            b.clock.advance(lifetime * 7 / 1000);
        }
        assert_eq!(
            fake.refresh_calls(),
            1,
            "one refresh for {lifetime:?} tokens"
        );
        assert_eq!(tokens.len(), 1, "every call got the same fresh token");
        // Steady state over ten more lifetimes, a call every tenth of one: a refresh each time a
        // quarter of the lifetime is left (here every 8 tenths), never per call.
        for _ in 0..100 {
            token(&mut client, &id).await.unwrap();
            b.clock.advance(lifetime / 10);
        }
        assert_eq!(fake.refresh_calls(), 14, "{lifetime:?} tokens");
        assert_eq!(fake.reuse_detections(), 0);
    }
}

#[tokio::test]
async fn invalid_grant_needs_reconnect_and_fails_fast() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;
    let id = import(&mut client, &fake, "acct-1", t0_secs() - 10).await;
    fake.push_token_failure(TokenFailure::InvalidGrant);
    let err = token(&mut client, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_details(&err).0, "CREDENTIAL_NEEDS_RECONNECT");
    assert!(
        err.message()
            .contains("reconnect Fake acct-1 in Settings → Integrations"),
        "{}",
        err.message()
    );
    let calls = fake.refresh_calls();
    let err = token(&mut client, &id).await.unwrap_err();
    assert_eq!(error_details(&err).0, "CREDENTIAL_NEEDS_RECONNECT");
    assert_eq!(
        fake.refresh_calls(),
        calls,
        "no provider call once the grant is known dead"
    );
    let c = get(&mut client, &id).await;
    assert_eq!(c.status, pb::CredentialStatus::NeedsReconnect as i32);
    assert!(
        c.status_reason.contains("invalid_grant"),
        "{}",
        c.status_reason
    );

    // Reconnect restores it: same id, ACTIVE, tokens served again.
    fake.configure(|f| f.subject = "acct-1".into());
    let started = client
        .start_reconnect(as_actor(
            pb::StartReconnectRequest {
                credential_id: id.clone(),
                redirect_uri: REDIRECT_URI.into(),
                scopes: vec![],
            },
            ALICE.0,
            ALICE.1,
        ))
        .await
        .unwrap()
        .into_inner();
    let back = fake
        .approve(&url::Url::parse(&started.authorization_url).unwrap())
        .await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    let done = client
        .complete_connect(as_actor(
            pb::CompleteConnectRequest {
                state: q["state"].clone(),
                code: q["code"].clone(),
                ..Default::default()
            },
            ALICE.0,
            ALICE.1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.outcome, pb::ConnectOutcome::Reconnected as i32);
    let c = done.credential.unwrap();
    assert_eq!(c.credential_id, id);
    assert_eq!(c.status, pb::CredentialStatus::Active as i32);
    assert!(token(&mut client, &id).await.is_ok());
}

#[tokio::test]
async fn transient_failures_retry_then_serve_the_still_valid_token_or_report_unavailable() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;

    // One 500 then success: retried within the call.
    let id = import(&mut client, &fake, "acct-1", t0_secs() - 10).await;
    fake.push_token_failure(TokenFailure::ServerError);
    assert!(token(&mut client, &id).await.is_ok());
    assert_eq!(fake.refresh_calls(), 2, "one failed attempt, one retry");

    // 429 with Retry-After: honoured, then success.
    let id2 = import(&mut client, &fake, "acct-2", t0_secs() - 10).await;
    fake.push_token_failure(TokenFailure::RateLimited {
        retry_after_secs: 1,
    });
    assert!(token(&mut client, &id2).await.is_ok());

    // Provider down, token still valid for 2 minutes (less than asked): served anyway.
    let id3 = import(&mut client, &fake, "acct-3", t0_secs() + 120).await;
    fake.configure(|f| f.token_failure = Some(TokenFailure::ServerError));
    let served = token(&mut client, &id3).await.unwrap();
    assert!(fake.is_valid_access_token(&served.access_token));

    // Provider down and the token expired: UNAVAILABLE with retry info, after bounded attempts.
    let id4 = import(&mut client, &fake, "acct-4", t0_secs() - 10).await;
    let before = fake.refresh_calls();
    let err = token(&mut client, &id4).await.unwrap_err();
    // By now the provider failed often enough to open its circuit: calls stop reaching it.
    let during = fake.refresh_calls();
    let open = token(&mut client, &id4).await.unwrap_err();
    assert_eq!(open.code(), Code::Unavailable, "{open:?}");
    assert_eq!(
        fake.refresh_calls(),
        during,
        "an open circuit does not hammer the provider"
    );
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(error_details(&err).0, "PROVIDER_UNAVAILABLE");
    use tonic_types::StatusExt;
    assert!(err.get_error_details().retry_info().is_some());
    let attempts = fake.refresh_calls() - before;
    assert!(
        (1..=3).contains(&attempts),
        "bounded retries, got {attempts}"
    );
    // Still ACTIVE: a transient failure does not need a reconnect.
    let c = get(&mut client, &id4).await;
    assert_eq!(c.status, pb::CredentialStatus::Active as i32);
    // The provider recovers: the next call succeeds once the circuit lets calls through, after
    // its cooldown (2 s here) on the broker's clock.
    fake.configure(|f| f.token_failure = None);
    b.clock.advance(Duration::from_secs(3));
    let ok = token(&mut client, &id4).await.is_ok();
    assert!(ok, "recovers when the provider does");
}

#[tokio::test]
async fn refresh_ahead_refreshes_due_credentials_and_leaves_non_expiring_ones_alone() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;
    let soon = import(&mut client, &fake, "acct-1", t0_secs() + 300).await; // inside the 10 min window
    let later = import(&mut client, &fake, "acct-2", t0_secs() + 86_400).await;
    // A token without expiry.
    let (access, refresh) = fake.issue_grant("acct-3");
    client
        .import_credential(as_actor(
            pb::ImportCredentialRequest {
                workspace_id: "ws1".into(),
                provider_id: "fake".into(),
                account: Some(pb::ProviderAccount {
                    subject: "acct-3".into(),
                    label: String::new(),
                }),
                display_name: "no expiry".into(),
                tokens: Some(pb::TokenSet {
                    access_token: access,
                    refresh_token: refresh,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ALICE.0,
            ALICE.1,
        ))
        .await
        .unwrap();
    assert_eq!(b.refresh_due().await, 0, "nothing is due yet");
    b.clock.advance(Duration::from_secs(200));
    let refreshed = b.refresh_due().await;
    assert_eq!(refreshed, 1, "only the credential inside the window");
    assert_eq!(fake.refresh_calls(), 1);
    let c = get(&mut client, &soon).await;
    assert!(c.last_refresh_time.is_some());
    // A day later the second one is due; the token without expiry never is.
    b.clock.advance(Duration::from_secs(86_400));
    assert_eq!(
        b.refresh_due().await,
        2,
        "the refreshed one again (1h tokens) and the day-long one"
    );
    let c = get(&mut client, &later).await;
    assert!(c.last_refresh_time.is_some());
    assert_eq!(fake.refresh_calls(), 3);
}

#[tokio::test]
async fn disconnect_stops_issuance_immediately_and_usage_is_recorded() {
    let fake = FakeProvider::start(rotating()).await;
    let mut b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;
    let id = import(&mut client, &fake, "acct-1", t0_secs() + 3600).await;
    token(&mut client, &id).await.unwrap();
    b.stop().await; // flushes buffered usage
    let b2 = TestBroker::start(b.config.clone(), b.dir.clone())
        .await
        .unwrap();
    let mut client = b2.credentials().await;
    let c = get(&mut client, &id).await;
    assert!(c.last_used_time.is_some());
    assert_eq!(
        c.recent_workflows
            .iter()
            .map(|w| w.workflow_id.as_str())
            .collect::<Vec<_>>(),
        vec!["wf-1"]
    );
    token(&mut client, &id).await.unwrap();
    let disc = client
        .disconnect_credential(as_actor(
            pb::DisconnectCredentialRequest {
                credential_id: id.clone(),
            },
            ALICE.0,
            ALICE.1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disc.revocation, pb::RevocationOutcome::Revoked as i32);
    assert!(fake.revocations() >= 1);
    let err = token(&mut client, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_details(&err).0, "CREDENTIAL_DISCONNECTED");
}

#[tokio::test]
async fn disconnect_on_one_replica_is_seen_by_another_within_two_seconds() {
    let Some((db, fake, a)) = on_postgres("cross_replica_disconnect").await else {
        return;
    };
    // Replica B shares the database and the key file.
    let b = a.replica().await;
    let mut ca = a.credentials().await;
    let mut cb = b.credentials().await;
    let id = import(&mut ca, &fake, "acct-1", t0_secs() + 3600).await;
    token(&mut cb, &id).await.unwrap(); // cached on B
    ca.disconnect_credential(as_actor(
        pb::DisconnectCredentialRequest {
            credential_id: id.clone(),
        },
        ALICE.0,
        ALICE.1,
    ))
    .await
    .unwrap();
    wait_for(
        Duration::from_secs(2),
        "replica B stops serving a disconnected credential",
        || {
            let (mut c, id) = (cb.clone(), id.clone());
            async move {
                token(&mut c, &id)
                    .await
                    .map_or(Ok(()), |_| Err("still served"))
            }
        },
    )
    .await;
    db.drop_database().await;
}

/// Three broker processes on one PostgreSQL, 100 concurrent callers each, 20 expired
/// credentials: exactly 20 provider refreshes, every call succeeds, no refresh token reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_refresh_each_credential_exactly_once() {
    storm("three_replicas", rotating()).await;
}

/// The same storm with 20-second tokens and the default `min_valid_for` (3 min 45 s, longer than
/// the lifetime): still exactly one refresh per credential, not one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_refresh_short_lived_tokens_exactly_once() {
    storm(
        "three_replicas_short",
        FakeConfig {
            access_token_ttl: Some(Duration::from_secs(20)),
            ..rotating()
        },
    )
    .await;
}

/// Starts `replica-{i}` as its own process on the database at `db_url`, with `fake` as provider
/// `fake` and no background refresh scan, `tune` applied and `extra` TOML appended.
/// A fresh PostgreSQL database, a rotating fake provider and broker A on both; `None` where
/// no PostgreSQL is configured.
async fn on_postgres(label: &str) -> Option<(pg::TestPgDatabase, FakeProvider, TestBroker)> {
    let db = pg::fresh_database(label).await?;
    let fake = FakeProvider::start(rotating()).await;
    let a = broker_on(&fake, Some(&db.url)).await;
    Some((db, fake, a))
}

/// A TCP proxy in front of the PostgreSQL server of `db_url`, and the URL that goes through it.
async fn proxied(db_url: &str) -> (TcpProxy, String) {
    let direct = url::Url::parse(db_url).unwrap();
    let upstream = format!(
        "{}:{}",
        direct.host_str().unwrap(),
        direct.port().unwrap_or(5432)
    );
    let proxy = TcpProxy::start(&upstream).await;
    let mut via = direct;
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(proxy.addr.port())).unwrap();
    (proxy, via.to_string())
}

async fn replica_process(
    dir: &tempfile::TempDir,
    db_url: &str,
    fake: &FakeProvider,
    i: usize,
    extra: &str,
    tune: impl FnOnce(&mut Config),
) -> BrokerProcess {
    let mut config = TestBroker::config(dir, db_url.to_owned());
    config.tokens.refresh_scan_interval_seconds = 0;
    tune(&mut config);
    with_fake_provider(&mut config, fake, "fake", &[]);
    let toml = config_toml(&config, db_url) + &provider_toml(fake) + extra;
    BrokerProcess::spawn(dir.path(), &format!("replica-{i}"), &toml).await
}

async fn storm(name: &str, provider: FakeConfig) {
    let Some(db) = pg::fresh_database(name).await else {
        return;
    };
    let fake = FakeProvider::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    let mut metrics = Vec::new();
    for i in 0..3 {
        let metrics_on = "[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n";
        let replica = replica_process(&dir, &db.url, &fake, i, metrics_on, |_| {}).await;
        metrics.push(replica.metrics_addr());
        replicas.push(replica);
    }
    let mut c0 = CredentialServiceClient::new(replicas[0].channel().await);
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(import(&mut c0, &fake, &format!("acct-{n}"), 1_000_000_000).await); // long expired
    }
    // Overlap is forced: every caller starts at once (a barrier) and the provider is slow, so
    // leaders of one credential on different replicas meet at its lease.
    fake.configure(|f| f.token_delay = Duration::from_millis(500));
    let barrier = Arc::new(tokio::sync::Barrier::new(300));
    let mut calls = Vec::new();
    for r in &replicas {
        let client = CredentialServiceClient::new(r.channel().await);
        for k in 0..100 {
            let mut c = client.clone();
            let id = ids[k % ids.len()].clone();
            let barrier = barrier.clone();
            calls.push(tokio::spawn(async move {
                barrier.wait().await;
                token(&mut c, &id).await
            }));
        }
    }
    let mut failed = 0;
    for c in calls {
        if c.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "every call succeeds");
    assert_eq!(
        fake.refresh_calls(),
        20,
        "exactly one refresh per credential across 3 replicas"
    );
    assert_eq!(fake.reuse_detections(), 0, "no refresh token reused");
    // The lease did the work: replicas found it held and waited (were it always free, each
    // replica would have refreshed on its own and the count above would be higher).
    let mut waits = 0.0;
    for m in metrics {
        let text = reqwest::get(format!("http://{m}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        waits += text
            .lines()
            .find_map(|l| l.strip_prefix("credential_broker_lease_waits_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no lease_waits metric in:\n{text}"));
    }
    assert!(waits > 0.0, "leases were waited on");
    drop(replicas);
    db.drop_database().await;
}

/// The leader is SIGKILLed mid-refresh: another replica completes after the lease expires and
/// the chain of refresh tokens stays valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_delays_others_by_at_most_the_lease() {
    let Some(db) = pg::fresh_database("killed_leader").await else {
        return;
    };
    let fake = FakeProvider::start(rotating()).await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = |i: usize| {
        replica_process(&dir, &db.url, &fake, i, "", |config| {
            config.tokens.lease_seconds = 4;
            config.tokens.provider_attempts = 1;
            config.oauth.http_timeout_seconds = 3;
        })
    };
    let mut a = spawn(0).await;
    let b = spawn(1).await;
    let mut ca = CredentialServiceClient::new(a.channel().await);
    let id = import(&mut ca, &fake, "acct-1", 1_000_000_000).await;

    // A slow provider: A takes the lease and is killed while its refresh is in flight.
    fake.configure(|f| f.token_delay = Duration::from_secs(2));
    let pending = {
        let id = id.clone();
        let mut ca = ca.clone();
        tokio::spawn(async move { token(&mut ca, &id).await })
    };
    wait_until_sync(Duration::from_secs(5), "A calls the provider", || {
        fake.refresh_calls() > 0
    })
    .await;
    a.kill();
    let _ = pending.await;
    // From now on tokens live one second: a refresh comes due within a second, which the chain
    // check below needs (min_valid_for cannot force one: a fresh token satisfies any request).
    fake.configure(|f| {
        f.token_delay = Duration::ZERO;
        f.access_token_ttl = Some(Duration::from_secs(1));
    });

    // B waits for the lease to expire, then refreshes.
    let mut cb = CredentialServiceClient::new(b.channel().await);
    let got = tokio::time::timeout(Duration::from_secs(15), token(&mut cb, &id))
        .await
        .unwrap_or_else(|_| panic!("B waited longer than the lease\n{}", b.log()));
    assert!(got.is_ok(), "B completes: {got:?}\n{}", b.log());
    // A's refresh reached the provider and rotated the token; whichever refresh token the
    // database now holds must still be the live one, or the grant would be revoked.
    assert_eq!(fake.reuse_detections(), 0, "\n{}", b.log());
    // One more refresh through B (once B's one-second token is due) and the chain still works.
    let refreshed = fake.refresh_calls();
    let started = std::time::Instant::now();
    loop {
        let next = cb
            .get_access_token(as_actor(
                pb::GetAccessTokenRequest {
                    credential_id: id.clone(),
                    min_valid_for: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                ALICE.0,
                ALICE.1,
            ))
            .await;
        assert!(next.is_ok(), "{next:?}");
        if fake.refresh_calls() > refreshed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "B's token never came due"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.reuse_detections(), 0, "\n{}", b.log());
    db.drop_database().await;
}

/// The leader is SIGKILLed the moment the provider answered its refresh: the rotated refresh
/// token dies with it. The survivor notices within a short lease (heartbeat, database clock),
/// finds the leader's refresh intent, retries at once with the stored refresh token and, when
/// the provider refuses it (reuse detected), says the refresh was interrupted. The other
/// credential is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_after_the_provider_answered_is_replaced_within_seconds() {
    let Some(db) = pg::fresh_database("killed_after_answer").await else {
        return;
    };
    let fake = FakeProvider::start(rotating()).await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = |i: usize| {
        replica_process(&dir, &db.url, &fake, i, "", |config| {
            config.tokens.lease_seconds = 5;
            config.oauth.http_timeout_seconds = 3;
        })
    };
    let a = spawn(0).await;
    let b = spawn(1).await;
    let mut ca = CredentialServiceClient::new(a.channel().await);
    let id = import(&mut ca, &fake, "acct-1", 1_000_000_000).await; // long expired
    let (req, other_access, _) = fake_grant_import(&fake, "acct-2", 4_000_000_000);
    let other = ca
        .import_credential(as_actor(req, ALICE.0, ALICE.1))
        .await
        .credential()
        .credential_id;

    let pid = a.pid().to_string();
    fake.on_refresh_answered(move || {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
    });
    let lost = token(&mut ca, &id).await;
    assert!(lost.is_err(), "A died before answering: {lost:?}");
    fake.clear_refresh_hook();
    assert_eq!(fake.refresh_calls(), 1);

    let mut cb = CredentialServiceClient::new(b.channel().await);
    let got = tokio::time::timeout(Duration::from_secs(15), token(&mut cb, &id))
        .await
        .unwrap_or_else(|_| panic!("the survivor did not answer within 15 s\n{}", b.log()));
    match &got {
        Ok(t) => assert!(fake.is_valid_access_token(&t.access_token)),
        Err(s) => {
            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
            assert_eq!(error_details(s).0, "REFRESH_INTERRUPTED", "{s:?}");
        }
    }
    // The provider saw the stored refresh token once more (the interrupted retry), no more.
    assert_eq!(fake.refresh_calls(), 2, "\n{}", b.log());
    if got.is_err() {
        // Later calls keep saying why.
        let again = token(&mut cb, &id).await.unwrap_err();
        assert_eq!(error_details(&again).0, "REFRESH_INTERRUPTED");
    }
    // The other credential was not touched.
    let t = token(&mut cb, &other).await.unwrap();
    assert_eq!(t.access_token, other_access);
    let stats = fake.grant_stats(&other_access).unwrap();
    assert_eq!((stats.refresh_calls, stats.revoked), (0, false));
    drop((a, b));
    db.drop_database().await;
}

/// A TCP proxy between the broker and PostgreSQL cuts every connection the moment the provider
/// answers a refresh. A short outage: the write is retried under the lease and the call
/// succeeds. An outage longer than the lease: the call fails, the rotated token set waits in
/// memory and is written once the database is back, without a second provider call. Either
/// way no rotated refresh token is lost and no old one is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_cut_at_the_write_loses_no_rotated_token() {
    let Some(db) = pg::fresh_database("cut_at_write").await else {
        return;
    };
    let (proxy, via) = proxied(&db.url).await;
    let proxy = Arc::new(proxy);
    let fake = FakeProvider::start(rotating()).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = TestBroker::config(&dir, via);
    with_fake_provider(&mut config, &fake, "fake", &[]);
    config.tokens.refresh_scan_interval_seconds = 0;
    config.tokens.lease_seconds = 6;
    config.oauth.http_timeout_seconds = 3;
    let b = TestBroker::start(config, dir).await.unwrap();
    let mut client = b.credentials().await;
    let id = import(&mut client, &fake, "acct-1", t0_secs() + 60).await;
    let p = proxy.clone();
    fake.on_refresh_answered(move || p.cut());

    // A short outage (the database is back after 2 s, within the 6 s lease).
    let restore = {
        let p = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            p.restore();
        })
    };
    let first = token(&mut client, &id).await;
    restore.await.unwrap();
    let first = first.expect("the write is retried until the database is back");
    assert!(fake.is_valid_access_token(&first.access_token));
    assert_eq!(fake.refresh_calls(), 1);

    // An outage longer than the lease: the caller is told to retry.
    b.clock.advance(Duration::from_secs(3600));
    let failed = token(&mut client, &id).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert_eq!(fake.refresh_calls(), 2);
    proxy.restore();
    fake.clear_refresh_hook();
    // Once the database is back the waiting token set is written: no provider call.
    let second = token(&mut client, &id).await.unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert!(fake.is_valid_access_token(&second.access_token));
    assert_eq!(
        fake.refresh_calls(),
        2,
        "no second use of the replaced refresh token"
    );

    // The database holds the live refresh token: the next refresh works.
    b.clock.advance(Duration::from_secs(3600));
    let third = token(&mut client, &id).await.unwrap();
    assert_ne!(third.access_token, second.access_token);
    assert_eq!(fake.refresh_calls(), 3);
    assert_eq!(
        fake.reuse_detections(),
        0,
        "no refresh token was ever reused"
    );
    drop(b);
    db.drop_database().await;
}

/// Two replicas whose clocks are 30 s apart (more than the lease): the one ahead does not take
/// the lease of the other while it talks to a slow provider, because leases are judged by the
/// database clock. One refresh, both callers served with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_with_skewed_clocks_do_not_take_a_live_lease() {
    let Some((db, fake, a)) = on_postgres("skewed_clocks").await else {
        return;
    };
    // Replica B shares the database and the key file; its clock runs 30 s ahead.
    let b = a.replica().await;
    b.clock.advance(Duration::from_secs(30));
    let mut ca = a.credentials().await;
    let mut cb = b.credentials().await;
    let id = import(&mut ca, &fake, "acct-1", 1_000_000_000).await; // long expired
    fake.configure(|f| f.token_delay = Duration::from_secs(2));
    let first = {
        let id = id.clone();
        tokio::spawn(async move { token(&mut ca, &id).await })
    };
    wait_until_sync(Duration::from_secs(5), "A calls the provider", || {
        fake.refresh_calls() > 0
    })
    .await;
    let second = token(&mut cb, &id).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(fake.refresh_calls(), 1, "one refresh for the credential");
    assert_eq!(first.access_token, second.access_token);
    assert_eq!(
        b.issuance_stats().lease_waits,
        1,
        "B waited on A's live lease"
    );
    assert_eq!(fake.reuse_detections(), 0);
    drop((a, b));
    db.drop_database().await;
}

/// Replica B reaches PostgreSQL through a proxy; its change feed (LISTEN) goes down with it.
/// From then on B answers nothing from its cache: a disconnect on replica A, which B cannot
/// hear about, is never hidden by a cached token. Once the database is back B reads it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_its_change_feed_a_replica_serves_nothing_from_its_cache() {
    let Some((db, fake, a)) = on_postgres("feed_down").await else {
        return;
    };
    let (proxy, via) = proxied(&db.url).await;
    // B shares A's key file (same data directory).
    let mut config_b = TestBroker::config(&a.dir, via);
    with_fake_provider(&mut config_b, &fake, "fake", &[]);
    config_b.tokens.refresh_scan_interval_seconds = 0;
    let b = TestBroker::start(config_b, a.dir.clone()).await.unwrap();
    let mut ca = a.credentials().await;
    let mut cb = b.credentials().await;
    let id = import(&mut ca, &fake, "acct-1", t0_secs() + 3600).await;
    // Once B's change feed is up, B serves from its cache.
    let started = std::time::Instant::now();
    while b.issuance_stats().cache_hits == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B never served from its cache"
        );
        token(&mut cb, &id).await.unwrap();
    }

    proxy.cut();
    // B notices that its feed is down and stops answering from memory (the database is
    // unreachable for it too, so it answers UNAVAILABLE).
    let refused = wait_for(
        Duration::from_secs(5),
        "B stops serving from its cache without its change feed",
        || {
            let (mut c, id) = (cb.clone(), id.clone());
            async move { token(&mut c, &id).await.map_or_else(Ok, |_| Err("served")) }
        },
    )
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let hits = b.issuance_stats().cache_hits;
    ca.disconnect_credential(as_actor(
        pb::DisconnectCredentialRequest {
            credential_id: id.clone(),
        },
        ALICE.0,
        ALICE.1,
    ))
    .await
    .unwrap();
    // Not the cached token of a credential disconnected meanwhile: B cannot tell, so it refuses.
    let unsure = token(&mut cb, &id).await.unwrap_err();
    assert_eq!(unsure.code(), Code::Unavailable, "{unsure:?}");
    proxy.restore();
    wait_for(
        Duration::from_secs(10),
        "B reads the database again",
        || {
            let (mut c, id) = (cb.clone(), id.clone());
            async move {
                let s = token(&mut c, &id)
                    .await
                    .expect_err("a disconnected credential is never served");
                if error_details(&s).0 == "CREDENTIAL_DISCONNECTED" {
                    Ok(())
                } else {
                    Err(s)
                }
            }
        },
    )
    .await;
    assert_eq!(
        b.issuance_stats().cache_hits,
        hits,
        "nothing served from memory"
    );
    drop((a, b));
    db.drop_database().await;
}

/// An edit no change notification announces (made behind the broker's back) is seen once the
/// cached entry reaches `tokens.cache_max_age_seconds`: the member list is read again.
#[tokio::test]
async fn a_cached_member_list_is_read_again_after_the_maximum_age() {
    use sqlx::Connection;
    const BOB: (&str, &str) = ("u-bob", "bob@example.com");
    let fake = FakeProvider::start(rotating()).await;
    let b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;
    let id = import(&mut client, &fake, "acct-1", t0_secs() + 3600).await;
    let mut members = b.members().await;
    members
        .add_member(as_actor(
            pb::AddMemberRequest {
                credential_id: id.clone(),
                email: BOB.1.into(),
                role: pb::MemberRole::Member as i32,
            },
            ALICE.0,
            ALICE.1,
        ))
        .await
        .unwrap();
    members
        .accept_invitation(as_actor(
            pb::AcceptInvitationRequest {
                credential_id: id.clone(),
            },
            BOB.0,
            BOB.1,
        ))
        .await
        .unwrap();
    let as_bob = |id: &str| {
        as_actor(
            pb::GetAccessTokenRequest {
                credential_id: id.into(),
                ..Default::default()
            },
            BOB.0,
            BOB.1,
        )
    };
    client.get_access_token(as_bob(&id)).await.unwrap();
    let url = format!("sqlite://{}", b.dir.path().join("broker.db").display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM credential_members WHERE credential_id = $1 AND email = $2")
        .bind(&id)
        .bind(BOB.1)
        .execute(&mut raw)
        .await
        .unwrap();
    // Nothing announced the removal: the cached member list still lets Bob in...
    client.get_access_token(as_bob(&id)).await.unwrap();
    // ...until it is older than the maximum age.
    b.clock.advance(Duration::from_secs(
        b.config.tokens.cache_max_age_seconds + 1,
    ));
    let denied = client.get_access_token(as_bob(&id)).await.unwrap_err();
    assert_eq!(denied.code(), Code::NotFound, "{denied:?}");
    // Alice, still a member, is served (from the database, then from memory again).
    token(&mut client, &id).await.unwrap();
}

/// Refresh-ahead claims the due credentials in one batch and skips the one another replica is
/// refreshing: it never waits on a lease it does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_ahead_skips_credentials_another_replica_is_refreshing() {
    let Some((db, fake, a)) = on_postgres("refresh_ahead_skips").await else {
        return;
    };
    let b = a.replica().await;
    let mut ca = a.credentials().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(import(&mut ca, &fake, &format!("acct-{n}"), 1_000_000_000).await); // due
    }
    fake.configure(|f| f.token_delay = Duration::from_secs(2));
    let busy = {
        let id = ids[0].clone();
        tokio::spawn(async move { token(&mut ca, &id).await })
    };
    wait_until_sync(Duration::from_secs(5), "A calls the provider", || {
        fake.refresh_calls() > 0
    })
    .await;
    assert_eq!(b.refresh_due().await, 2, "the two credentials nobody holds");
    assert_eq!(b.issuance_stats().lease_waits, 0, "no lease waited on");
    busy.await.unwrap().unwrap();
    assert_eq!(fake.refresh_calls(), 3, "one refresh per credential");
    assert_eq!(fake.reuse_detections(), 0);
    drop((a, b));
    db.drop_database().await;
}

/// A flight whose callers all went away before the provider was called is abandoned: it never
/// calls the provider. (A refresh already sent always completes and is stored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_nobody_waits_for_is_abandoned_before_the_provider_call() {
    let fake = FakeProvider::start(rotating()).await;
    let a = broker_on(&fake, None).await;
    let b = a.replica().await;
    let mut ca = a.credentials().await;
    let mut cb = b.credentials().await;
    let id = import(&mut ca, &fake, "acct-1", t0_secs() - 10).await;

    // A takes the lease and waits on a slow provider that will fail.
    fake.configure(|f| {
        f.token_delay = Duration::from_millis(1500);
        f.token_failure = Some(TokenFailure::ServerError);
    });
    let slow = {
        let (mut ca, id) = (ca.clone(), id.clone());
        tokio::spawn(async move { token(&mut ca, &id).await })
    };
    wait_until_sync(Duration::from_secs(5), "A calls the provider", || {
        fake.refresh_calls() > 0
    })
    .await;
    // B's caller gives up after 200 ms while B waits for A's lease.
    let mut req = as_actor(
        pb::GetAccessTokenRequest {
            credential_id: id.clone(),
            ..Default::default()
        },
        ALICE.0,
        ALICE.1,
    );
    req.set_timeout(Duration::from_millis(200));
    let gave_up = cb.get_access_token(req).await.unwrap_err();
    assert!(
        matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{gave_up:?}"
    );
    let attempts_by_a = {
        let _ = slow.await;
        fake.refresh_calls()
    };
    fake.configure(|f| {
        f.token_delay = Duration::ZERO;
        f.token_failure = None;
    });
    // A released the lease without new tokens; B's flight sees nobody waiting and stops. What
    // is checked is an absence (no call), so the test gives it a window to show up in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.refresh_calls(),
        attempts_by_a,
        "B's abandoned flight never called the provider"
    );
}

/// Every issued token is audited; identical issuances close together share one row that counts them.
#[tokio::test]
async fn every_issued_token_is_counted_in_the_audit_log() {
    let fake = FakeProvider::start(rotating()).await;
    let b = broker_on(&fake, None).await;
    let mut client = b.credentials().await;
    let id = import(&mut client, &fake, "acct-1", t0_secs() + 3600).await;
    for _ in 0..20 {
        token(&mut client, &id).await.unwrap();
    }
    let mut other = as_actor(
        pb::GetAccessTokenRequest {
            credential_id: id.clone(),
            workflow_id: "wf-2".into(),
            ..Default::default()
        },
        ALICE.0,
        ALICE.1,
    );
    other.set_timeout(Duration::from_secs(5));
    client.get_access_token(other).await.unwrap();
    b.flush_audit().await;
    let events = client
        .list_audit_events(pb::ListAuditEventsRequest {
            credential_id: id,
            action: "token.issue".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let count = |e: &pb::AuditEvent| {
        e.detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix("count="))
            .map_or(1, |n| n.parse::<u64>().unwrap())
    };
    let total: u64 = events.iter().map(count).sum();
    assert_eq!(total, 21, "{events:?}");
    assert!(events.iter().any(|e| e.detail.contains("workflow=wf-2")));
    assert!(events.len() < 21, "identical issuances share rows");
    assert!(
        events
            .iter()
            .all(|e| e.outcome == "ok" && e.actor == ALICE.0)
    );
}
