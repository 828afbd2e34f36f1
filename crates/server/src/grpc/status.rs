//! The one mapping from domain errors to gRPC status, with `google.rpc.ErrorInfo` (stable reason)
//! and `google.rpc.BadRequest` field violations.

use cb_broker::{BrokerError, ErrorCode};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "credentialbroker.v1";

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
