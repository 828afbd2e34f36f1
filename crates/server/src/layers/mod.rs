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

/// The boxed future every layer's service returns.
pub(crate) type BoxFuture<T, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// The instance of `inner` that `poll_ready` prepared, leaving a clone in its place: a tower
/// service must call the very instance it polled ready, and the call outlives `&mut self`.
pub(crate) fn ready_instance<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
