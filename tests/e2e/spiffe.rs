//! SPIFFE workload identity: callers prove a SPIFFE ID with a JWT-SVID (verified against the
//! trust domain's bundle, a JWKS file the test rewrites to rotate keys) or with an X.509-SVID
//! over mTLS (its URI SAN), and get the role of the `[[callers]]` entry with that `spiffe_id`.

use crate::support::broker::{TestBroker, error_details};
use crate::support::jwt::Signer;
use crate::support::pki::{Pki, channel, tls_config};
use cb_broker::clock::Clock;
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use credential_broker::runtime::config::{CallerConfig, SpiffeConfig};
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::Duration;
use tonic::Code;

const TRUST_DOMAIN: &str = "example.org";
const AUDIENCE: &str = "credential-broker";
const EXECUTOR_ID: &str = "spiffe://example.org/ns/workflows/sa/executor";
const OPERATOR_ID: &str = "spiffe://example.org/ns/ops/sa/console";
const WEB_ID: &str = "spiffe://example.org/ns/web/sa/backend";

fn caller(name: &str, role: &str, spiffe_id: &str) -> CallerConfig {
    CallerConfig {
        name: name.into(),
        role: role.into(),
        spiffe_id: Some(spiffe_id.into()),
        ..Default::default()
    }
}

/// Writes `keys` as the trust domain's JWT bundle (SPIFFE bundle format: JWKS, `use: jwt-svid`).
fn write_bundle(path: &std::path::Path, keys: &[&Signer]) {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            let mut jwk = k.jwk();
            jwk["use"] = json!("jwt-svid");
            jwk
        })
        .collect();
    let bundle = json!({ "keys": keys, "spiffe_sequence": 1 });
    std::fs::write(path, bundle.to_string()).unwrap();
}

/// ListAuditEvents (operators only) with `bearer`: its code and ErrorInfo reason.
async fn audit_as(
    c: &mut CredentialServiceClient<tonic::transport::Channel>,
    bearer: &str,
) -> (Code, String) {
    let mut r = tonic::Request::new(pb::ListAuditEventsRequest::default());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    match c.list_audit_events(r).await {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), error_details(&s).0),
    }
}

#[tokio::test]
async fn jwt_svids_map_to_caller_roles_and_the_bundle_rotates() {
    let (dir, mut config) = TestBroker::sqlite_config();
    let bundle = dir.path().join("jwt-bundle.json");
    let spire = Signer::new("spire-1", Algorithm::ES256);
    let outsider = Signer::new("spire-1", Algorithm::ES256);
    write_bundle(&bundle, &[&spire]);
    config.callers = vec![
        caller("ops", "operator", OPERATOR_ID),
        caller("executor", "executor", EXECUTOR_ID),
    ];
    config.spiffe = Some(SpiffeConfig {
        trust_domain: TRUST_DOMAIN.into(),
        audience: AUDIENCE.into(),
        jwks_file: Some(bundle.clone()),
        ..Default::default()
    });
    let b = TestBroker::start(config, dir.clone()).await.unwrap();
    let mut c = b.credentials().await;
    let svid = |key: &Signer, sub: &str, aud: &str, exp_in: i64| {
        let now = b.clock.now().as_millis() / 1000;
        key.sign(&json!({ "sub": sub, "aud": [aud], "exp": now + exp_in, "iat": now }))
    };

    // Each SPIFFE ID gets its caller's role.
    assert_eq!(
        audit_as(&mut c, &svid(&spire, OPERATOR_ID, AUDIENCE, 300)).await,
        (Code::Ok, String::new())
    );
    assert_eq!(
        audit_as(&mut c, &svid(&spire, EXECUTOR_ID, AUDIENCE, 300)).await,
        (Code::PermissionDenied, "CALLER_NOT_ALLOWED".into())
    );
    // Refused: another audience, another trust domain, an unmapped ID, expired, a key outside
    // the bundle (same kid, other key), a Kubernetes-looking subject.
    let unauthenticated = (Code::Unauthenticated, "UNAUTHENTICATED".to_owned());
    for (what, token) in [
        ("audience", svid(&spire, OPERATOR_ID, "kubernetes", 300)),
        (
            "trust domain",
            svid(
                &spire,
                "spiffe://evil.example/ns/ops/sa/console",
                AUDIENCE,
                300,
            ),
        ),
        (
            "unmapped",
            svid(
                &spire,
                "spiffe://example.org/ns/ops/sa/other",
                AUDIENCE,
                300,
            ),
        ),
        ("expired", svid(&spire, OPERATOR_ID, AUDIENCE, -60)),
        ("key", svid(&outsider, OPERATOR_ID, AUDIENCE, 300)),
        (
            "not spiffe",
            svid(&spire, "system:serviceaccount:ops:console", AUDIENCE, 300),
        ),
    ] {
        assert_eq!(audit_as(&mut c, &token).await, unauthenticated, "{what}");
    }

    // The agent rotates the bundle: a new key is accepted once the file is re-read (an unknown
    // kid reads it again, at most every jwks_min_refetch_seconds of the broker's clock).
    let rotated = Signer::new("spire-2", Algorithm::RS256);
    write_bundle(&bundle, &[&rotated]);
    b.clock.advance(Duration::from_secs(31));
    assert_eq!(
        audit_as(&mut c, &svid(&rotated, OPERATOR_ID, AUDIENCE, 300)).await,
        (Code::Ok, String::new())
    );
    // …and the retired key no longer verifies.
    assert_eq!(
        audit_as(&mut c, &svid(&spire, OPERATOR_ID, AUDIENCE, 300)).await,
        unauthenticated
    );
}

#[tokio::test]
async fn x509_svids_authenticate_by_their_spiffe_id() {
    let server_pki = Pki::new("server ca");
    let trust_domain_ca = Pki::new("example.org spire ca");
    // The client CA is the trust domain's X.509 bundle.
    let (dir, mut config) = tls_config(&server_pki, &trust_domain_ca);
    config.callers = vec![
        caller("web", "web", WEB_ID),
        caller("executor", "executor", EXECUTOR_ID),
    ];
    let b = TestBroker::start(config, dir.clone()).await.unwrap();
    let list = || tonic::Request::new(pb::ListProvidersRequest::default());
    let client = |svid: (String, String)| {
        let (addr, ca) = (b.addr(), server_pki.ca_pem.clone());
        async move { CredentialServiceClient::new(channel(addr, &ca, Some(&svid)).await.unwrap()) }
    };
    // The web SVID: allowed ListProviders (a web RPC).
    let mut web = client(trust_domain_ca.svid(WEB_ID)).await;
    web.list_providers(list()).await.unwrap();
    // The executor SVID: its role does not include ListProviders.
    let mut executor = client(trust_domain_ca.svid(EXECUTOR_ID)).await;
    let err = executor.list_providers(list()).await.unwrap_err();
    assert_eq!(
        (err.code(), error_details(&err).0.as_str()),
        (Code::PermissionDenied, "CALLER_NOT_ALLOWED")
    );
    // An SVID of the trust domain naming no configured caller.
    let mut stranger = client(trust_domain_ca.svid("spiffe://example.org/ns/x/sa/y")).await;
    assert_eq!(
        stranger.list_providers(list()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}
