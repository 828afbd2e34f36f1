//! The tower layers in front of the gRPC services, outermost first: [`observe`] (span, metrics,
//! deadline), [`overload`] (global concurrency limit, load shedding), [`workload`] (workload
//! tokens: Kubernetes service-account JWTs), [`auth`] (which caller,
//! allowed for this RPC?), [`limits`] (per-caller concurrency) and [`assertion`] (which actor:
//! verified assertion, or plain metadata where allowed). [`rpc`] names every RPC once; [`caller`]
//! reads the actor.

pub mod assertion;
pub mod auth;
pub mod caller;
pub mod jwt;
pub mod limits;
pub mod observe;
pub mod overload;
pub mod rpc;
pub mod workload;

use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;

/// The boxed future every layer's service returns.
pub(crate) type BoxFuture<T, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// The request every layer sees.
pub type Request = http::Request<Body>;
/// The response every layer answers with.
pub type Response = http::Response<Body>;

/// The service a layer wraps: the router, or the next layer in.
pub trait Inner:
    tower::Service<Request, Response = Response, Future: Send + 'static> + Clone + Send + 'static
{
}

impl<S> Inner for S where
    S: tower::Service<Request, Response = Response, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// One layer's own part of a tower service: what it does with a call, given the instance of the
/// inner service that was polled ready. [`Layered`] is the rest, the same for every layer.
pub trait Middleware<S: Inner>: Clone {
    /// What the layer fails with: the inner service's error, or something it converts into.
    type Error;
    /// Handles `req`, calling `inner` (or not).
    fn handle(&self, inner: S, req: Request) -> BoxFuture<Response, Self::Error>;
}

/// A layer's service: `middleware` in front of `inner`.
#[derive(Clone)]
pub struct Layered<M, S> {
    inner: S,
    middleware: M,
}

impl<M, S> Layered<M, S> {
    /// `middleware` in front of `inner`.
    pub(crate) fn new(middleware: M, inner: S) -> Self {
        Self { inner, middleware }
    }
}

impl<M, S> tower::Service<Request> for Layered<M, S>
where
    S: Inner,
    M: Middleware<S>,
    S::Error: Into<M::Error>,
{
    type Response = Response;
    type Error = M::Error;
    type Future = BoxFuture<Response, M::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // A tower service must call the very instance it polled ready, and the call outlives
        // `&mut self`: take that instance and leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        self.middleware.handle(inner, req)
    }
}

/// `impl tower::Layer` for a layer type that is its own [`Middleware`]: each service it builds is
/// a clone of the layer in front of the inner service.
macro_rules! middleware_layer {
    ($layer:ty) => {
        impl<S> tower::Layer<S> for $layer {
            type Service = $crate::layers::Layered<$layer, S>;
            fn layer(&self, inner: S) -> Self::Service {
                $crate::layers::Layered::new(self.clone(), inner)
            }
        }
    };
}
pub(crate) use middleware_layer;
