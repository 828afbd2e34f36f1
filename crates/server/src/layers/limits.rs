//! Per-caller concurrency limit, as a tower layer inside the auth layer (it needs the
//! authenticated [`ServiceIdentity`]): each calling service may have at most
//! `[limits] max_concurrent_per_caller` calls in flight; more are refused at once with
//! RESOURCE_EXHAUSTED (and RetryInfo) instead of queueing, so one busy caller cannot starve the
//! others. The request-size limit is tonic's `max_decoding_message_size` (see app.rs).
//!
//! The count lives in the caller's [`CallsInFlight`], which the auth layer built once per
//! configured caller and hands on in the request extensions: a call takes no lock and looks
//! nothing up.

use super::{BoxFuture, Inner, Middleware, Request, Response};
use crate::grpc::status::{transport_reason::CALLER_CONCURRENCY_LIMIT, transport_status};
use crate::layers::auth::ServiceIdentity;
use crate::runtime::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::{Code, Status};

/// The calls one calling service has in flight. An atomic counter rather than a semaphore: calls
/// over the limit are refused, never queued, and tokio's semaphore locks its waiter list on every
/// release.
#[derive(Clone, Debug, Default)]
pub struct CallsInFlight(Arc<AtomicUsize>);

impl CallsInFlight {
    /// Counts one more call unless `max` are already in flight.
    fn try_enter(&self, max: usize) -> Option<InFlight> {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        let call = InFlight(self.0.clone());
        // Over the limit: dropping `call` takes the count back.
        (before < max).then_some(call)
    }
}

/// One counted call; leaving it (drop) frees its place.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The layer; `max == 0` disables the limit.
#[derive(Clone)]
pub struct CallerLimitLayer {
    max: usize,
    metrics: Arc<Metrics>,
}

impl CallerLimitLayer {
    /// At most `max` calls in flight per calling service (0: unlimited).
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self { max, metrics }
    }
}

super::middleware_layer!(CallerLimitLayer);

fn exhausted(caller: &str, max: usize) -> Status {
    transport_status(
        Code::ResourceExhausted,
        CALLER_CONCURRENCY_LIMIT,
        format!(
            "service {caller:?} already has {max} calls in flight (limits.max_concurrent_per_caller); retry shortly"
        ),
        Some(Duration::from_millis(100)),
    )
}

impl<S: Inner> Middleware<S> for CallerLimitLayer {
    type Error = S::Error;

    fn handle(&self, mut inner: S, req: Request) -> BoxFuture<Response, S::Error> {
        // Health checks and reflection carry no identity: never limited.
        let Some(identity) = req.extensions().get::<ServiceIdentity>() else {
            return Box::pin(inner.call(req));
        };
        tracing::Span::current().record("caller", identity.name.as_str());
        if self.max == 0 {
            return Box::pin(inner.call(req));
        }
        let Some(calls) = req.extensions().get::<CallsInFlight>() else {
            // The auth layer puts both in; an identity without a counter is a wiring bug.
            tracing::error!(caller = %identity.name, "call refused: no in-flight counter for the caller");
            let status = Status::internal("the caller's concurrency limit is not set up");
            return Box::pin(async move { Ok(status.into_http()) });
        };
        match calls.try_enter(self.max) {
            Some(call) => {
                let response = inner.call(req);
                Box::pin(async move {
                    let response = response.await;
                    drop(call);
                    response
                })
            }
            None => {
                let caller = identity.name.as_str();
                self.metrics.rejected(caller, "concurrency_limit");
                tracing::warn!(caller = %caller, max = self.max, "call refused: caller concurrency limit");
                let status = exhausted(caller, self.max);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
