//! Workload identity: callers that authenticate with a JWT their platform already issues
//! (Kubernetes projected service-account tokens) instead of a broker token. A tower layer in
//! front of [`crate::layers::auth`] verifies a JWT bearer against the configured issuer, its keys
//! and a dedicated audience, maps its subject to a `[[callers]]` entry (`service_account`) and
//! hands the identity on; the auth layer then applies that caller's role as for any other.
//! A token that does not verify is left to the auth layer, which refuses it as unknown.

use super::{BoxFuture, Inner, Middleware, Request, Response};
use crate::layers::auth::ServiceIdentity;
use crate::layers::jwt::{Audience, KeyRefusal, KeySet, KeySource, secs};
use crate::runtime::config::{ConfigError, WorkloadIdentityConfig};
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

/// Verifies workload tokens and maps their subjects to callers.
pub struct WorkloadVerifier {
    issuer: String,
    audience: String,
    leeway_s: i64,
    keys: Arc<KeySet>,
    callers: HashMap<String, ServiceIdentity>,
    clock: Arc<dyn Clock>,
}

impl WorkloadVerifier {
    /// Builds the verifier; `callers` maps token subjects to services.
    pub fn from_config(
        config: &WorkloadIdentityConfig,
        callers: &[(String, ServiceIdentity)],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let keys = KeySet::new(
            &KeySource {
                section: "workload_identity",
                public_keys: &config.public_keys,
                jwks_url: config.jwks_url.as_deref(),
                min_refetch: Duration::from_secs(config.jwks_min_refetch_seconds),
            },
            clock.clone(),
        )
        .map_err(ConfigError)?;
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: secs(config.leeway_seconds),
            keys: Arc::new(keys),
            callers: callers.iter().cloned().collect(),
            clock,
        })
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
        if c.iss.as_deref() != Some(self.issuer.as_str()) {
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
        self.callers
            .get(&sub)
            .cloned()
            .ok_or_else(|| "its subject is no configured caller's service_account".into())
    }
}

/// The layer; a pass-through when no `[workload_identity]` is configured.
#[derive(Clone)]
pub struct WorkloadLayer {
    verifier: Option<Arc<WorkloadVerifier>>,
}

impl WorkloadLayer {
    /// Verifies JWT bearers with `verifier`.
    pub fn new(verifier: Option<Arc<WorkloadVerifier>>) -> Self {
        Self { verifier }
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
        let (Some(verifier), Some(token)) = (self.verifier.clone(), jwt_bearer(req.headers()))
        else {
            return Box::pin(async move { inner.call(req).await });
        };
        Box::pin(async move {
            match verifier.authenticate(&token).await {
                Ok(identity) => {
                    req.extensions_mut().insert(WorkloadIdentity(identity));
                }
                Err(problem) => tracing::warn!(problem, "workload token refused"),
            }
            inner.call(req).await
        })
    }
}
