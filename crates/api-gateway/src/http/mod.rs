//! The gateway's HTTP surface: its own live-stream and ops endpoints, and
//! everything else proxied, behind the edge (request id, tokens, rate
//! limits, metrics) and CORS.

mod edge;
mod proxy;
mod streams;

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use wf_common::http::ops_routes;
use wf_common::telemetry::REQUEST_ID_HEADER;

use crate::CorsConfig;
use crate::state::AppState;

pub fn router(state: AppState) -> anyhow::Result<Router> {
    // Install the recorder before the first request is counted.
    wf_common::telemetry::metrics_handle();
    let cors = cors_layer(&state.config.cors)?;
    let bus_check = wf_common::http::event_bus_check(state.bus.clone());
    Ok(Router::new()
        .route("/api/v1/devices/stream", get(streams::fleet))
        .route("/api/v1/devices/{id}/stream", get(streams::device))
        .route("/api/openapi.json", get(openapi))
        .merge(crate::console::routes())
        .fallback(proxy::forward)
        .with_state(state.clone())
        .merge(ops_routes(vec![("event_bus", bus_check)]))
        .merge(wf_common::openapi::docs_routes("/api/openapi.json"))
        .method_not_allowed_fallback(wf_common::error::method_not_allowed_fallback)
        .layer(axum::middleware::from_fn_with_state(state, edge::edge))
        .layer(cors))
}

/// The services' OpenAPI documents merged into one. A service that does not
/// answer is left out rather than failing the whole document.
async fn openapi(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    use crate::domain::routes::Upstream;
    let mut documents = Vec::new();
    for upstream in [Upstream::Auth, Upstream::Device, Upstream::Firmware] {
        match state
            .upstreams
            .get(upstream, "/api/openapi.json", "", None)
            .await
        {
            Ok(resp) if resp.status.is_success() => match serde_json::from_slice(&resp.body) {
                Ok(doc) => documents.push(doc),
                Err(e) => {
                    tracing::warn!(?upstream, error = %e, "an upstream's OpenAPI document is not JSON")
                }
            },
            Ok(resp) => {
                tracing::debug!(?upstream, status = %resp.status, "no OpenAPI document upstream")
            }
            Err(e) => {
                tracing::warn!(?upstream, error = %e, "fetching an upstream's OpenAPI document failed")
            }
        }
    }
    axum::Json(wf_common::openapi::merge(
        "wf-iot API",
        env!("CARGO_PKG_VERSION"),
        &documents,
    ))
}

/// CORS from configuration. Preflights (`OPTIONS`) are answered here and
/// never reach a service; origins not listed get no `Access-Control-*`
/// headers, so browsers refuse them.
pub fn cors_layer(config: &CorsConfig) -> anyhow::Result<CorsLayer> {
    let origins: Vec<&str> = config
        .allowed_origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .collect();
    let any_origin = origins.contains(&"*");
    let any_header = config.allowed_headers.iter().any(|h| h.trim() == "*");
    anyhow::ensure!(
        !(config.allow_credentials && (any_origin || any_header)),
        "gateway.cors: allow_credentials cannot be combined with \"*\" origins or headers; list them"
    );
    anyhow::ensure!(
        !any_origin || origins.len() == 1,
        "gateway.cors.allowed_origins: \"*\" stands alone"
    );
    let allow_origin = if any_origin {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .map(|o| {
                    HeaderValue::from_str(o)
                        .with_context(|| format!("gateway.cors.allowed_origins: {o:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    let methods = config
        .allowed_methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .with_context(|| format!("gateway.cors.allowed_methods: {m:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let allow_headers = if any_header {
        AllowHeaders::any()
    } else {
        AllowHeaders::list(
            config
                .allowed_headers
                .iter()
                .map(|h| {
                    HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                        .with_context(|| format!("gateway.cors.allowed_headers: {h:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods(methods)
        .allow_headers(allow_headers)
        .allow_credentials(config.allow_credentials)
        .expose_headers([
            HeaderName::from_static(REQUEST_ID_HEADER),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(config.max_age_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], headers: &[&str], credentials: bool) -> anyhow::Result<CorsLayer> {
        cors_layer(&CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_headers: headers.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            ..CorsConfig::default()
        })
    }

    #[test]
    fn cors_settings_that_browsers_reject_are_refused_at_start() {
        assert!(cors(&["*"], &["authorization"], true).is_err());
        assert!(cors(&["https://a.example"], &["*"], true).is_err());
        assert!(cors(&["*", "https://a.example"], &["authorization"], false).is_err());
        assert!(cors(&["https://a\u{7}.example"], &["authorization"], false).is_err());
        assert!(cors(&["https://a.example"], &["authorization"], true).is_ok());
        assert!(cors(&["*"], &["*"], false).is_ok());
        assert!(cors(&[], &["authorization"], false).is_ok());
        let bad_method = CorsConfig {
            allowed_methods: vec!["GE T".into()],
            ..CorsConfig::default()
        };
        assert!(cors_layer(&bad_method).is_err());
    }
}
