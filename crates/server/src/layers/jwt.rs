//! Signed JWTs from outside: the keys they may be signed with (static PEM/JWK keys and a JWKS
//! fetched again on an unknown `kid`, rate-limited) and the signature check. Claims are the
//! caller's business: actor assertions ([`crate::layers::assertion`]) and workload tokens
//! ([`crate::layers::workload`]) check their own on the injected clock.

use crate::runtime::config::PublicKeyConfig;
use cb_broker::clock::{Clock, Timestamp};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::codegen::http;

/// Larger tokens are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Larger JWKS documents are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Configured seconds as the signed seconds of JWT time claims (saturating).
pub fn secs(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Why a token's signature was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Not a valid signed JWT (malformed, refused algorithm, bad signature).
    Invalid(String),
    /// No known key has its `kid`.
    KeyUnknown(String),
}

/// A key tokens may be signed with; its algorithm is fixed by the key, never by the token.
#[derive(Clone)]
struct VerifyingKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

struct JwksState {
    keys: Vec<VerifyingKey>,
    /// When the JWKS was last requested (successfully or not), for the refetch rate limit.
    attempted: Option<Timestamp>,
}

/// Where keys come from: static keys and, optionally, a JWKS URL or file.
pub struct KeySource<'a> {
    /// What the keys are for, in problems (`actor_assertions`).
    pub section: &'a str,
    /// Static keys.
    pub public_keys: &'a [PublicKeyConfig],
    /// The JWKS URL.
    pub jwks_url: Option<&'a str>,
    /// A JWKS file (e.g. a SPIFFE trust bundle written by the SPIRE agent), read like the URL:
    /// at start, on every refresh and on an unknown `kid`.
    pub jwks_file: Option<&'a std::path::Path>,
    /// An unknown `kid` fetches the JWKS again at most this often.
    pub min_refetch: Duration,
}

/// The verification keys of one issuer.
pub struct KeySet {
    static_keys: Vec<VerifyingKey>,
    jwks_url: Option<String>,
    jwks_file: Option<std::path::PathBuf>,
    jwks: RwLock<JwksState>,
    /// One JWKS fetch at a time; waiters then find the keys it brought.
    fetching: tokio::sync::Mutex<()>,
    min_refetch: Duration,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl KeySet {
    /// Loads the static keys; each problem names the key.
    pub fn new(source: &KeySource<'_>, clock: Arc<dyn Clock>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut static_keys = Vec::new();
        for (i, k) in source.public_keys.iter().enumerate() {
            match static_key(k) {
                Ok(key) => static_keys.push(key),
                Err(e) => problems.push(format!("{}.public_keys[{i}]: {e}", source.section)),
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| vec![format!("{}.jwks_url: http client: {e}", source.section)])?;
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            static_keys,
            jwks_url: source.jwks_url.map(str::to_owned),
            jwks_file: source.jwks_file.map(std::path::Path::to_path_buf),
            jwks: RwLock::new(JwksState {
                keys: Vec::new(),
                attempted: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            min_refetch: source.min_refetch,
            http,
            clock,
        })
    }

    /// Whether a JWKS URL or file is configured.
    pub fn has_jwks(&self) -> bool {
        self.jwks_url.is_some() || self.jwks_file.is_some()
    }

    fn find(&self, kid: &str) -> Option<VerifyingKey> {
        if let Some(k) = self.static_keys.iter().find(|k| k.kid == kid) {
            return Some(k.clone());
        }
        let state = self.jwks.read().ok()?;
        state.keys.iter().find(|k| k.kid == kid).cloned()
    }

    /// Fetches the JWKS now and replaces the published keys (a failed fetch keeps the old
    /// ones). Returns how many usable keys it holds.
    pub async fn refresh_jwks(&self) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, String> {
        if !self.has_jwks() {
            return Ok(0);
        }
        if let Ok(mut s) = self.jwks.write() {
            s.attempted = Some(self.clock.now());
        }
        let keys = match (&self.jwks_url, &self.jwks_file) {
            (Some(url), _) => fetch_jwks(&self.http, url).await?,
            (None, Some(file)) => {
                let body = tokio::fs::read(file)
                    .await
                    .map_err(|e| format!("jwks file {}: {e}", file.display()))?;
                if body.len() > MAX_JWKS_BYTES {
                    return Err("jwks larger than 1 MiB".into());
                }
                parse_jwks(&body)?
            }
            (None, None) => Vec::new(),
        };
        let n = keys.len();
        if let Ok(mut s) = self.jwks.write() {
            s.keys = keys;
        }
        Ok(n)
    }

    /// An unknown `kid`: fetch the JWKS again unless that was tried within `min_refetch`.
    async fn refetch_for_unknown_kid(&self) {
        let _one = self.fetching.lock().await;
        let now = self.clock.now();
        let recent = self
            .jwks
            .read()
            .ok()
            .and_then(|s| s.attempted)
            .is_some_and(|t| t.plus(self.min_refetch) > now);
        if recent {
            return;
        }
        if let Err(e) = self.fetch_locked().await {
            tracing::warn!(error = %e, "verification keys (jwks) could not be fetched");
        }
    }

    /// Checks size, header, the algorithm against the key's own and the signature; returns the
    /// claims, unchecked.
    pub async fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, KeyRefusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(KeyRefusal::Invalid("too large".into()));
        }
        // `none` and unknown algorithms fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            KeyRefusal::Invalid("not a signed JWT with an allowed algorithm".into())
        })?;
        if !matches!(
            header.alg,
            Algorithm::EdDSA | Algorithm::ES256 | Algorithm::RS256
        ) {
            return Err(KeyRefusal::Invalid(
                "algorithm not allowed (EdDSA, ES256 or RS256)".into(),
            ));
        }
        let kid = header
            .kid
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| KeyRefusal::Invalid("the header names no kid".into()))?;
        let key = match self.find(kid) {
            Some(k) => k,
            None if self.has_jwks() => {
                self.refetch_for_unknown_kid().await;
                self.find(kid).ok_or_else(|| {
                    KeyRefusal::KeyUnknown("no configured or published key has this kid".into())
                })?
            }
            None => {
                return Err(KeyRefusal::KeyUnknown(
                    "no configured key has this kid".into(),
                ));
            }
        };
        // The key decides the algorithm: a token cannot pick another (algorithm confusion).
        if header.alg != key.alg {
            return Err(KeyRefusal::Invalid(
                "the algorithm is not the one of the key named by kid".into(),
            ));
        }
        let mut validation = Validation::new(key.alg);
        // Time and audience are checked by the caller against the broker's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<C>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => KeyRefusal::Invalid("the signature does not verify".into()),
                K::Json(_) => KeyRefusal::Invalid("malformed claims".into()),
                _ => KeyRefusal::Invalid("not a valid signed JWT".into()),
            }
        })?;
        Ok(data.claims)
    }
}

/// Fetches `keys`' JWKS at start (logged, not fatal) and every `every_seconds`.
pub async fn start_refreshing(
    keys: Arc<KeySet>,
    what: &'static str,
    every_seconds: u64,
) -> tokio::task::JoinHandle<()> {
    // Keys in hand before the first call; an unreachable JWKS is retried, not fatal.
    match keys.refresh_jwks().await {
        Ok(n) => tracing::info!(keys = n, what, "verification keys (jwks) fetched"),
        Err(e) => {
            tracing::warn!(error = %e, what, "verification keys (jwks) could not be fetched; retrying")
        }
    }
    tokio::spawn(async move {
        let period = Duration::from_secs(every_seconds.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            match keys.refresh_jwks().await {
                Ok(n) => tracing::debug!(keys = n, what, "verification keys (jwks) fetched"),
                Err(e) => {
                    tracing::warn!(error = %e, what, "verification keys (jwks) could not be fetched");
                }
            }
        }
    })
}

/// `aud`: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `aud` is among them.
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Self::One(a) => a == aud,
            Self::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

/// The algorithm a key is used with, from its type; other key types are refused.
fn jwk_key(jwk: &Jwk) -> Result<VerifyingKey, String> {
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or("the key has no kid")?;
    // SPIFFE bundles mark JWT-SVID signing keys `use: jwt-svid` (X.509 roots: `x509-svid`).
    let signs = |u: &PublicKeyUse| match u {
        PublicKeyUse::Signature => true,
        PublicKeyUse::Other(other) => other == "jwt-svid",
        _ => false,
    };
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| !signs(u))
    {
        return Err("the key is not for signatures (use)".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return Err("key type not allowed (Ed25519, P-256 or RSA public keys only)".into()),
    };
    let matches_stated = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(_) => false,
    };
    if !matches_stated {
        return Err("the key's alg is not allowed for its type".into());
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(VerifyingKey { kid, alg, key })
}

fn static_key(config: &PublicKeyConfig) -> Result<VerifyingKey, String> {
    if let Some(text) = &config.jwk {
        let mut jwk: Jwk = serde_json::from_str(text).map_err(|e| format!("jwk: {e}"))?;
        if jwk.common.key_id.is_none() {
            jwk.common.key_id = Some(config.kid.clone());
        }
        if jwk.common.key_id.as_deref() != Some(config.kid.as_str()) {
            return Err("jwk: its kid differs from kid".into());
        }
        return jwk_key(&jwk);
    }
    let pem = match (&config.pem, &config.pem_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("pem_file {}: {e}", path.display()))?,
        (None, None) => return Err("set pem, pem_file or jwk".into()),
    };
    let pem = pem.as_bytes();
    let (alg, key) = if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (Algorithm::EdDSA, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        // An uncompressed P-256 point is 65 bytes; other curves are refused.
        if k.try_get_as_bytes().map(<[u8]>::len) != Ok(65) {
            return Err("EC keys must be P-256 (ES256)".into());
        }
        (Algorithm::ES256, k)
    } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (Algorithm::RS256, k)
    } else {
        return Err("pem: not an Ed25519, P-256 or RSA public key".into());
    };
    Ok(VerifyingKey {
        kid: config.kid.clone(),
        alg,
        key,
    })
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Vec<VerifyingKey>, String> {
    let mut response = http
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("jwks request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("jwks answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("jwks read failed: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err("jwks larger than 1 MiB".into());
        }
    }
    parse_jwks(&body)
}

/// The usable signing keys of a JWKS document (RFC 7517, or a SPIFFE bundle).
fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    // Keys one by one: a key of a type this crate cannot read (say, for encryption) must not
    // hide the others.
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("jwks: {e}"))?;
    let mut keys = Vec::new();
    let mut kids = BTreeSet::new();
    for value in set.keys {
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("unreadable key: {e}"))
            .and_then(|jwk| jwk_key(&jwk));
        match parsed {
            Ok(k) if kids.insert(k.kid.clone()) => keys.push(k),
            Ok(k) => tracing::warn!(kid = %k.kid, "jwks key skipped: kid published twice"),
            Err(e) => tracing::warn!(problem = %e, "jwks key skipped"),
        }
    }
    Ok(keys)
}
