//! A test PKI (CA, server and client certificates, X.509-SVIDs) and TLS channels to the broker.

use crate::support::broker::TestBroker;
use credential_broker::runtime::config::Config;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use std::sync::Arc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority held by the test.
pub struct Pki {
    /// Its certificate (PEM).
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// (certificate PEM, key PEM) for the DNS names `names`.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// (certificate PEM, key PEM) of an X.509-SVID: the URI SAN `spiffe_id`, no DNS name.
    pub fn svid(&self, spiffe_id: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().unwrap()));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A test configuration (SQLite, in a fresh directory) whose listener serves TLS with a
/// certificate of `server` for `localhost` and accepts client certificates issued by `clients`.
pub fn tls_config(server: &Pki, clients: &Pki) -> (Arc<tempfile::TempDir>, Config) {
    let (dir, mut config) = TestBroker::sqlite_config();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (server_cert, server_key) = server.leaf(&["localhost"]);
    config.tls.cert_file = Some(write("server.crt", &server_cert));
    config.tls.key_file = Some(write("server.key", &server_key));
    config.tls.client_ca_file = Some(write("clients-ca.crt", &clients.ca_pem));
    (dir, config)
}

/// A TLS channel to `addr` trusting `ca`, presenting `client` (certificate, key) if given.
pub async fn channel(
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
