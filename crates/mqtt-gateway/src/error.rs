//! The mqtt-gateway error, mapped once to HTTP and once to gRPC.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wf_common::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something the gateway refuses (a topic outside
    /// `devices/{id}/`, a bad filter, an oversized payload).
    #[error("{0}")]
    InvalidArgument(String),
    /// A dependency (device-service, the broker) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// The request collides with something the gateway may not change (a
    /// broker account wf-iot does not manage holds the device's name).
    #[error("{0}")]
    Conflict(String),
    /// The external broker refused an administrative command. The message
    /// is the broker's answer (no secrets), which the caller needs to act.
    #[error("{0}")]
    Broker(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => ApiError::bad_request(m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "dependency unavailable");
                ApiError::unavailable(m)
            }
            Error::Conflict(m) => ApiError::conflict(m),
            Error::Broker(m) => {
                tracing::error!(error = %m, "the broker refused a command");
                ApiError::new(StatusCode::BAD_GATEWAY, "broker_refused", m)
            }
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "dependency unavailable");
                tonic::Status::unavailable(m)
            }
            Error::Conflict(m) => tonic::Status::failed_precondition(m),
            Error::Broker(m) => {
                tracing::error!(error = %m, "the broker refused a command");
                tonic::Status::internal(m)
            }
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn cases() -> Vec<(Error, StatusCode, Code)> {
        vec![
            (
                Error::InvalidArgument("x".into()),
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
            ),
            (
                Error::Unavailable("device-service is down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
            ),
            (
                Error::Conflict("taken".into()),
                StatusCode::CONFLICT,
                Code::FailedPrecondition,
            ),
            (
                Error::Broker("Mosquitto refused createClient".into()),
                StatusCode::BAD_GATEWAY,
                Code::Internal,
            ),
            (
                Error::Internal(anyhow::anyhow!("secret detail")),
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
            ),
        ]
    }

    #[test]
    fn http_and_grpc_mapping() {
        for ((http_err, http, _), (grpc_err, _, grpc)) in cases().into_iter().zip(cases()) {
            let api = ApiError::from(http_err);
            assert_eq!(api.status, http);
            let status = tonic::Status::from(grpc_err);
            assert_eq!(status.code(), grpc);
            assert!(!status.message().contains("secret detail"));
        }
    }
}
