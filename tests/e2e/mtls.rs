//! TLS on the listener and calling services identified by client certificates (mTLS), next to
//! bearer-token callers on the same port.

use crate::support::broker::{TestBroker, as_actor, assert_status};
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use credential_broker::layers::auth::token_sha256_hex;
use credential_broker::runtime::config::CallerConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::sync::Arc;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

async fn channel(
    addr: std::net::SocketAddr,
    ca: &str,
    client: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn callers_authenticate_with_client_certificates_or_tokens() {
    let server_pki = Pki::new("server ca");
    let client_pki = Pki::new("client ca");
    let other_pki = Pki::new("someone else's ca");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (server_cert, server_key) = server_pki.leaf(&["localhost"]);
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    config.tls.cert_file = Some(write("server.crt", &server_cert));
    config.tls.key_file = Some(write("server.key", &server_key));
    config.tls.client_ca_file = Some(write("clients-ca.crt", &client_pki.ca_pem));
    config.callers = vec![
        CallerConfig {
            name: "web".into(),
            role: "web".into(),
            token_sha256: None,
            mtls_identity: Some("web.internal".into()),
            unsigned_actor: true,
            service_account: None,
        },
        CallerConfig {
            name: "executor".into(),
            role: "executor".into(),
            token_sha256: Some(token_sha256_hex("exec-token")),
            mtls_identity: None,
            unsigned_actor: true,
            service_account: None,
        },
    ];
    let b = TestBroker::start(config, dir.clone()).await.unwrap();
    let addr = b.addr();
    let list = || {
        as_actor(
            pb::ListCredentialsRequest {
                workspace_id: "ws1".into(),
                ..Default::default()
            },
            "u-a",
            "a@example.com",
        )
    };

    // The web service, by certificate: allowed its RPCs, refused tokens.
    let web = client_pki.leaf(&["web.internal"]);
    let mut c =
        CredentialServiceClient::new(channel(addr, &server_pki.ca_pem, Some(&web)).await.unwrap());
    c.list_credentials(list()).await.unwrap();
    let err = c
        .get_access_token(as_actor(
            pb::GetAccessTokenRequest {
                credential_id: cb_broker::types::CredentialId::generate().to_string(),
                ..Default::default()
            },
            "u-a",
            "a@example.com",
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");

    // A certificate from the right CA that names no configured service.
    let rogue = client_pki.leaf(&["rogue.internal"]);
    let mut c = CredentialServiceClient::new(
        channel(addr, &server_pki.ca_pem, Some(&rogue))
            .await
            .unwrap(),
    );
    assert_eq!(
        c.list_credentials(list()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // No certificate and no token.
    let mut c =
        CredentialServiceClient::new(channel(addr, &server_pki.ca_pem, None).await.unwrap());
    assert_eq!(
        c.list_credentials(list()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A token caller over TLS on the same port.
    let mut r = list();
    r.metadata_mut()
        .insert("authorization", "Bearer exec-token".parse().unwrap());
    c.list_credentials(r).await.unwrap();

    // A certificate signed by an unknown CA does not get through the handshake.
    let foreign = other_pki.leaf(&["web.internal"]);
    let refused = match channel(addr, &server_pki.ca_pem, Some(&foreign)).await {
        Err(_) => true,
        Ok(ch) => CredentialServiceClient::new(ch)
            .list_credentials(list())
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client certificate from an unknown CA is refused"
    );

    // Plaintext is not served on a TLS listener.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            CredentialServiceClient::new(ch)
                .list_credentials(list())
                .await
                .is_err()
        );
    }
}
