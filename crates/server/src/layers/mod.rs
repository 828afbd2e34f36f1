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
