//! Signing keys held by a test and a JWKS server for them (actor assertions, workload tokens,
//! SPIFFE JWT-SVIDs).

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A signing key held by the test, with its public halves for the broker.
pub struct Signer {
    /// The key id.
    pub kid: String,
    alg: Algorithm,
    key: EncodingKey,
    /// The public key (PEM).
    pub public_pem: String,
}

impl Signer {
    /// A fresh key `kid` for `alg` (EdDSA, ES256, RS256).
    pub fn new(kid: &str, alg: Algorithm) -> Self {
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

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    /// A JWT of `claims` under this key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A JWT of `claims` under this key, naming `kid`.
    pub fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// A JWKS served over HTTP on loopback; the test swaps its keys and counts fetches.
pub struct JwksServer {
    /// Where it is served.
    pub url: String,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Serves `keys`.
    pub async fn start(keys: Vec<serde_json::Value>) -> Self {
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

    /// Replaces the published keys.
    pub fn publish(&self, keys: Vec<serde_json::Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}
