//! EMQX's HTTP authentication and authorization hooks, answering with the
//! same rules as the embedded broker. Configure EMQX to POST
//! `{"clientid": "${clientid}", "username": "${username}", "password": "${password}"}`
//! to `/mqtt/auth` and
//! `{"clientid": "${clientid}", "username": "${username}", "topic": "${topic}", "action": "${action}"}`
//! to `/mqtt/acl`; both answer `{"result": "allow"}` or `{"result": "deny"}`.

use axum::Json as JsonResponse;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use wf_common::extract::Json;

use crate::access::{self, Action, ConnectRequest, Refusal};
use crate::error::Result;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct Verdict {
    result: &'static str,
}

impl Verdict {
    fn of(allowed: bool) -> JsonResponse<Self> {
        JsonResponse(Self {
            result: if allowed { "allow" } else { "deny" },
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct AuthRequest {
    clientid: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// 503 when device-service cannot be asked, so EMQX does not take an
/// outage for a wrong password.
pub async fn auth(
    State(state): State<AppState>,
    Json(req): Json<AuthRequest>,
) -> Result<JsonResponse<Verdict>> {
    let outcome = access::authorize_connect(
        state.authenticator.as_ref(),
        ConnectRequest {
            client_id: &req.clientid,
            username: req.username.as_deref(),
            password: req.password.as_deref().map(str::as_bytes),
            will_topic: None,
        },
    )
    .await;
    match outcome {
        Ok(_) => Ok(Verdict::of(true)),
        Err(Refusal::Unavailable(e)) => Err(e),
        Err(refusal) => {
            metrics::counter!("wf_mqtt_connections_refused_total", "reason" => refusal.reason())
                .increment(1);
            Ok(Verdict::of(false))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct AclRequest {
    clientid: String,
    #[serde(default)]
    username: Option<String>,
    topic: String,
    action: Action,
}

pub async fn acl(Json(req): Json<AclRequest>) -> JsonResponse<Verdict> {
    let allowed = access::authorize_topic(
        &req.clientid,
        req.username.as_deref(),
        &req.topic,
        req.action,
    );
    if !allowed {
        let action = match req.action {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        };
        metrics::counter!("wf_mqtt_acl_denied_total", "action" => action).increment(1);
    }
    Verdict::of(allowed)
}
