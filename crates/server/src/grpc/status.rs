//! The one mapping from domain errors to gRPC status, with `google.rpc.ErrorInfo` (stable reason)
//! and `google.rpc.BadRequest` field violations.

use cb_broker::{BrokerError, ErrorCode};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "credentialbroker.v1";

/// ErrorInfo reasons given by the transport layers, before a request reaches the domain.
pub mod transport_reason {
    /// The request message is not valid protobuf for its type.
    pub use cb_proto::codec::MALFORMED_REQUEST;
    /// The calling service has `limits.max_concurrent_per_caller` calls in flight.
    pub const CALLER_CONCURRENCY_LIMIT: &str = "CALLER_CONCURRENCY_LIMIT";
    /// The `grpc-timeout` header is not a valid gRPC timeout.
    pub const INVALID_DEADLINE: &str = "INVALID_DEADLINE";
    /// The process has `limits.max_concurrent_calls` calls in flight; the call was shed.
    pub const SERVER_OVERLOADED: &str = "SERVER_OVERLOADED";
}

/// Every ErrorInfo reason the broker can return: the domain's and the transport layers'.
pub fn all_reasons() -> impl Iterator<Item = &'static str> {
    use transport_reason::*;
    cb_broker::error::reason::ALL.iter().copied().chain([
        MALFORMED_REQUEST,
        CALLER_CONCURRENCY_LIMIT,
        INVALID_DEADLINE,
        SERVER_OVERLOADED,
    ])
}

/// A status decided by a transport layer, with its ErrorInfo reason (and RetryInfo, if given).
pub fn transport_status(
    code: Code,
    reason: &'static str,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new());
    if retry_after.is_some() {
        details.set_retry_info(retry_after);
    }
    Status::with_error_details(code, message, details)
}

fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Aborted => Code::Aborted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::Internal => Code::Internal,
    }
}

/// Converts a domain error into a status. Internal details are logged, not returned.
pub fn to_status(e: BrokerError) -> Status {
    let code = grpc_code(e.code());
    let mut details = ErrorDetails::new();
    details.set_error_info(e.reason(), ERROR_DOMAIN, HashMap::<String, String>::new());
    let message = match &e {
        BrokerError::InvalidArgument(violations) => {
            for v in violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            e.to_string()
        }
        BrokerError::Unavailable {
            retry_after: Some(d),
            ..
        } => {
            details.set_retry_info(Some(*d));
            e.to_string()
        }
        BrokerError::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            "internal error; see the broker log".to_owned()
        }
        _ => e.to_string(),
    };
    Status::with_error_details(code, message, details)
}
