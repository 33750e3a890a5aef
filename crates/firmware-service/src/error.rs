//! The firmware-service error, mapped once to HTTP and once to gRPC.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wf_common::ApiError;
use wf_common::jwt::JwtError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Validation(String),
    /// The uploaded file does not hash to the digest the client sent.
    #[error("{0}")]
    DigestMismatch(String),
    /// The firmware signature is missing, malformed or does not verify.
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A service this one depends on (auth, device, mqtt-gateway, the blob
    /// store) did not answer.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<JwtError> for Error {
    fn from(e: JwtError) -> Self {
        match e {
            JwtError::KeysUnavailable(m) => {
                Self::Unavailable(format!("token keys unavailable: {m}"))
            }
            other => Self::Unauthenticated(other.to_string()),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::BadRequest(m) => ApiError::bad_request(m),
            Error::Validation(m) => ApiError::validation(m),
            Error::DigestMismatch(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "digest_mismatch", m)
            }
            Error::BadSignature(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_signature", m)
            }
            Error::PayloadTooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m)
            }
            Error::Unauthenticated(m) => ApiError::unauthorized(m),
            Error::Forbidden(m) => ApiError::forbidden(m),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::Conflict(m) => ApiError::conflict(m),
            Error::Unavailable(m) => {
                tracing::warn!(cause = %m, "dependency unavailable");
                ApiError::unavailable("a service this request needs is unavailable; retry shortly")
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
            Error::BadRequest(m)
            | Error::Validation(m)
            | Error::DigestMismatch(m)
            | Error::BadSignature(m) => tonic::Status::invalid_argument(m),
            Error::PayloadTooLarge(m) => tonic::Status::out_of_range(m),
            Error::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Error::Forbidden(m) => tonic::Status::permission_denied(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::Conflict(m) => tonic::Status::failed_precondition(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
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

    fn cases() -> Vec<(Error, StatusCode, &'static str, Code)> {
        vec![
            (
                Error::BadRequest("x".into()),
                StatusCode::BAD_REQUEST,
                "bad_request",
                Code::InvalidArgument,
            ),
            (
                Error::Validation("x".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Code::InvalidArgument,
            ),
            (
                Error::DigestMismatch("x".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                Code::InvalidArgument,
            ),
            (
                Error::BadSignature("x".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_signature",
                Code::InvalidArgument,
            ),
            (
                Error::PayloadTooLarge("x".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Code::OutOfRange,
            ),
            (
                Error::Unauthenticated("x".into()),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Code::Unauthenticated,
            ),
            (
                Error::Forbidden("x".into()),
                StatusCode::FORBIDDEN,
                "forbidden",
                Code::PermissionDenied,
            ),
            (
                Error::NotFound("x".into()),
                StatusCode::NOT_FOUND,
                "not_found",
                Code::NotFound,
            ),
            (
                Error::Conflict("x".into()),
                StatusCode::CONFLICT,
                "conflict",
                Code::FailedPrecondition,
            ),
            (
                Error::Unavailable("auth down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Code::Unavailable,
            ),
            (
                Error::Internal(anyhow::anyhow!("secret detail")),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                Code::Internal,
            ),
        ]
    }

    #[test]
    fn http_and_grpc_mapping() {
        for ((http_err, http, code, _), (grpc_err, _, _, grpc)) in cases().into_iter().zip(cases())
        {
            let api = ApiError::from(http_err);
            assert_eq!(api.status, http);
            assert_eq!(api.code, code);
            assert!(!api.message.contains("secret detail"));
            let status = tonic::Status::from(grpc_err);
            assert_eq!(status.code(), grpc);
            assert!(!status.message().contains("secret detail"));
        }
    }
}
