//! Load protection before anything else runs: at most `limits.max_concurrent_calls` API calls in
//! flight in the whole process, and a call beyond that is shed at once with UNAVAILABLE /
//! `SERVER_OVERLOADED` instead of waiting in a queue. It runs before authentication, so
//! unauthenticated floods are bounded too. Health checks and reflection are never shed: probes
//! must see the truth while the broker is busy.

use super::{BoxFuture, Inner, Middleware, Request, Response};
use crate::grpc::status::{transport_reason::SERVER_OVERLOADED, transport_status};
use crate::runtime::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;

/// The layer; `max == 0` disables it.
#[derive(Clone)]
pub struct OverloadLayer {
    /// Calls in flight (API calls only; probes are not counted). An atomic counter rather than a
    /// semaphore: a call over the limit is shed, never queued, and tokio's semaphore locks its
    /// waiter list on every release.
    in_flight: Arc<AtomicUsize>,
    max: usize,
    metrics: Arc<Metrics>,
}

impl OverloadLayer {
    /// At most `max` API calls in flight (0: unlimited).
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            in_flight: Arc::default(),
            max,
            metrics,
        }
    }
}

super::middleware_layer!(OverloadLayer);

/// One counted call; leaving it (drop) frees its place.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: Inner> Middleware<S> for OverloadLayer {
    type Error = S::Error;

    fn handle(&self, mut inner: S, req: Request) -> BoxFuture<Response, Self::Error> {
        // Every call, health checks included, keeps its connection from counting as idle.
        let in_flight = crate::runtime::listener::track_call(&req);
        let path = req.uri().path();
        let exempt = self.max == 0
            || path.starts_with("/grpc.health.v1.")
            || path.starts_with("/grpc.reflection.");
        if exempt {
            let response = inner.call(req);
            return Box::pin(async move {
                let response = response.await;
                drop(in_flight);
                response
            });
        }
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        // Over the limit: dropping `admitted` takes the count back.
        let admitted = Admitted(self.in_flight.clone());
        if before >= self.max {
            drop(admitted);
            drop(in_flight);
            self.metrics.rejected("any", "overloaded");
            let status = overloaded(self.max);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let response = inner.call(req);
        Box::pin(async move {
            let response = response.await;
            drop(admitted);
            drop(in_flight);
            response
        })
    }
}

fn overloaded(max: usize) -> tonic::Status {
    transport_status(
        Code::Unavailable,
        SERVER_OVERLOADED,
        format!(
            "the broker has {max} calls in flight (limits.max_concurrent_calls); retry shortly"
        ),
        Some(Duration::from_millis(50)),
    )
}
