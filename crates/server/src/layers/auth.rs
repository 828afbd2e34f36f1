//! Caller authentication and the RPC allow-list, as a tower layer in front of every service:
//! no RPC of ours runs without an identified, allowed caller. Health and reflection stay open
//! (probes and grpcurl need them; they reveal no data).
//!
//! Each calling service presents `authorization: Bearer <token>`; the config holds only the
//! token's SHA-256, compared in constant time. Once a token has matched, the layer keeps it (one
//! slot per configured caller, zeroized on drop) and recognises the caller's later calls by a
//! constant-time comparison with it, without hashing again. With no callers configured the broker
//! runs in development mode: every call is `anonymous` and allowed, and only a loopback listener
//! is permitted (config validation).

use super::{BoxFuture, Inner, Middleware, Request, Response};
use crate::layers::limits::CallsInFlight;
use crate::layers::rpc::Rpc;
use crate::runtime::listener::GuardedInfo;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use cb_broker::access::{Caller, ServiceRole};
use cb_broker::audit::{Audit, Outcome};
use cb_broker::error::reason;
use secrecy::{ExposeSecret, SecretSlice};
use std::sync::{Arc, OnceLock};
use tonic::codegen::http;
use tonic::transport::server::TlsConnectInfo;
use tonic::{Code, Status};

/// The identity of an authenticated calling service, put into request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// Configured name.
    pub name: String,
    /// Role (decides the allow-list).
    pub role: ServiceRole,
}

/// One configured calling service.
#[derive(Clone, Debug)]
pub struct KnownCaller {
    /// Identity granted on success.
    pub identity: ServiceIdentity,
    /// SHA-256 of its bearer token.
    pub token_sha256: [u8; 32],
}

/// Who may call: configured services, or development mode when empty.
#[derive(Clone, Debug, Default)]
pub struct Callers {
    /// Services that present bearer tokens.
    pub tokens: Vec<KnownCaller>,
    /// Services that present client certificates: (identity in the certificate, service).
    pub certificates: Vec<(String, ServiceIdentity)>,
    /// Services that present workload tokens, verified by [`crate::layers::workload`]: (the
    /// token's subject, service).
    pub workloads: Vec<(String, ServiceIdentity)>,
}

impl Callers {
    /// Whether no caller authentication is configured.
    pub fn is_development(&self) -> bool {
        self.tokens.is_empty() && self.certificates.is_empty() && self.workloads.is_empty()
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer_token(header: Option<&str>) -> Result<&str, Status> {
    header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthenticated(
                "missing authorization: Bearer <service token> (or a client certificate)",
            )
        })
}

/// An authenticated caller and what the layers below keep per caller, built once at start.
#[derive(Debug)]
struct Known {
    identity: ServiceIdentity,
    in_flight: CallsInFlight,
}

/// A configured bearer-token caller.
#[derive(Debug)]
struct TokenCaller {
    known: Arc<Known>,
    token_sha256: [u8; 32],
    /// The token, once a call has presented one whose hash matched: set at most once, read
    /// without a lock, zeroized on drop.
    verified: OnceLock<SecretSlice<u8>>,
}

/// [`Callers`] resolved once: every configured caller with its per-caller state.
#[derive(Debug)]
struct Authenticator {
    development: Option<Arc<Known>>,
    tokens: Vec<TokenCaller>,
    certificates: Vec<(String, Arc<Known>)>,
    /// Services that present workload tokens (verified by the workload layer).
    workloads: Vec<Arc<Known>>,
}

impl Authenticator {
    fn new(callers: Callers) -> Self {
        // One in-flight counter per service name, even when it authenticates both ways.
        let mut by_name: Vec<Arc<Known>> = Vec::new();
        let mut known = |identity: ServiceIdentity| {
            if let Some(k) = by_name.iter().find(|k| k.identity.name == identity.name) {
                return k.clone();
            }
            let k = Arc::new(Known {
                identity,
                in_flight: CallsInFlight::default(),
            });
            by_name.push(k.clone());
            k
        };
        let development = callers.is_development().then(|| {
            known(ServiceIdentity {
                name: "anonymous".into(),
                role: ServiceRole::Development,
            })
        });
        let tokens = callers
            .tokens
            .into_iter()
            .map(|c| TokenCaller {
                known: known(c.identity),
                token_sha256: c.token_sha256,
                verified: OnceLock::new(),
            })
            .collect();
        let certificates = callers
            .certificates
            .into_iter()
            .map(|(subject, identity)| (subject, known(identity)))
            .collect();
        let workloads = callers
            .workloads
            .into_iter()
            .map(|(_, identity)| known(identity))
            .collect();
        Self {
            development,
            tokens,
            certificates,
            workloads,
        }
    }

    /// The configured caller a workload token was mapped to by the workload layer.
    fn workload(&self, identity: &ServiceIdentity) -> Result<&Arc<Known>, Status> {
        self.workloads
            .iter()
            .find(|k| k.identity == *identity)
            .ok_or_else(|| unauthenticated("the workload identity is not configured"))
    }

    /// Authenticates a call: by its client certificate (already verified against the client CA
    /// by TLS) when it presents one that names a configured service, else by bearer token.
    fn authenticate(
        &self,
        header: Option<&str>,
        client_cert: Option<&[u8]>,
    ) -> Result<&Arc<Known>, Status> {
        if let Some(known) = &self.development {
            return Ok(known);
        }
        if let Some(der) = client_cert {
            let names = certificate_names(der);
            if let Some((_, known)) = self
                .certificates
                .iter()
                .find(|(subject, _)| names.iter().any(|n| n == subject))
            {
                return Ok(known);
            }
        }
        let token = bearer_token(header)?.as_bytes();
        // A token seen before: compared with every verified token, without an early exit.
        let mut found = None;
        for c in &self.tokens {
            if let Some(verified) = c.verified.get()
                && verify_slices_are_equal(token, verified.expose_secret()).is_ok()
            {
                found = Some(&c.known);
            }
        }
        if let Some(known) = found {
            return Ok(known);
        }
        let presented = digest(&SHA256, token);
        // Compare against every configured hash, without an early exit.
        let mut found = None;
        for c in &self.tokens {
            if verify_slices_are_equal(presented.as_ref(), &c.token_sha256).is_ok() {
                found = Some(c);
            }
        }
        let c = found.ok_or_else(|| unauthenticated("the service token is not recognised"))?;
        // Only a token whose hash matched is kept (a wrong token never fills a slot).
        let _ = c.verified.set(SecretSlice::from(token.to_vec()));
        Ok(&c.known)
    }
}

/// The DNS subject alternative names and common names of a DER certificate.
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    names
}

fn unauthenticated(message: &str) -> Status {
    crate::grpc::status::to_status(cb_broker::BrokerError::Unauthenticated {
        message: message.into(),
    })
}

fn not_allowed(identity: &ServiceIdentity, rpc: Rpc) -> Status {
    crate::grpc::status::to_status(cb_broker::BrokerError::PermissionDenied {
        reason: reason::CALLER_NOT_ALLOWED,
        message: format!(
            "service {:?} (role {}) may not call {}",
            identity.name,
            identity.role.as_str(),
            rpc.method()
        ),
    })
}

/// The layer.
#[derive(Clone)]
pub struct AuthLayer {
    callers: Arc<Authenticator>,
    audit: Audit,
}

impl AuthLayer {
    /// Authenticates against `callers`; denials are audited.
    pub fn new(callers: Callers, audit: Audit) -> Self {
        Self {
            callers: Arc::new(Authenticator::new(callers)),
            audit,
        }
    }
}

super::middleware_layer!(AuthLayer);

impl<S: Inner> Middleware<S> for AuthLayer {
    type Error = S::Error;

    fn handle(&self, mut inner: S, mut req: Request) -> BoxFuture<Response, S::Error> {
        let path = req.uri().path();
        if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
            return Box::pin(inner.call(req));
        }
        // Resolved by the observe layer, which runs first.
        let Some(rpc) = req.extensions().get::<Rpc>().copied() else {
            let status = Status::new(Code::Unimplemented, "unknown method");
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let cert = req
            .extensions()
            .get::<TlsConnectInfo<GuardedInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        // A workload token the workload layer (before this one) verified and mapped.
        let authenticated = match req
            .extensions()
            .get::<crate::layers::workload::WorkloadIdentity>()
        {
            Some(w) => self.callers.workload(&w.0),
            None => self.callers.authenticate(header, cert.as_deref()),
        };
        let decision = authenticated.clone().and_then(|known| {
            if rpc.allows(known.identity.role) {
                Ok(known)
            } else {
                Err(not_allowed(&known.identity, rpc))
            }
        });
        match decision {
            Ok(known) => {
                req.extensions_mut().insert(known.identity.clone());
                req.extensions_mut().insert(known.in_flight.clone());
                Box::pin(async move { inner.call(req).await })
            }
            Err(status) => {
                let (service, role) = authenticated.map_or_else(
                    |_| ("unauthenticated".to_owned(), None),
                    |k| (k.identity.name.clone(), Some(k.identity.role)),
                );
                // The actor the caller claims, for the record (a denied caller is not trusted,
                // so it is labelled as claimed, never used for anything else).
                let metadata = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
                let actor = crate::layers::caller::actor_from_metadata(&metadata)
                    .ok()
                    .flatten();
                let caller = Caller {
                    service,
                    role: role.unwrap_or(ServiceRole::Development),
                    actor,
                };
                let reason = if role.is_some() {
                    reason::CALLER_NOT_ALLOWED
                } else {
                    reason::UNAUTHENTICATED
                };
                tracing::warn!(rpc = rpc.method(), caller = %caller.service, reason, "call denied");
                // Through the aggregating buffer: a flood of denied calls costs a few rows, not
                // one database write each.
                self.audit.record_later(
                    &caller,
                    &format!("rpc.{}", rpc.method()),
                    None,
                    Outcome(reason.to_owned()),
                    None,
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Hex SHA-256 of a token, as written into the config (`credential-broker hash-token`).
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(digest(&SHA256, token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str, role: ServiceRole, token: &str) -> KnownCaller {
        let mut token_sha256 = [0u8; 32];
        token_sha256.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        KnownCaller {
            identity: ServiceIdentity {
                name: name.into(),
                role,
            },
            token_sha256,
        }
    }

    #[test]
    fn a_verified_token_keeps_its_caller_and_no_other_token_passes() {
        let auth = Authenticator::new(Callers {
            tokens: vec![
                caller("exec", ServiceRole::Executor, "exec-token"),
                caller("web", ServiceRole::Web, "web-token"),
            ],
            certificates: Vec::new(),
            workloads: Vec::new(),
        });
        let name = |header: &str| {
            auth.authenticate(Some(header), None)
                .map(|k| k.identity.name.clone())
                .map_err(|s| s.code())
        };
        // The first call verifies by hash, the later ones against the kept token.
        for _ in 0..3 {
            assert_eq!(name("Bearer exec-token"), Ok("exec".to_owned()));
            assert_eq!(name("bearer  web-token "), Ok("web".to_owned()));
        }
        for wrong in [
            "Bearer exec-token2",
            "Bearer exec-toke",
            "Bearer web-token-exec-token",
            "Bearer EXEC-TOKEN",
            "Bearer ",
            "exec-token",
        ] {
            assert_eq!(name(wrong), Err(Code::Unauthenticated), "{wrong}");
        }
        assert_eq!(
            auth.authenticate(None, None).map_err(|s| s.code()).err(),
            Some(Code::Unauthenticated)
        );
    }

    #[test]
    fn a_caller_has_one_in_flight_counter() {
        let auth = Authenticator::new(Callers {
            tokens: vec![caller("exec", ServiceRole::Executor, "exec-token")],
            certificates: vec![(
                "exec.example".into(),
                ServiceIdentity {
                    name: "exec".into(),
                    role: ServiceRole::Executor,
                },
            )],
            workloads: Vec::new(),
        });
        let by_token = auth.tokens.first().map(|c| c.known.clone());
        let by_certificate = auth.certificates.first().map(|(_, k)| k.clone());
        assert!(
            by_token
                .zip(by_certificate)
                .is_some_and(|(a, b)| Arc::ptr_eq(&a, &b))
        );
    }
}
