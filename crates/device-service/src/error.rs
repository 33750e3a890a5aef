//! The device-service error, mapped once to HTTP and once to gRPC.

use axum::response::{IntoResponse, Response};
use wf_common::ApiError;
use wf_common::jwt::JwtError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A service this one depends on (auth-service, mqtt-gateway) did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The database refused a write because its storage is full.
    #[error("{0}")]
    StorageFull(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if wf_common::db::is_storage_full(&e) {
            return Self::StorageFull(e.to_string());
        }
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
            Error::Unauthenticated(m) => ApiError::unauthorized(m),
            Error::Forbidden(m) => ApiError::forbidden(m),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::Conflict(m) => ApiError::conflict(m),
            Error::Unavailable(m) => {
                tracing::warn!(cause = %m, "dependency unavailable");
                ApiError::unavailable("a service this request needs is unavailable; retry shortly")
            }
            Error::StorageFull(m) => {
                metrics::counter!("wf_storage_full_refusals_total", "service" => "device-service")
                    .increment(1);
                tracing::error!(cause = %m, "write refused: the database's storage is full");
                ApiError::insufficient_storage(
                    "the platform's storage is full: nothing was saved; retry once space is freed",
                )
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
            Error::BadRequest(m) | Error::Validation(m) => tonic::Status::invalid_argument(m),
            Error::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Error::Forbidden(m) => tonic::Status::permission_denied(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::Conflict(m) => tonic::Status::already_exists(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            Error::StorageFull(m) => {
                tracing::error!(cause = %m, "write refused: the database's storage is full");
                tonic::Status::resource_exhausted("storage is full; retry once space is freed")
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
    use axum::http::StatusCode;
    use tonic::Code;

    fn cases() -> Vec<(Error, StatusCode, Code)> {
        vec![
            (
                Error::BadRequest("x".into()),
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
            ),
            (
                Error::Validation("x".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                Code::InvalidArgument,
            ),
            (
                Error::Unauthenticated("x".into()),
                StatusCode::UNAUTHORIZED,
                Code::Unauthenticated,
            ),
            (
                Error::Forbidden("x".into()),
                StatusCode::FORBIDDEN,
                Code::PermissionDenied,
            ),
            (
                Error::NotFound("x".into()),
                StatusCode::NOT_FOUND,
                Code::NotFound,
            ),
            (
                Error::Conflict("x".into()),
                StatusCode::CONFLICT,
                Code::AlreadyExists,
            ),
            (
                Error::Unavailable("auth down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
            ),
            (
                Error::StorageFull("secret detail: database or disk is full".into()),
                StatusCode::INSUFFICIENT_STORAGE,
                Code::ResourceExhausted,
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
            assert!(!api.message.contains("secret detail"));
            let status = tonic::Status::from(grpc_err);
            assert_eq!(status.code(), grpc);
            assert!(!status.message().contains("secret detail"));
        }
    }
}
