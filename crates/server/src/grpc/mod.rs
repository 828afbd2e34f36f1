//! tonic adapters: thin translations between protobuf and the domain services.

pub mod credential;
pub mod membership;

use cb_broker::BrokerError;
use cb_broker::access::Caller;
use tonic::{Request, Status};

/// Identifies the caller of `req`, mapping failures to a status.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    crate::caller::caller_of(req).map_err(crate::status::to_status)
}

/// Maps a domain result to a tonic result.
pub fn respond<T>(r: Result<T, BrokerError>) -> Result<tonic::Response<T>, Status> {
    r.map(tonic::Response::new)
        .map_err(crate::status::to_status)
}
