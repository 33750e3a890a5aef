//! device-service answers with the service kit's error: one HTTP and one
//! gRPC mapping for every service ([`wf_common::error::Error`]).

pub use wf_common::error::{Error, Result};

use axum::http::StatusCode;
use wf_common::error::ApiError;

/// `412`: the caller's `If-Match` names a version that is no longer current.
pub fn stale_version(current: i64) -> Error {
    Error::specific(
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            format!(
                "the shadow is at version {current} now; read it again and apply your change to it"
            ),
        ),
        tonic::Code::FailedPrecondition,
    )
}
