//! Workload identity: callers that authenticate with a JWT their platform already issues
//! (Kubernetes projected service-account tokens, SPIFFE JWT-SVIDs) instead of a broker token. A
//! tower layer in front of [`crate::layers::auth`] verifies a JWT bearer against the configured
//! issuer or trust domain, its keys and a dedicated audience, maps its subject to a `[[callers]]`
//! entry (`service_account`, `spiffe_id`) and hands the identity on; the auth layer then applies
//! that caller's role as for any other. A token that does not verify is left to the auth layer,
//! which refuses it as unknown.

use super::{BoxFuture, Inner, Middleware, Request, Response};
use crate::layers::auth::ServiceIdentity;
use crate::layers::jwt::{Audience, KeyRefusal, KeySet, KeySource, secs};
use crate::runtime::config::{ConfigError, SpiffeConfig, WorkloadIdentityConfig};
use cb_broker::clock::Clock;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::http;

/// A caller authenticated by its workload token (request extension, read by the auth layer).
#[derive(Clone, Debug)]
pub struct WorkloadIdentity(pub ServiceIdentity);

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    sub: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Verifies workload tokens of one issuer (or SPIFFE trust domain) and maps their subjects to
/// callers.
pub struct WorkloadVerifier {
    /// The `iss` every token carries (Kubernetes); SPIFFE JWT-SVIDs are not checked for one.
    issuer: Option<String>,
    /// `spiffe://<trust domain>/` for a SPIFFE verifier: only subjects under it are accepted.
    spiffe_prefix: Option<String>,
    audience: String,
    leeway_s: i64,
    keys: Arc<KeySet>,
    callers: HashMap<String, ServiceIdentity>,
    clock: Arc<dyn Clock>,
}

impl WorkloadVerifier {
    /// Builds the Kubernetes verifier; `callers` maps token subjects to services.
    pub fn from_config(
        config: &WorkloadIdentityConfig,
        callers: &[(String, ServiceIdentity)],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let source = KeySource {
            section: "workload_identity",
            public_keys: &config.public_keys,
            jwks_url: config.jwks_url.as_deref(),
            jwks_file: None,
            min_refetch: Duration::from_secs(config.jwks_min_refetch_seconds),
        };
        Self::build(
            (Some(config.issuer.clone()), None),
            (&config.audience, config.leeway_seconds),
            &source,
            callers,
            clock,
        )
    }

    /// Builds the SPIFFE JWT-SVID verifier of one trust domain; `callers` maps SPIFFE IDs to
    /// services.
    pub fn from_spiffe(
        config: &SpiffeConfig,
        callers: &[(String, ServiceIdentity)],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let source = KeySource {
            section: "spiffe",
            public_keys: &config.public_keys,
            jwks_url: config.jwks_url.as_deref(),
            jwks_file: config.jwks_file.as_deref(),
            min_refetch: Duration::from_secs(config.jwks_min_refetch_seconds),
        };
        Self::build(
            (None, Some(config.id_prefix())),
            (&config.audience, config.leeway_seconds),
            &source,
            callers,
            clock,
        )
    }

    fn build(
        (issuer, spiffe_prefix): (Option<String>, Option<String>),
        (audience, leeway_seconds): (&str, u64),
        source: &KeySource<'_>,
        callers: &[(String, ServiceIdentity)],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let keys = KeySet::new(source, clock.clone()).map_err(ConfigError)?;
        Ok(Self {
            issuer,
            spiffe_prefix,
            audience: audience.to_owned(),
            leeway_s: secs(leeway_seconds),
            keys: Arc::new(keys),
            callers: callers.iter().cloned().collect(),
            clock,
        })
    }

    /// Whether this verifier is the one for SPIFFE JWT-SVIDs.
    pub fn is_spiffe(&self) -> bool {
        self.spiffe_prefix.is_some()
    }

    /// The verification keys (for the JWKS refresher).
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// The caller a workload token proves, or why not (for the log; never the token).
    pub async fn authenticate(&self, token: &str) -> Result<ServiceIdentity, String> {
        let c: Claims = self.keys.verify(token).await.map_err(|e| match e {
            KeyRefusal::Invalid(why) | KeyRefusal::KeyUnknown(why) => why,
        })?;
        if let Some(issuer) = &self.issuer
            && c.iss.as_deref() != Some(issuer.as_str())
        {
            return Err("issued by another issuer".into());
        }
        if !c.aud.as_ref().is_some_and(|a| a.contains(&self.audience)) {
            return Err("issued for another audience".into());
        }
        let now = self.clock.now().as_millis() / 1000;
        let exp = c.exp.ok_or("exp is required")?;
        if exp.saturating_add(self.leeway_s) <= now {
            return Err("expired".into());
        }
        if c.nbf.is_some_and(|n| n.saturating_sub(self.leeway_s) > now) {
            return Err("not valid yet".into());
        }
        let sub = c.sub.unwrap_or_default();
        if let Some(prefix) = &self.spiffe_prefix
            && !sub.starts_with(prefix.as_str())
        {
            return Err("a SPIFFE ID of another trust domain".into());
        }
        self.callers.get(&sub).cloned().ok_or_else(|| {
            "its subject is no configured caller's service_account or spiffe_id".into()
        })
    }
}

/// The verifiers of the layer: Kubernetes service-account tokens, SPIFFE JWT-SVIDs.
#[derive(Clone, Default)]
pub struct Verifiers {
    /// `[workload_identity]`.
    pub kubernetes: Option<Arc<WorkloadVerifier>>,
    /// `[spiffe]`.
    pub spiffe: Option<Arc<WorkloadVerifier>>,
}

impl Verifiers {
    /// The verifier for `token`: SPIFFE when its (still unverified) subject is a SPIFFE ID. The
    /// peek only routes the token; the chosen verifier checks everything.
    fn for_token(&self, token: &str) -> Option<Arc<WorkloadVerifier>> {
        #[derive(Deserialize)]
        struct Subject {
            sub: Option<String>,
        }
        let spiffe = jsonwebtoken::dangerous::insecure_decode_claims::<Subject>(token)
            .ok()
            .and_then(|c| c.sub)
            .is_some_and(|s| s.starts_with("spiffe://"));
        if spiffe {
            self.spiffe.clone()
        } else {
            self.kubernetes.clone()
        }
    }
}

/// The layer; a pass-through when no `[workload_identity]` or `[spiffe]` is configured.
#[derive(Clone)]
pub struct WorkloadLayer {
    verifiers: Verifiers,
}

impl WorkloadLayer {
    /// Verifies JWT bearers with `verifiers`.
    pub fn new(verifiers: Verifiers) -> Self {
        Self { verifiers }
    }
}

super::middleware_layer!(WorkloadLayer);

/// The bearer token when it has the shape of a JWT (three dot-separated parts).
fn jwt_bearer(headers: &http::HeaderMap) -> Option<String> {
    let h = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))?
        .trim();
    (token.split('.').count() == 3).then(|| token.to_owned())
}

impl<S: Inner> Middleware<S> for WorkloadLayer {
    type Error = S::Error;

    fn handle(&self, mut inner: S, mut req: Request) -> BoxFuture<Response, S::Error> {
        if self.verifiers.kubernetes.is_none() && self.verifiers.spiffe.is_none() {
            // Nothing configured: no bearer is copied or decoded on the way through.
            return Box::pin(inner.call(req));
        }
        let Some((verifier, token)) = jwt_bearer(req.headers())
            .and_then(|token| Some((self.verifiers.for_token(&token)?, token)))
        else {
            return Box::pin(async move { inner.call(req).await });
        };
        Box::pin(async move {
            match verifier.authenticate(&token).await {
                Ok(identity) => {
                    req.extensions_mut().insert(WorkloadIdentity(identity));
                }
                Err(problem) => tracing::warn!(
                    problem,
                    spiffe = verifier.is_spiffe(),
                    "workload token refused"
                ),
            }
            inner.call(req).await
        })
    }
}
