//! The gateway's errors, mapped once to the shared HTTP error envelope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wf_common::ApiError;
use wf_common::jwt::JwtError;

use crate::clients::UpstreamError;
use crate::domain::routes::Upstream;
use crate::ratelimit::Denied;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(String),
    /// The keys that verify tokens could not be fetched from auth-service.
    #[error("token keys unavailable: {0}")]
    KeysUnavailable(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("rate limited")]
    RateLimited(Denied),
    #[error("the request body is larger than this endpoint accepts")]
    PayloadTooLarge,
    #[error("{0}")]
    BadRequest(String),
    #[error("{} {source}", .upstream.name())]
    Upstream {
        upstream: Upstream,
        source: UpstreamError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<JwtError> for Error {
    fn from(e: JwtError) -> Self {
        match e {
            JwtError::KeysUnavailable(detail) => Self::KeysUnavailable(detail),
            other => Self::Unauthenticated(other.to_string()),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unauthenticated(message) => ApiError::unauthorized(message),
            Error::KeysUnavailable(_) => {
                ApiError::unavailable("tokens cannot be verified right now; try again shortly")
            }
            Error::NotFound => ApiError::not_found("no such endpoint"),
            Error::RateLimited(denied) => ApiError::too_many_requests(
                "too many requests; slow down",
                denied.retry_after_secs(),
            ),
            Error::PayloadTooLarge => wf_common::extract::payload_too_large(),
            Error::BadRequest(message) => ApiError::bad_request(message),
            Error::Upstream { upstream, source } => match source {
                UpstreamError::Unavailable(_) => {
                    let mut e = ApiError::unavailable(format!(
                        "the {} service is unavailable; try again shortly",
                        upstream.name()
                    ));
                    e.retry_after = Some(1);
                    e
                }
                UpstreamError::Timeout => ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the service did not answer in time",
                ),
                UpstreamError::Protocol(_) => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the service gave an invalid answer",
                ),
                UpstreamError::BodyTooLarge => wf_common::extract::payload_too_large(),
                UpstreamError::ClientBody(_) => {
                    ApiError::bad_request("the request body could not be read")
                }
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::KeysUnavailable(detail) => {
                tracing::warn!(error = %detail, "token keys unavailable");
            }
            Error::Upstream { upstream, source } => {
                if source.is_upstream_fault() {
                    metrics::counter!(
                        "wf_gateway_upstream_errors_total",
                        "upstream" => upstream.name(),
                        "kind" => source.kind()
                    )
                    .increment(1);
                    tracing::warn!(upstream = upstream.name(), error = %source, "upstream failed");
                } else {
                    tracing::debug!(upstream = upstream.name(), error = %source, "request body refused");
                }
            }
            _ => {}
        }
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Scope;
    use std::time::Duration;

    fn status(e: Error) -> (StatusCode, String) {
        let api = ApiError::from(e);
        (api.status, api.code.into_owned())
    }

    fn upstream(source: UpstreamError) -> Error {
        Error::Upstream {
            upstream: Upstream::Device,
            source,
        }
    }

    #[test]
    fn errors_map_to_statuses_and_codes() {
        assert_eq!(
            status(JwtError::Expired.into()),
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        );
        assert_eq!(
            status(JwtError::KeysUnavailable("down".into()).into()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into())
        );
        assert_eq!(
            status(Error::NotFound),
            (StatusCode::NOT_FOUND, "not_found".into())
        );
        assert_eq!(
            status(Error::RateLimited(Denied {
                scope: Scope::User,
                retry_after: Duration::from_millis(1500),
            })),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
        );
        assert_eq!(
            status(upstream(UpstreamError::Unavailable("refused".into()))),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into())
        );
        assert_eq!(
            status(upstream(UpstreamError::Timeout)),
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout".into())
        );
        assert_eq!(
            status(upstream(UpstreamError::Protocol("garbage".into()))),
            (StatusCode::BAD_GATEWAY, "bad_gateway".into())
        );
        assert_eq!(
            status(upstream(UpstreamError::BodyTooLarge)),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into())
        );
        assert_eq!(
            status(upstream(UpstreamError::ClientBody("reset".into()))),
            (StatusCode::BAD_REQUEST, "bad_request".into())
        );
    }

    #[test]
    fn rate_limits_say_when_to_retry() {
        let api = ApiError::from(Error::RateLimited(Denied {
            scope: Scope::Ip,
            retry_after: Duration::from_millis(1500),
        }));
        assert_eq!(api.retry_after, Some(2));
    }
}
