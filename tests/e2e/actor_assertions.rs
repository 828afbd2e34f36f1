//! Provable identity. Verified actors: the end user is taken only from a signed, short-lived
//! actor assertion (a JWT in `x-actor-assertion`), checked against static keys and a JWKS that
//! rotates without restart. Workload identity: a caller authenticates with a Kubernetes-style
//! service-account token and gets the role of the `[[callers]]` entry it maps to. The signing
//! keys exist only in this test.

use crate::support::broker::{BrokerProcess, TestBroker, config_toml, error_details};
use crate::support::client::Answered;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cb_broker::clock::Clock;
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use credential_broker::layers::auth::token_sha256_hex;
use credential_broker::runtime::config::{
    ActorAssertionsConfig, CallerConfig, PublicKeyConfig, WorkloadIdentityConfig,
};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const WEB_TOKEN: &str = "web-token-assert-1";
const LEGACY_TOKEN: &str = "legacy-web-token-2";
const OPERATOR_TOKEN: &str = "operator-token-assert-3";
const ISSUER: &str = "https://web.example.test";
const AUDIENCE: &str = "credential-broker";
const STATIC_KID: &str = "static-ed";

/// A signing key held by the test, with its public halves for the broker.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    public_pem: String,
}

impl Signer {
    fn new(kid: &str, alg: Algorithm) -> Self {
        let rc_alg = match alg {
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
            other => panic!("no test key for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rc_alg).unwrap();
        let private = pair.serialize_pem();
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private.as_bytes()),
        }
        .unwrap();
        Self {
            kid: kid.to_owned(),
            alg,
            key,
            public_pem: pair.public_key_pem(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// Claims of a valid assertion for `user` at the broker's current time.
fn claims(b: &TestBroker, user: (&str, &str)) -> serde_json::Value {
    claims_at(b.clock.now().as_millis() / 1000, user)
}

fn claims_at(now: i64, user: (&str, &str)) -> serde_json::Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user.0,
        "email": user.1,
        "iat": now,
        "exp": now + 60,
        "jti": uuid::Uuid::now_v7().to_string(),
    })
}

const ALICE: (&str, &str) = ("u-alice", "alice@example.com");
const BOB: (&str, &str) = ("u-bob", "bob@example.com");

/// A JWKS served over HTTP on loopback; the test swaps its keys and counts fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<serde_json::Value>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = json!({ "keys": *k.lock().unwrap() }).to_string();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/jwks.json"),
            keys,
            fetches,
        }
    }

    fn publish(&self, keys: Vec<serde_json::Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn caller(name: &str, role: &str, token: &str, unsigned_actor: bool) -> CallerConfig {
    CallerConfig {
        name: name.into(),
        role: role.into(),
        token_sha256: Some(token_sha256_hex(token)),
        mtls_identity: None,
        unsigned_actor,
        service_account: None,
    }
}

/// A broker whose `web` caller must sign actors (static key `static_key`, plus the JWKS), and
/// whose `legacy-web` caller may still send plain metadata.
async fn broker(static_key: &Signer, jwks_url: &str) -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    config.callers = vec![
        caller("web", "web", WEB_TOKEN, false),
        caller("legacy-web", "web", LEGACY_TOKEN, true),
        caller("operator", "operator", OPERATOR_TOKEN, false),
    ];
    config.actor_assertions = Some(ActorAssertionsConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(jwks_url.into()),
        public_keys: vec![PublicKeyConfig {
            kid: STATIC_KID.into(),
            pem: Some(static_key.public_pem.clone()),
            ..Default::default()
        }],
        ..Default::default()
    });
    TestBroker::start(config, dir).await.unwrap()
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn with_assertion<T>(msg: T, assertion: &str) -> tonic::Request<T> {
    let mut r = with_token(msg, WEB_TOKEN);
    r.metadata_mut()
        .insert("x-actor-assertion", assertion.parse().unwrap());
    r
}

fn with_plain_actor<T>(mut r: tonic::Request<T>, user: (&str, &str)) -> tonic::Request<T> {
    r.metadata_mut()
        .insert("x-actor-id", user.0.parse().unwrap());
    r.metadata_mut()
        .insert("x-actor-email", user.1.parse().unwrap());
    r
}

/// A credential in ws1 whose Admin is alice (imported by the operator, which names no actor).
async fn alice_credential(c: &mut CredentialServiceClient<Channel>) -> String {
    let request = pb::ImportCredentialRequest {
        workspace_id: "ws1".into(),
        provider_id: "gmail".into(),
        account: Some(pb::ProviderAccount {
            subject: "acct-alice".into(),
            label: "alice@example.com".into(),
        }),
        display_name: "Alice's mail".into(),
        tokens: Some(pb::TokenSet {
            access_token: "at-alice".into(),
            refresh_token: "rt-alice".into(),
            access_token_expire_time: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
        admin_email: ALICE.1.into(),
        ..Default::default()
    };
    c.import_credential(with_token(request, OPERATOR_TOKEN))
        .await
        .credential()
        .credential_id
}

fn get(id: &str) -> pb::GetCredentialRequest {
    pb::GetCredentialRequest {
        credential_id: id.into(),
    }
}

fn refused(
    result: Result<tonic::Response<pb::GetCredentialResponse>, tonic::Status>,
) -> (Code, String) {
    let status = result.expect_err("the call must be refused");
    (status.code(), error_details(&status).0)
}

#[tokio::test]
async fn the_actor_is_taken_only_from_a_verified_assertion() {
    let key = Signer::new(STATIC_KID, Algorithm::EdDSA);
    let jwks = JwksServer::start(vec![]).await;
    let b = broker(&key, &jwks.url).await;
    let mut c = b.credentials().await;
    let id = alice_credential(&mut c).await;

    // Alice, proven: she is the credential's Admin.
    let got = c
        .get_credential(with_assertion(get(&id), &key.sign(&claims(&b, ALICE))))
        .await
        .credential();
    assert_eq!(got.caller_role, pb::MemberRole::Admin as i32);

    // Bob, proven, with plain metadata naming alice alongside: the assertion alone counts.
    let r = with_plain_actor(with_assertion(get(&id), &key.sign(&claims(&b, BOB))), ALICE);
    assert_eq!(
        refused(c.get_credential(r).await),
        (Code::NotFound, "CREDENTIAL_NOT_FOUND".into())
    );

    // Plain metadata from a caller that must sign is refused, not ignored.
    let r = with_plain_actor(with_token(get(&id), WEB_TOKEN), ALICE);
    assert_eq!(
        refused(c.get_credential(r).await),
        (Code::PermissionDenied, "ACTOR_ASSERTION_REQUIRED".into())
    );
    // The migration caller may still send it.
    let r = with_plain_actor(with_token(get(&id), LEGACY_TOKEN), ALICE);
    c.get_credential(r).await.unwrap();
    // Neither: the call acts for nobody, and GetCredential needs somebody.
    let (_, reason) = refused(c.get_credential(with_token(get(&id), WEB_TOKEN)).await);
    assert_eq!(reason, "ACTOR_REQUIRED");
}

#[tokio::test]
async fn bad_assertions_are_refused_with_distinct_reasons_and_never_recorded() {
    let key = Signer::new(STATIC_KID, Algorithm::EdDSA);
    let impostor = Signer::new(STATIC_KID, Algorithm::EdDSA);
    let jwks = JwksServer::start(vec![]).await;
    let b = broker(&key, &jwks.url).await;
    let mut c = b.credentials().await;
    let id = alice_credential(&mut c).await;
    let unauthenticated = |reason: &str| (Code::Unauthenticated, reason.to_owned());
    let mut presented = Vec::new();
    let mut attempt = async |c: &mut CredentialServiceClient<Channel>, token: String| {
        presented.push(token.clone());
        refused(c.get_credential(with_assertion(get(&id), &token)).await)
    };

    // Forged: signed by another key under the same kid, or claims changed after signing.
    let forged = impostor.sign(&claims(&b, ALICE));
    assert_eq!(
        attempt(&mut c, forged).await,
        unauthenticated("ACTOR_ASSERTION_INVALID")
    );
    let genuine = key.sign(&claims(&b, BOB));
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let mut swapped = claims(&b, ALICE);
    swapped["jti"] = json!("swapped");
    let payload = URL_SAFE_NO_PAD.encode(swapped.to_string());
    parts[1] = &payload;
    assert_eq!(
        attempt(&mut c, parts.join(".")).await,
        unauthenticated("ACTOR_ASSERTION_INVALID")
    );

    // Expired: valid when signed, presented after the clock moved past exp and the leeway.
    let later = key.sign(&claims(&b, ALICE));
    b.clock.advance(Duration::from_secs(60 + 31));
    assert_eq!(
        attempt(&mut c, later).await,
        unauthenticated("ACTOR_ASSERTION_EXPIRED")
    );

    let mut wrong_aud = claims(&b, ALICE);
    wrong_aud["aud"] = json!(["another-service"]);
    assert_eq!(
        attempt(&mut c, key.sign(&wrong_aud)).await,
        unauthenticated("ACTOR_ASSERTION_WRONG_AUDIENCE")
    );
    let mut wrong_iss = claims(&b, ALICE);
    wrong_iss["iss"] = json!("https://elsewhere.example.test");
    assert_eq!(
        attempt(&mut c, key.sign(&wrong_iss)).await,
        unauthenticated("ACTOR_ASSERTION_WRONG_ISSUER")
    );
    assert_eq!(
        attempt(&mut c, key.sign_as("nobody-knows", &claims(&b, ALICE))).await,
        unauthenticated("ACTOR_ASSERTION_KEY_UNKNOWN")
    );

    // Replayed: the first use passes, the second is refused.
    let once = key.sign(&claims(&b, ALICE));
    c.get_credential(with_assertion(get(&id), &once))
        .await
        .unwrap();
    assert_eq!(
        attempt(&mut c, once).await,
        unauthenticated("ACTOR_ASSERTION_REPLAYED")
    );

    // A lifetime over five minutes, or no jti, is not an assertion this broker accepts.
    let mut long = claims(&b, ALICE);
    long["exp"] = json!(long["iat"].as_i64().unwrap() + 3600);
    assert_eq!(
        attempt(&mut c, key.sign(&long)).await,
        unauthenticated("ACTOR_ASSERTION_INVALID")
    );
    let mut no_jti = claims(&b, ALICE);
    no_jti.as_object_mut().unwrap().remove("jti");
    assert_eq!(
        attempt(&mut c, key.sign(&no_jti)).await,
        unauthenticated("ACTOR_ASSERTION_INVALID")
    );

    // The refusals are audited by reason; no assertion appears in the audit log.
    b.app().flush_audit().await;
    let events = c
        .list_audit_events(with_token(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            },
            OPERATOR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let outcomes: Vec<&str> = events.iter().map(|e| e.outcome.as_str()).collect();
    for reason in [
        "ACTOR_ASSERTION_INVALID",
        "ACTOR_ASSERTION_EXPIRED",
        "ACTOR_ASSERTION_WRONG_AUDIENCE",
        "ACTOR_ASSERTION_WRONG_ISSUER",
        "ACTOR_ASSERTION_KEY_UNKNOWN",
        "ACTOR_ASSERTION_REPLAYED",
    ] {
        assert!(outcomes.contains(&reason), "{reason} in {outcomes:?}");
    }
    let recorded = format!("{events:?}");
    for token in &presented {
        for part in token.split('.').filter(|p| p.len() > 16) {
            assert!(!recorded.contains(part), "an assertion part was recorded");
        }
    }
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let key = Signer::new(STATIC_KID, Algorithm::EdDSA);
    let rsa = Signer::new("rsa-key", Algorithm::RS256);
    let jwks = JwksServer::start(vec![]).await;
    let b = broker(&key, &jwks.url).await;
    let mut c = b.credentials().await;
    let id = alice_credential(&mut c).await;
    let invalid = (Code::Unauthenticated, "ACTOR_ASSERTION_INVALID".to_owned());

    // HS256 "signed" with the public key as the HMAC secret, naming the Ed25519 key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(STATIC_KID.into());
    let hs = jsonwebtoken::encode(
        &header,
        &claims(&b, ALICE),
        &EncodingKey::from_secret(key.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        refused(c.get_credential(with_assertion(get(&id), &hs)).await),
        invalid
    );

    // alg none, no signature.
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": STATIC_KID}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims(&b, ALICE).to_string());
    let none = format!("{header}.{body}.");
    assert_eq!(
        refused(c.get_credential(with_assertion(get(&id), &none)).await),
        invalid
    );

    // RS256 under the kid of the Ed25519 key: the key decides the algorithm, not the token.
    let rs = rsa.sign_as(STATIC_KID, &claims(&b, ALICE));
    assert_eq!(
        refused(c.get_credential(with_assertion(get(&id), &rs)).await),
        invalid
    );
}

#[tokio::test]
async fn keys_rotate_through_the_jwks_without_restart() {
    let static_key = Signer::new(STATIC_KID, Algorithm::EdDSA);
    let old = Signer::new("jwks-2026-01", Algorithm::ES256);
    let new = Signer::new("jwks-2026-02", Algorithm::RS256);
    let jwks = JwksServer::start(vec![old.jwk()]).await;
    let b = broker(&static_key, &jwks.url).await;
    assert_eq!(jwks.fetches(), 1, "fetched once at start");
    let mut c = b.credentials().await;
    let id = alice_credential(&mut c).await;

    c.get_credential(with_assertion(get(&id), &old.sign(&claims(&b, ALICE))))
        .await
        .unwrap();

    // The issuer rotates: only the new key is published.
    jwks.publish(vec![new.jwk()]);
    // An unknown kid fetches the JWKS again, but not more often than jwks_min_refetch_seconds.
    assert_eq!(
        refused(
            c.get_credential(with_assertion(get(&id), &new.sign(&claims(&b, ALICE))))
                .await
        ),
        (Code::Unauthenticated, "ACTOR_ASSERTION_KEY_UNKNOWN".into())
    );
    assert_eq!(jwks.fetches(), 1, "refetch is rate-limited");
    b.clock.advance(Duration::from_secs(31));
    c.get_credential(with_assertion(get(&id), &new.sign(&claims(&b, ALICE))))
        .await
        .unwrap();
    assert_eq!(jwks.fetches(), 2);

    // The retired key no longer verifies, and probing unknown kids does not hammer the JWKS.
    for signer in [&old, &old] {
        assert_eq!(
            refused(
                c.get_credential(with_assertion(get(&id), &signer.sign(&claims(&b, ALICE))))
                    .await
            ),
            (Code::Unauthenticated, "ACTOR_ASSERTION_KEY_UNKNOWN".into())
        );
    }
    assert_eq!(jwks.fetches(), 2);
    // The static key keeps working beside the JWKS.
    c.get_credential(with_assertion(
        get(&id),
        &static_key.sign(&claims(&b, ALICE)),
    ))
    .await
    .unwrap();
}

const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const OPS_SA: &str = "system:serviceaccount:ops:broker-admin";
const EXECUTOR_SA: &str = "system:serviceaccount:workflows:executor";

/// A projected service-account token as the kubelet would mount it.
fn sa_token(b: &TestBroker, cluster: &Signer, sub: &str, aud: &str) -> String {
    let now = b.clock.now().as_millis() / 1000;
    cluster.sign(&json!({
        "iss": CLUSTER_ISSUER,
        "aud": [aud],
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "kubernetes.io": {"namespace": "ops", "serviceaccount": {"name": "broker-admin"}},
    }))
}

fn list_audit(token: &str) -> tonic::Request<pb::ListAuditEventsRequest> {
    with_token(pb::ListAuditEventsRequest::default(), token)
}

#[tokio::test]
async fn kubernetes_service_account_tokens_map_to_caller_roles() {
    let cluster = Signer::new("cluster-key-1", Algorithm::RS256);
    let other_cluster = Signer::new("cluster-key-1", Algorithm::RS256);
    let jwks = JwksServer::start(vec![cluster.jwk()]).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    let by_service_account = |name: &str, role: &str, sa: &str| CallerConfig {
        name: name.into(),
        role: role.into(),
        token_sha256: None,
        mtls_identity: None,
        unsigned_actor: false,
        service_account: Some(sa.into()),
    };
    config.callers = vec![
        by_service_account("ops", "operator", OPS_SA),
        by_service_account("executor", "executor", EXECUTOR_SA),
    ];
    config.workload_identity = Some(WorkloadIdentityConfig {
        issuer: CLUSTER_ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(jwks.url.clone()),
        ..Default::default()
    });
    let b = TestBroker::start(config, dir).await.unwrap();
    let mut c = b.credentials().await;
    let unauthenticated = |r: Result<_, tonic::Status>| {
        let status = r.map(drop).expect_err("must be refused");
        (status.code(), error_details(&status).0)
    };
    let refused_as_unknown = (Code::Unauthenticated, "UNAUTHENTICATED".to_owned());

    // The operator's service account gets the operator role, for as long as its token lives.
    let ops = sa_token(&b, &cluster, OPS_SA, AUDIENCE);
    c.list_audit_events(list_audit(&ops)).await.unwrap();
    c.list_credentials(with_token(
        pb::ListCredentialsRequest {
            workspace_id: "ws1".into(),
            ..Default::default()
        },
        &ops,
    ))
    .await
    .unwrap();
    c.list_audit_events(list_audit(&ops)).await.unwrap();
    // The executor's gets the executor role: no audit log.
    let exec = sa_token(&b, &cluster, EXECUTOR_SA, AUDIENCE);
    let denied = c.list_audit_events(list_audit(&exec)).await.unwrap_err();
    assert_eq!(
        (denied.code(), error_details(&denied).0),
        (Code::PermissionDenied, "CALLER_NOT_ALLOWED".into())
    );

    // A token for another audience (say, the cluster's own API), of an unmapped account, from
    // another cluster's key, or with no token at all: unauthenticated.
    for token in [
        sa_token(&b, &cluster, OPS_SA, "https://kubernetes.default.svc"),
        sa_token(
            &b,
            &cluster,
            "system:serviceaccount:ops:someone-else",
            AUDIENCE,
        ),
        sa_token(&b, &other_cluster, OPS_SA, AUDIENCE),
    ] {
        assert_eq!(
            unauthenticated(c.list_audit_events(list_audit(&token)).await),
            refused_as_unknown
        );
    }
    let anonymous = c
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await;
    assert_eq!(unauthenticated(anonymous), refused_as_unknown);

    // Expired tokens stop working.
    b.clock.advance(Duration::from_secs(3600 + 31));
    assert_eq!(
        unauthenticated(c.list_audit_events(list_audit(&ops)).await),
        refused_as_unknown
    );
}

/// The real binary at TRACE: assertions, accepted or refused, never reach its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_never_reach_the_trace_log() {
    let key = Signer::new(STATIC_KID, Algorithm::EdDSA);
    let impostor = Signer::new(STATIC_KID, Algorithm::EdDSA);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("broker.db").display());
    let config = TestBroker::config(&dir, db.clone());
    let pem = dir.path().join("actor-key.pem");
    std::fs::write(&pem, &key.public_pem).unwrap();
    let toml = config_toml(&config, &db).replace("filter = \"info\"", "filter = \"trace\"")
        + &format!(
            "[[callers]]\nname = \"web\"\nrole = \"web\"\ntoken_sha256 = {:?}\n\
             [actor_assertions]\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n\
             [[actor_assertions.public_keys]]\nkid = {STATIC_KID:?}\npem_file = {:?}\n",
            token_sha256_hex(WEB_TOKEN),
            pem.display().to_string()
        );
    let broker = BrokerProcess::spawn(dir.path(), "traced", &toml).await;
    let mut c = CredentialServiceClient::new(broker.channel().await);
    // The binary runs on the system clock.
    let now = cb_broker::clock::SystemClock.now().as_millis() / 1000;
    let list = || pb::ListCredentialsRequest {
        workspace_id: "ws1".into(),
        ..Default::default()
    };
    let good = key.sign(&claims_at(now, ALICE));
    let forged = impostor.sign(&claims_at(now, ALICE));
    let mut expired = claims_at(now - 200, ALICE);
    expired["exp"] = json!(now - 100);
    let expired = key.sign(&expired);
    c.list_credentials(with_assertion(list(), &good))
        .await
        .unwrap();
    for token in [&good, &forged, &expired] {
        c.list_credentials(with_assertion(list(), token))
            .await
            .unwrap_err();
    }
    let log = broker.log();
    assert!(log.contains("TRACE"), "the broker really logged at TRACE");
    assert!(
        log.contains("ACTOR_ASSERTION_REPLAYED"),
        "refusals are logged"
    );
    for token in [&good, &forged, &expired] {
        for part in token.split('.').skip(1) {
            assert!(!log.contains(part), "an assertion part reached the log");
        }
    }
}
