//! The pieces every service's HTTP router shares: health, readiness, metrics,
//! fallbacks, body limits and the request context.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::error;
use crate::telemetry;

mod serve;
pub use serve::{HttpLimits, serve};

/// A dependency whose reachability decides readiness.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Ready while the database answers `SELECT 1`.
pub fn database_check(db: crate::db::Db) -> ReadinessCheck {
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { db.ping().await.map_err(|e| e.to_string()) })
    })
}

/// Ready while the event bus answers.
pub fn event_bus_check(bus: Arc<dyn crate::events::EventBus>) -> ReadinessCheck {
    Arc::new(move || {
        let bus = bus.clone();
        Box::pin(async move { bus.ping().await.map_err(|e| e.to_string()) })
    })
}

/// `/healthz` (the process is up), `/readyz` (its dependencies answer) and
/// `/metrics` (Prometheus text format).
pub fn ops_routes(checks: Vec<(&'static str, ReadinessCheck)>) -> Router {
    let checks = Arc::new(checks);
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move { readiness(&checks).await }
            }),
        )
        .route(
            "/metrics",
            get(|headers: axum::http::HeaderMap| async move {
                let authorization = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                if !telemetry::metrics_request_allowed(authorization) {
                    return error::ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "/metrics needs Authorization: Bearer <log.metrics_token>",
                    )
                    .into_response();
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    telemetry::metrics_handle().render(),
                )
                    .into_response()
            }),
        )
}

/// How long `/readyz` waits for one dependency before calling it failing.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs every check at once, each bounded by [`CHECK_TIMEOUT`], so an
/// unreachable dependency makes `/readyz` answer "not ready" promptly
/// instead of hanging until the prober gives up.
async fn readiness(checks: &[(&'static str, ReadinessCheck)]) -> Response {
    let results = futures_util::future::join_all(checks.iter().map(|(name, check)| async move {
        let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        };
        (*name, result)
    }))
    .await;
    let mut failed = serde_json::Map::new();
    for (name, result) in results {
        if let Err(e) = result {
            failed.insert(name.to_string(), json!(e));
        }
    }
    if failed.is_empty() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "failing": failed})),
        )
            .into_response()
    }
}

/// Adds what every service router ends with: envelope fallbacks, the body
/// size limit and the request-context middleware (request id, span, metrics).
pub fn finish(router: Router, service: &'static str, body_limit: usize) -> Router {
    // Install the recorder before the first request is counted.
    telemetry::metrics_handle();
    router
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            telemetry::request_context(service, req, next)
        }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn readyz(
        checks: Vec<(&'static str, ReadinessCheck)>,
    ) -> (StatusCode, serde_json::Value) {
        let resp = ops_routes(checks)
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_dependency_that_does_not_answer_is_reported_promptly() {
        let fine: ReadinessCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        let hangs: ReadinessCheck = Arc::new(|| Box::pin(std::future::pending()));
        let fails: ReadinessCheck = Arc::new(|| Box::pin(async { Err("refused".to_string()) }));
        let (status, body) = readyz(vec![("database", fine.clone())]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");

        let started = std::time::Instant::now();
        let (status, body) = readyz(vec![
            ("database", fine),
            ("redis", hangs),
            ("broker", fails),
        ])
        .await;
        assert!(started.elapsed() < CHECK_TIMEOUT + Duration::from_secs(1));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["failing"]["broker"], "refused");
        assert!(
            body["failing"]["redis"]
                .as_str()
                .unwrap()
                .contains("no answer")
        );
        assert!(body["failing"].get("database").is_none());
    }
}
