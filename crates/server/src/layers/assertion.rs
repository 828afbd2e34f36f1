//! Verified actors: the end user a call acts for, proven by a short-lived signed assertion (a JWT
//! in `x-actor-assertion`) instead of being named in plain metadata. A tower layer behind the
//! auth layer verifies it (fetching the JWKS when needed, so it must be async) and hands the
//! result on as [`ActorSource`]; [`crate::layers::caller`] reads the actor only from there.
//!
//! Plain `x-actor-*` metadata stays accepted in development mode and from callers configured
//! with `unsigned_actor = true`; from any other caller it is refused.

use super::{BoxFuture, Inner, Middleware, Request, Response};
use crate::layers::auth::ServiceIdentity;
use crate::layers::jwt::{Audience, KeyRefusal, KeySet, KeySource, secs};
use crate::layers::rpc::Rpc;
use crate::runtime::config::{ActorAssertionsConfig, ConfigError};
use aws_lc_rs::digest::{SHA256, digest};
use cb_broker::access::{Actor, Caller, ServiceRole, WorkspaceRole};
use cb_broker::audit::{Audit, Outcome};
use cb_broker::clock::Clock;
use cb_broker::error::reason;
use cb_broker::types::{Email, UserId, WorkspaceId};
use serde::Deserialize;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::codegen::http;

/// Metadata key: the signed actor assertion (a compact JWS).
pub const ACTOR_ASSERTION: &str = "x-actor-assertion";

/// [`ACTOR_ASSERTION`] as a header name, made once.
const ASSERTION_HEADER: http::HeaderName = http::HeaderName::from_static(ACTOR_ASSERTION);

/// The unsigned actor metadata keys (see [`crate::layers::caller`]).
const ACTOR_KEYS: [&str; 4] = [
    crate::layers::caller::ACTOR_ID,
    crate::layers::caller::ACTOR_EMAIL,
    crate::layers::caller::ACTOR_WORKSPACE_ID,
    crate::layers::caller::ACTOR_WORKSPACE_ROLE,
];

/// Where the actor of a request comes from, decided once by [`ActorLayer`] (request extension).
#[derive(Clone, Debug)]
pub enum ActorSource {
    /// A verified assertion named this actor; metadata is ignored.
    Verified(Actor),
    /// The caller may name the actor in plain metadata (development, `unsigned_actor`).
    Unsigned,
    /// The call acts for no end user.
    None,
}

/// Why an assertion was refused; each has its own ErrorInfo reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Plain actor metadata from a caller that must send an assertion.
    Required,
    /// Not a valid signed assertion (what is wrong is in the message).
    Invalid(String),
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `aud` does not contain this broker.
    WrongAudience,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// This `jti` was already used.
    Replayed,
    /// No configured or published key has this `kid`.
    KeyUnknown(String),
    /// Too many live assertions remembered to refuse replays: fail closed, retry shortly.
    ReplayCacheFull,
}

impl Refusal {
    /// The ErrorInfo reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Required => reason::ACTOR_ASSERTION_REQUIRED,
            Self::Invalid(_) => reason::ACTOR_ASSERTION_INVALID,
            Self::Expired => reason::ACTOR_ASSERTION_EXPIRED,
            Self::WrongAudience => reason::ACTOR_ASSERTION_WRONG_AUDIENCE,
            Self::WrongIssuer => reason::ACTOR_ASSERTION_WRONG_ISSUER,
            Self::Replayed => reason::ACTOR_ASSERTION_REPLAYED,
            Self::KeyUnknown(_) => reason::ACTOR_ASSERTION_KEY_UNKNOWN,
            Self::ReplayCacheFull => crate::grpc::status::transport_reason::SERVER_OVERLOADED,
        }
    }

    fn status(&self) -> tonic::Status {
        let (code, message, retry) = match self {
            Self::Required => (
                Code::PermissionDenied,
                format!(
                    "this caller must prove the actor with a signed {ACTOR_ASSERTION}; plain x-actor-* metadata is refused"
                ),
                None,
            ),
            Self::Invalid(why) => (
                Code::Unauthenticated,
                format!("actor assertion refused: {why}"),
                None,
            ),
            Self::Expired => (
                Code::Unauthenticated,
                "actor assertion expired".into(),
                None,
            ),
            Self::WrongAudience => (
                Code::Unauthenticated,
                "actor assertion is addressed to another audience".into(),
                None,
            ),
            Self::WrongIssuer => (
                Code::Unauthenticated,
                "actor assertion comes from another issuer".into(),
                None,
            ),
            Self::Replayed => (
                Code::Unauthenticated,
                "actor assertion was already used (one assertion per call)".into(),
                None,
            ),
            Self::KeyUnknown(why) => (
                Code::Unauthenticated,
                format!("actor assertion signed by an unknown key: {why}"),
                None,
            ),
            Self::ReplayCacheFull => (
                Code::Unavailable,
                "too many live actor assertions to remember; retry shortly".into(),
                Some(Duration::from_secs(1)),
            ),
        };
        crate::grpc::status::transport_status(code, self.reason(), message, retry)
    }
}

/// The claims of an actor assertion.
#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    sub: Option<String>,
    email: Option<String>,
    workspace_id: Option<String>,
    workspace_role: Option<String>,
    exp: Option<i64>,
    iat: Option<i64>,
    nbf: Option<i64>,
    jti: Option<String>,
}

/// Assertion ids seen and still live, bounded; expired ones are forgotten first.
struct ReplaySet {
    until: HashMap<[u8; 32], i64>,
    by_expiry: BinaryHeap<Reverse<(i64, [u8; 32])>>,
    capacity: usize,
}

impl ReplaySet {
    fn new(capacity: usize) -> Self {
        Self {
            until: HashMap::new(),
            by_expiry: BinaryHeap::new(),
            capacity,
        }
    }

    /// Records `id` as used until `until_ms`.
    fn insert(&mut self, id: [u8; 32], until_ms: i64, now_ms: i64) -> Result<(), Refusal> {
        while let Some(Reverse((t, old))) = self.by_expiry.peek().copied() {
            if t > now_ms {
                break;
            }
            self.by_expiry.pop();
            if self.until.get(&old) == Some(&t) {
                self.until.remove(&old);
            }
        }
        if self.until.contains_key(&id) {
            return Err(Refusal::Replayed);
        }
        if self.until.len() >= self.capacity {
            return Err(Refusal::ReplayCacheFull);
        }
        self.until.insert(id, until_ms);
        self.by_expiry.push(Reverse((until_ms, id)));
        Ok(())
    }
}

/// Verifies actor assertions against static keys and a JWKS, refusing replays.
pub struct ActorVerifier {
    issuer: String,
    audience: String,
    leeway_s: i64,
    max_lifetime_s: i64,
    keys: Arc<KeySet>,
    seen: Mutex<ReplaySet>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ActorVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl ActorVerifier {
    /// Builds the verifier from configuration, loading the static keys (a bad key refuses the
    /// start, naming it).
    pub fn from_config(
        config: &ActorAssertionsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let keys = KeySet::new(
            &KeySource {
                section: "actor_assertions",
                public_keys: &config.public_keys,
                jwks_url: config.jwks_url.as_deref(),
                jwks_file: None,
                min_refetch: Duration::from_secs(config.jwks_min_refetch_seconds),
            },
            clock.clone(),
        )
        .map_err(ConfigError)?;
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: secs(config.leeway_seconds),
            max_lifetime_s: secs(config.max_lifetime_seconds),
            keys: Arc::new(keys),
            seen: Mutex::new(ReplaySet::new(config.replay_cache_max_entries)),
            clock,
        })
    }

    /// The verification keys (for the JWKS refresher).
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// Verifies `token` and returns the actor it names. Checks, in order: size and header, the
    /// algorithm against the key's own, the signature, then issuer, audience, time and replay.
    pub async fn verify(&self, token: &str) -> Result<Actor, Refusal> {
        let claims = self
            .keys
            .verify::<Claims>(token)
            .await
            .map_err(|e| match e {
                KeyRefusal::Invalid(why) => Refusal::Invalid(why),
                KeyRefusal::KeyUnknown(why) => Refusal::KeyUnknown(why),
            })?;
        self.check_claims(claims)
    }

    fn check_claims(&self, c: Claims) -> Result<Actor, Refusal> {
        let invalid = |why: &str| Refusal::Invalid(why.to_owned());
        if c.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(Refusal::WrongIssuer);
        }
        if !c.aud.as_ref().is_some_and(|a| a.contains(&self.audience)) {
            return Err(Refusal::WrongAudience);
        }
        let now = self.clock.now().as_millis() / 1000;
        let exp = c.exp.ok_or_else(|| invalid("exp is required"))?;
        let iat = c.iat.ok_or_else(|| invalid("iat is required"))?;
        if exp.saturating_add(self.leeway_s) <= now {
            return Err(Refusal::Expired);
        }
        if iat.saturating_sub(self.leeway_s) > now
            || c.nbf.is_some_and(|n| n.saturating_sub(self.leeway_s) > now)
        {
            return Err(invalid("not valid yet (iat or nbf in the future)"));
        }
        if exp.saturating_sub(iat) > self.max_lifetime_s || exp < iat {
            return Err(invalid("lifetime (exp - iat) exceeds max_lifetime_seconds"));
        }
        let jti = c
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| invalid("jti is required (at most 256 characters)"))?;
        let claim = |name: &str| format!("{ACTOR_ASSERTION}:{name}");
        let describe = |v: cb_broker::FieldViolation| {
            Refusal::Invalid(format!("{} {}", v.field, v.description))
        };
        let user_id =
            UserId::parse(&claim("sub"), c.sub.as_deref().unwrap_or("")).map_err(describe)?;
        let email =
            Email::parse(&claim("email"), c.email.as_deref().unwrap_or("")).map_err(describe)?;
        let workspace = match (c.workspace_id.as_deref(), c.workspace_role.as_deref()) {
            (None, None) => None,
            (Some(w), Some(r)) => {
                let w = WorkspaceId::parse(&claim("workspace_id"), w).map_err(describe)?;
                let r = match r {
                    "admin" => WorkspaceRole::Admin,
                    "member" => WorkspaceRole::Member,
                    _ => return Err(invalid("workspace_role must be admin or member")),
                };
                Some((w, r))
            }
            _ => {
                return Err(invalid(
                    "workspace_id and workspace_role must be set together",
                ));
            }
        };
        // Remembered until the assertion could no longer pass the expiry check anyway.
        let id: [u8; 32] = digest(&SHA256, jti.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| invalid("jti digest"))?;
        let until_ms = exp.saturating_add(self.leeway_s).saturating_mul(1000);
        self.seen
            .lock()
            .map_err(|_| invalid("replay set unavailable"))?
            .insert(id, until_ms, self.clock.now().as_millis())?;
        Ok(Actor {
            user_id,
            email,
            workspace,
        })
    }
}

/// Who must prove the actor: everyone, except in development mode and the named callers.
#[derive(Clone, Debug, Default)]
pub struct ActorPolicy {
    /// Callers that may name the actor in plain metadata (`unsigned_actor = true`).
    pub unsigned_callers: BTreeSet<String>,
    /// The verifier, when `[actor_assertions]` is configured.
    pub verifier: Option<Arc<ActorVerifier>>,
}

impl ActorPolicy {
    fn allows_unsigned(&self, identity: &ServiceIdentity) -> bool {
        identity.role == ServiceRole::Development || self.unsigned_callers.contains(&identity.name)
    }

    /// Decides where the actor of a call comes from.
    pub async fn resolve(
        &self,
        identity: &ServiceIdentity,
        headers: &http::HeaderMap,
    ) -> Result<ActorSource, Refusal> {
        if let Some(value) = headers.get(ASSERTION_HEADER) {
            let token = value
                .to_str()
                .map_err(|_| Refusal::Invalid("not printable ASCII".into()))?
                .trim();
            let Some(verifier) = &self.verifier else {
                return Err(Refusal::KeyUnknown(
                    "this broker has no [actor_assertions] configured".into(),
                ));
            };
            return verifier.verify(token).await.map(ActorSource::Verified);
        }
        self.without_assertion(identity, headers)
    }

    /// The decision for a call that carries no assertion: nothing to verify, so nothing to
    /// wait for.
    fn without_assertion(
        &self,
        identity: &ServiceIdentity,
        headers: &http::HeaderMap,
    ) -> Result<ActorSource, Refusal> {
        if self.allows_unsigned(identity) {
            return Ok(ActorSource::Unsigned);
        }
        if ACTOR_KEYS.iter().any(|k| headers.contains_key(*k)) {
            return Err(Refusal::Required);
        }
        Ok(ActorSource::None)
    }
}

/// The layer; it runs after authentication (it needs the [`ServiceIdentity`]).
#[derive(Clone)]
pub struct ActorLayer {
    policy: Arc<ActorPolicy>,
    audit: Audit,
}

impl ActorLayer {
    /// Resolves actors by `policy`; refusals are audited (never with the assertion).
    pub fn new(policy: ActorPolicy, audit: Audit) -> Self {
        Self {
            policy: Arc::new(policy),
            audit,
        }
    }
}

super::middleware_layer!(ActorLayer);

impl<S: Inner> Middleware<S> for ActorLayer {
    type Error = S::Error;

    fn handle(&self, mut inner: S, mut req: Request) -> BoxFuture<Response, S::Error> {
        // Health and reflection carry no identity: they act for nobody.
        let Some(identity) = req.extensions().get::<ServiceIdentity>() else {
            return Box::pin(inner.call(req));
        };
        if !req.headers().contains_key(ASSERTION_HEADER) {
            // No assertion to verify: decided here, without a task of its own.
            return match self.policy.without_assertion(identity, req.headers()) {
                Ok(source) => {
                    req.extensions_mut().insert(source);
                    Box::pin(inner.call(req))
                }
                Err(refusal) => {
                    let refused = refuse(&self.audit, identity, &req, &refusal);
                    Box::pin(async move { Ok(refused) })
                }
            };
        }
        let identity = identity.clone();
        let policy = self.policy.clone();
        let audit = self.audit.clone();
        Box::pin(async move {
            match policy.resolve(&identity, req.headers()).await {
                Ok(source) => {
                    req.extensions_mut().insert(source);
                    inner.call(req).await
                }
                Err(refusal) => Ok(refuse(&audit, &identity, &req, &refusal)),
            }
        })
    }
}

/// The answer to a call whose actor was refused: logged and audited (never with the assertion).
fn refuse(audit: &Audit, identity: &ServiceIdentity, req: &Request, refusal: &Refusal) -> Response {
    let rpc = req
        .extensions()
        .get::<Rpc>()
        .map_or("unknown", |r| r.method());
    let reason = refusal.reason();
    tracing::warn!(rpc, caller = %identity.name, reason, "actor refused");
    let caller = Caller {
        service: identity.name.clone(),
        role: identity.role,
        actor: None,
    };
    audit.record_later(
        &caller,
        &format!("rpc.{rpc}"),
        None,
        Outcome(reason.to_owned()),
        None,
    );
    refusal.status().into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_set_refuses_seen_ids_and_forgets_expired_ones() {
        let mut s = ReplaySet::new(2);
        s.insert([1; 32], 1_000, 0).unwrap();
        assert_eq!(s.insert([1; 32], 1_000, 500), Err(Refusal::Replayed));
        s.insert([2; 32], 2_000, 500).unwrap();
        assert_eq!(s.insert([3; 32], 3_000, 500), Err(Refusal::ReplayCacheFull));
        // Past the first id's expiry it is forgotten, making room.
        s.insert([3; 32], 3_000, 1_000).unwrap();
        assert_eq!(s.insert([2; 32], 2_000, 1_500), Err(Refusal::Replayed));
    }
}
