//! mqtt-gateway's HTTP port: health, readiness and metrics, and the HTTP
//! authentication and authorization hooks an external EMQX broker calls.

mod emqx;
mod guard;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use wf_common::http::{ReadinessCheck, finish, ops_routes};

use crate::state::AppState;

/// Bodies of the hook requests are small JSON documents.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router(state: AppState) -> Router {
    let bus_check = wf_common::http::event_bus_check(state.bus.clone());
    let broker = state.broker.clone();
    let broker_check: ReadinessCheck = Arc::new(move || {
        let ready = broker.check_ready();
        Box::pin(async move { ready })
    });
    let hooks = Router::new()
        .route("/mqtt/auth", post(emqx::auth))
        .route("/mqtt/acl", post(emqx::acl))
        .route_layer(axum::middleware::from_fn({
            let guard = guard::HookGuard::new(state.config.hooks.clone());
            move |peer, req, next| guard::check(guard.clone(), peer, req, next)
        }))
        .with_state(state);
    finish(
        hooks.merge(ops_routes(vec![
            ("event_bus", bus_check),
            ("mqtt_broker", broker_check),
        ])),
        "mqtt-gateway",
        MAX_BODY_BYTES,
    )
}
