//! auth-service answers with the service kit's error
//! ([`wf_common::error::Error`]), extended with its refusals under load.

use tonic::Code;
use wf_common::ApiError;

pub use wf_common::error::{Error, Result};

/// Too many failed sign-ins: 429 with `Retry-After`.
pub fn throttled(retry_after_secs: u64) -> Error {
    Error::specific(
        ApiError::too_many_requests(
            format!("too many failed attempts; retry in {retry_after_secs} s"),
            retry_after_secs,
        ),
        Code::ResourceExhausted,
    )
}

/// Password hashing is saturated: 503 with `Retry-After`.
pub fn busy(retry_after_secs: u64) -> Error {
    Error::specific(
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..ApiError::unavailable(format!(
                "the service is busy; retry in {retry_after_secs} s"
            ))
        },
        Code::Unavailable,
    )
}

/// Whether `e` is the refusal of a saturated service.
pub fn is_busy(e: &Error) -> bool {
    matches!(
        e,
        Error::Specific {
            grpc: Code::Unavailable,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn refusals_under_load_say_when_to_retry() {
        let api = ApiError::from(throttled(3));
        assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(api.retry_after, Some(3));
        assert_eq!(
            tonic::Status::from(throttled(3)).code(),
            Code::ResourceExhausted
        );
        assert!(is_busy(&busy(1)));
        let api = ApiError::from(busy(1));
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.retry_after, Some(1));
        assert_eq!(tonic::Status::from(busy(1)).code(), Code::Unavailable);
    }
}
