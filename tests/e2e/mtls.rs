//! TLS on the listener and calling services identified by client certificates (mTLS), next to
//! bearer-token callers on the same port.

use crate::support::broker::{TestBroker, as_actor, assert_status};
use crate::support::pki::{Pki, channel, tls_config};
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use credential_broker::layers::auth::token_sha256_hex;
use credential_broker::runtime::config::CallerConfig;
use tonic::Code;
use tonic::transport::Channel;

#[tokio::test]
async fn callers_authenticate_with_client_certificates_or_tokens() {
    let server_pki = Pki::new("server ca");
    let client_pki = Pki::new("client ca");
    let other_pki = Pki::new("someone else's ca");
    let (dir, mut config) = tls_config(&server_pki, &client_pki);
    config.callers = vec![
        CallerConfig {
            name: "web".into(),
            role: "web".into(),
            mtls_identity: Some("web.internal".into()),
            unsigned_actor: true,
            ..Default::default()
        },
        CallerConfig {
            name: "executor".into(),
            role: "executor".into(),
            token_sha256: Some(token_sha256_hex("exec-token")),
            unsigned_actor: true,
            ..Default::default()
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
