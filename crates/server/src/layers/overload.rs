//! Load protection before anything else runs: at most `limits.max_concurrent_calls` API calls in
//! flight in the whole process (tower's global concurrency limit), and a call beyond that is shed
//! at once with UNAVAILABLE / `SERVER_OVERLOADED` (tower's load shedding) instead of waiting in a
//! queue. It runs before authentication, so unauthenticated floods are bounded too. Health checks
//! and reflection are never shed: probes must see the truth while the broker is busy.

use super::{BoxFuture, Inner, Layered, Middleware, Request, Response};
use crate::grpc::status::{transport_reason::SERVER_OVERLOADED, transport_status};
use crate::runtime::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::Code;
use tower::ServiceExt;
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer};
use tower::load_shed::{LoadShed, error::Overloaded};

/// The layer; `max == 0` disables it.
#[derive(Clone)]
pub struct OverloadLayer {
    permits: Option<Arc<Semaphore>>,
    max: usize,
    metrics: Arc<Metrics>,
}

impl OverloadLayer {
    /// At most `max` API calls in flight (0: unlimited).
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: (max > 0).then(|| Arc::new(Semaphore::new(max))),
            max,
            metrics,
        }
    }
}

impl<S: Clone> tower::Layer<S> for OverloadLayer {
    type Service = OverloadService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        let limited = self.permits.clone().map(|permits| {
            LoadShed::new(tower::Layer::layer(
                &GlobalConcurrencyLimitLayer::with_semaphore(permits),
                inner.clone(),
            ))
        });
        let shed = Shed {
            limited,
            max: self.max,
            metrics: self.metrics.clone(),
        };
        Layered::new(shed, inner)
    }
}

/// The service the layer wraps.
pub type OverloadService<S> = Layered<Shed<S>, S>;

/// The layer's part of its service: the limited (and shedding) path to the inner service.
#[derive(Clone)]
pub struct Shed<S> {
    limited: Option<LoadShed<ConcurrencyLimit<S>>>,
    max: usize,
    metrics: Arc<Metrics>,
}

impl<S> Middleware<S> for Shed<S>
where
    S: Inner,
    S::Error: Into<tower::BoxError>,
{
    type Error = tower::BoxError;

    fn handle(&self, mut inner: S, req: Request) -> BoxFuture<Response, Self::Error> {
        // Every call, health checks included, keeps its connection from counting as idle.
        let in_flight = crate::runtime::listener::track_call(&req);
        let path = req.uri().path();
        let exempt = path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.");
        let Some(limited) = self.limited.clone().filter(|_| !exempt) else {
            return Box::pin(async move {
                let response = inner.call(req).await.map_err(Into::into);
                drop(in_flight);
                response
            });
        };
        let (max, metrics) = (self.max, self.metrics.clone());
        Box::pin(async move {
            let response = limited.oneshot(req).await;
            drop(in_flight);
            match response {
                Err(e) if e.is::<Overloaded>() => {
                    metrics.rejected("any", "overloaded");
                    Ok(overloaded(max).into_http())
                }
                other => other,
            }
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
