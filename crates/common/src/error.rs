//! The one JSON error envelope every wf-iot HTTP endpoint answers with:
//! `{ "error": { "code", "message", "request_id" } }`, and the one service
//! error ([`Error`]) with its HTTP and gRPC mappings, which every service
//! uses and extends with its own cases ([`Error::Specific`]).

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::telemetry;

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `not_found`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    pub request_id: Option<String>,
}

/// An HTTP error about to be sent: status, code and message. Server errors
/// never carry their cause to the client; log it before building one.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Seconds, for `Retry-After` on 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 507: the request was valid but could not be saved because storage
    /// is full; retrying once space is freed succeeds.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            message,
        )
    }

    /// A 500 whose body says nothing about the cause.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.status.is_server_error()
            && self.status != StatusCode::SERVICE_UNAVAILABLE
            && self.status != StatusCode::INSUFFICIENT_STORAGE
        {
            "internal server error".to_string()
        } else {
            self.message
        };
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code.into_owned(),
                message,
                request_id: telemetry::current_request_id(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The error of every service's handlers and stores, mapped once to HTTP
/// ([`ApiError`]) and once to gRPC ([`tonic::Status`]). A case particular
/// to one service is an [`Error::Specific`], made by that service's own
/// constructors with the HTTP answer and gRPC code it needs.
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
    /// A service this one depends on (another service, the broker, the
    /// blob store, the token keys) did not answer. The cause is logged;
    /// HTTP clients are told to retry.
    #[error("{0}")]
    Unavailable(String),
    /// The database refused a write because its storage is full.
    #[error("{0}")]
    StorageFull(String),
    /// A case of one service's own: the HTTP answer and the gRPC code.
    #[error("{}", .http.message)]
    Specific { http: ApiError, grpc: tonic::Code },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A result with the services' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `404`: there is no `what` (a device, a rollout, ...) with this id.
    pub fn no_such(what: &str, id: &str) -> Self {
        Self::NotFound(format!("no {what} with id {id:?}"))
    }

    /// A case of one service's own, answered over HTTP as `http` and over
    /// gRPC with `grpc` and the same message.
    pub fn specific(http: ApiError, grpc: tonic::Code) -> Self {
        Self::Specific { http, grpc }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_storage_full(&e) {
            return Self::StorageFull(e.to_string());
        }
        Self::Internal(e.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<crate::jwt::JwtError> for Error {
    fn from(e: crate::jwt::JwtError) -> Self {
        match e {
            crate::jwt::JwtError::KeysUnavailable(m) => {
                Self::Unavailable(format!("token keys unavailable: {m}"))
            }
            other => Self::Unauthenticated(other.to_string()),
        }
    }
}

/// Counts and logs a write the database refused for lack of space.
fn storage_full(cause: &str) {
    metrics::counter!("wf_storage_full_refusals_total").increment(1);
    tracing::error!(cause = %cause, "write refused: the database's storage is full");
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
                storage_full(&m);
                ApiError::insufficient_storage(
                    "the platform's storage is full: nothing was saved; retry once space is freed",
                )
            }
            Error::Specific { http, .. } => {
                if http.status.is_server_error() {
                    tracing::error!(code = %http.code, cause = %http.message, "request failed");
                }
                http
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
            Error::Unavailable(m) => {
                tracing::warn!(cause = %m, "dependency unavailable");
                tonic::Status::unavailable(m)
            }
            Error::StorageFull(m) => {
                storage_full(&m);
                tonic::Status::resource_exhausted("storage is full; retry once space is freed")
            }
            Error::Specific { http, grpc } => {
                if grpc == tonic::Code::Internal {
                    tracing::error!(code = %http.code, cause = %http.message, "call failed");
                }
                tonic::Status::new(grpc, http.message)
            }
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

/// Answers routes that do not exist.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Answers a known route called with the wrong method.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(resp: Response) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn server_errors_hide_their_message() {
        let mut err = ApiError::internal();
        err.message = "database password is hunter2".into();
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v = body(resp).await;
        assert_eq!(v["error"]["code"], "internal");
        assert_eq!(v["error"]["message"], "internal server error");
    }

    fn cases() -> Vec<(Error, StatusCode, tonic::Code)> {
        use tonic::Code;
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
                Error::Unavailable("secret detail: auth down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
            ),
            (
                Error::StorageFull("secret detail: database or disk is full".into()),
                StatusCode::INSUFFICIENT_STORAGE,
                Code::ResourceExhausted,
            ),
            (
                Error::specific(
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "x"),
                    Code::OutOfRange,
                ),
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::OutOfRange,
            ),
            (
                Error::Internal(anyhow::anyhow!("secret detail")),
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
            ),
        ]
    }

    #[test]
    fn one_http_and_one_grpc_mapping() {
        for ((http_err, http, _), (grpc_err, _, grpc)) in cases().into_iter().zip(cases()) {
            let api = ApiError::from(http_err);
            assert_eq!(api.status, http);
            assert!(!api.message.contains("secret detail"), "{api:?}");
            let status = tonic::Status::from(grpc_err);
            assert_eq!(status.code(), grpc);
            if grpc != tonic::Code::Unavailable {
                assert!(!status.message().contains("secret detail"), "{status:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_specific_case_keeps_its_code_and_message() {
        let err = Error::specific(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                "sha256 differs",
            ),
            tonic::Code::InvalidArgument,
        );
        assert_eq!(err.to_string(), "sha256 differs");
        let v = body(err.into_response()).await;
        assert_eq!(v["error"]["code"], "digest_mismatch");
        assert_eq!(v["error"]["message"], "sha256 differs");
    }

    #[tokio::test]
    async fn rate_limit_sets_retry_after() {
        let resp = ApiError::too_many_requests("slow down", 30).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "30");
        assert_eq!(body(resp).await["error"]["code"], "rate_limited");
    }
}
