//! The pieces every service's HTTP router shares: health, readiness, metrics,
//! fallbacks, body limits and the request context.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::error;
use crate::telemetry;

/// A dependency whose reachability decides readiness.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

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
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    telemetry::metrics_handle().render(),
                )
            }),
        )
}

async fn readiness(checks: &[(&'static str, ReadinessCheck)]) -> Response {
    let mut failed = serde_json::Map::new();
    for (name, check) in checks {
        if let Err(e) = check().await {
            failed.insert((*name).to_string(), json!(e));
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
