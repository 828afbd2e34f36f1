//! The gRPC boundary: tonic services ([`credential`], [`membership`]) as thin adapters over the
//! domain, protobuf <-> domain conversion ([`convert`]) and the one domain-error -> status
//! mapping ([`status`]).

pub mod convert;
pub mod credential;
pub mod membership;
pub mod oauth_app;
pub mod status;
pub mod webhook;

use cb_broker::BrokerError;
use cb_broker::access::Caller;
use tonic::{Request, Status};

/// Identifies the caller of `req`, mapping failures to a status.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    crate::layers::caller::caller_of(req).map_err(crate::grpc::status::to_status)
}

/// Maps a domain result to a tonic result.
pub fn respond<T>(r: Result<T, BrokerError>) -> Result<tonic::Response<T>, Status> {
    r.map(tonic::Response::new)
        .map_err(crate::grpc::status::to_status)
}
