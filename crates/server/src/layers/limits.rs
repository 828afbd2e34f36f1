//! Per-caller concurrency limit, as a tower layer inside the auth layer (it needs the
//! authenticated [`ServiceIdentity`]): each calling service may have at most
//! `[limits] max_concurrent_per_caller` calls in flight; more are refused at once with
//! RESOURCE_EXHAUSTED (and RetryInfo) instead of queueing, so one busy caller cannot starve the
//! others. The request-size limit is tonic's `max_decoding_message_size` (see app.rs).

use crate::grpc::status::{transport_reason::CALLER_CONCURRENCY_LIMIT, transport_status};
use crate::layers::auth::ServiceIdentity;
use crate::runtime::metrics::Metrics;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};

/// The layer; `max == 0` disables the limit.
#[derive(Clone)]
pub struct CallerLimitLayer {
    max: usize,
    permits: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    metrics: Arc<Metrics>,
}

impl CallerLimitLayer {
    /// At most `max` calls in flight per calling service (0: unlimited).
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            max,
            permits: Arc::default(),
            metrics,
        }
    }

    fn semaphore(&self, caller: &str) -> Arc<Semaphore> {
        // Callers are the configured services (or `anonymous`): a small, fixed set.
        self.permits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(caller.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone()
    }
}

impl<S> tower::Layer<S> for CallerLimitLayer {
    type Service = CallerLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallerLimitService {
            inner,
            limit: self.clone(),
        }
    }
}

/// The service the layer wraps.
#[derive(Clone)]
pub struct CallerLimitService<S> {
    inner: S,
    limit: CallerLimitLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

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

impl<S> tower::Service<http::Request<Body>> for CallerLimitService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Health checks and reflection carry no identity: never limited.
        let Some(caller) = req
            .extensions()
            .get::<ServiceIdentity>()
            .map(|i| i.name.clone())
        else {
            return Box::pin(inner.call(req));
        };
        tracing::Span::current().record("caller", caller.as_str());
        if self.limit.max == 0 {
            return Box::pin(inner.call(req));
        }
        match self.limit.semaphore(&caller).try_acquire_owned() {
            Ok(permit) => {
                let call = inner.call(req);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                self.limit.metrics.rejected(&caller, "concurrency_limit");
                tracing::warn!(caller = %caller, max = self.limit.max, "call refused: caller concurrency limit");
                let status = exhausted(&caller, self.limit.max);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
