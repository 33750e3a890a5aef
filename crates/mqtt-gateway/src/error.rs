//! mqtt-gateway answers with the service kit's error
//! ([`wf_common::error::Error`]), extended with the external broker's
//! refusals.

use axum::http::StatusCode;
use tonic::Code;
use wf_common::ApiError;

pub use wf_common::error::{Error, Result};

/// The request collides with something the gateway may not change (a
/// broker account wf-iot does not manage holds the device's name).
pub fn precondition(message: impl Into<String>) -> Error {
    Error::specific(ApiError::conflict(message), Code::FailedPrecondition)
}

/// The external broker refused an administrative command. The message is
/// the broker's answer (no secrets), which the caller needs to act.
pub fn broker_refused(message: impl Into<String>) -> Error {
    let message = message.into();
    tracing::error!(error = %message, "the broker refused a command");
    Error::specific(
        ApiError::new(StatusCode::BAD_GATEWAY, "broker_refused", message),
        Code::Internal,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_cases_keep_their_codes() {
        let api = ApiError::from(precondition("taken"));
        assert_eq!(api.status, StatusCode::CONFLICT);
        assert_eq!(
            tonic::Status::from(precondition("taken")).code(),
            Code::FailedPrecondition
        );
        let api = ApiError::from(broker_refused("no such role"));
        assert_eq!(
            (api.status, api.code.as_ref()),
            (StatusCode::BAD_GATEWAY, "broker_refused")
        );
        let status = tonic::Status::from(broker_refused("no such role"));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "no such role");
    }
}
