//! Live updates as Server-Sent Events.
//!
//! - `GET /api/v1/devices/{id}/stream`: telemetry, status changes and
//!   command answers of one device. Whoever may `GET /api/v1/devices/{id}`
//!   may watch it: the gateway asks device-service exactly that, with the
//!   caller's token, and passes a refusal (401/403/404) on as it is.
//! - `GET /api/v1/devices/stream`: status changes of every device the
//!   caller may see, by device-service's own rule: a role of scope `fleet`
//!   (and superusers) see all. A caller whose `device:read` reaches only
//!   their own devices sees the devices device-service lists for them: the
//!   list is loaded when the stream opens and on every
//!   re-check, and a device that is not on it (created since) is looked up
//!   once with the caller's token, a refusal remembered until the next
//!   re-check. Lookups are budgeted per stream (a burst of status changes
//!   of other people's devices costs device-service a bounded number of
//!   calls); a device the budget leaves unchecked is not shown until the
//!   list is next loaded or the budget allows the lookup.
//!
//! Events: `ready` once the stream is open; `telemetry`, `status`,
//! `command_response` as they happen; `lagged` with `{"missed": n}` when the
//! client fell behind; `revoked` (access was re-checked and refused) or
//! `expired` (the token expired) just before the stream ends. A client
//! reconnects with a fresh token. Comment lines keep idle streams open.
//!
//! A fleet stream opened with `?rate_secs=N` (1 to 60) also sends a `rate`
//! event every N seconds, `{"telemetry_per_sec": x, "window_secs": N}`:
//! the telemetry messages of the devices the caller sees, per second over
//! the last window. The console's dashboard shows it.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use wf_common::extract::Path;
use wf_common::permissions::Scope as Reach;

use super::edge::Edge;
use crate::clients::{SmallResponse, encode_segment};
use crate::domain::bucket::{Bucket, Limit};
use crate::domain::routes::Upstream;
use crate::error::{Error, Result};
use crate::state::{AppState, Identity};
use crate::streams::{EventKind, StreamEvent};

/// Devices listed per page when loading what a caller owns.
const PAGE: usize = 500;
/// Pages loaded at most; devices beyond are looked up one by one.
const MAX_PAGES: usize = 20;
/// Refusals remembered at most, per stream.
const MAX_REFUSED: usize = 10_000;
/// Lookups of unlisted devices per stream: sustained per second, and burst.
const LOOKUPS: Limit = Limit::new(5.0, 20);

pub async fn device(
    State(state): State<AppState>,
    Extension(edge): Extension<Edge>,
    Path(id): Path<String>,
) -> Response {
    let Some(identity) = edge.identity.clone() else {
        return Error::Unauthenticated("expected a bearer token".into()).into_response();
    };
    // Subscribed before the check, so nothing published meanwhile is missed.
    let rx = state.hub.subscribe();
    let mut scope = Scope::Device(id);
    match scope.authorize(&state, &identity, &edge.request_id).await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return refusal,
        Err(e) => return e.into_response(),
    }
    open(state, edge, identity, scope, rx, None)
}

#[derive(Deserialize)]
pub struct FleetQuery {
    rate_secs: Option<u64>,
}

pub async fn fleet(
    State(state): State<AppState>,
    Extension(edge): Extension<Edge>,
    wf_common::extract::Query(query): wf_common::extract::Query<FleetQuery>,
) -> Response {
    let Some(identity) = edge.identity.clone() else {
        return Error::Unauthenticated("expected a bearer token".into()).into_response();
    };
    let rate_every = match query.rate_secs {
        None => None,
        Some(secs @ 1..=60) => Some(Duration::from_secs(secs)),
        Some(_) => {
            return Error::BadRequest("rate_secs must be 1 to 60".into()).into_response();
        }
    };
    let rx = state.hub.subscribe();
    let mut scope = Scope::Fleet(FleetView::default());
    match scope.authorize(&state, &identity, &edge.request_id).await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return refusal,
        Err(e) => return e.into_response(),
    }
    open(state, edge, identity, scope, rx, rate_every)
}

/// What a stream shows.
enum Scope {
    Device(String),
    Fleet(FleetView),
}

/// The devices a fleet stream may show.
struct FleetView {
    all: bool,
    visible: HashSet<String>,
    refused: HashMap<String, Instant>,
    lookups: Bucket,
}

impl Default for FleetView {
    fn default() -> Self {
        Self {
            all: false,
            visible: HashSet::new(),
            refused: HashMap::new(),
            lookups: Bucket::full(LOOKUPS, std::time::Instant::now()),
        }
    }
}

#[derive(Deserialize)]
struct SummaryScope {
    scope: Reach,
}

#[derive(Deserialize)]
struct DevicePage {
    items: Vec<DeviceItem>,
    #[serde(default)]
    total: Option<usize>,
}

#[derive(Deserialize)]
struct DeviceItem {
    id: String,
}

/// The caller may (`Ok(Ok)`) or may not (`Ok(Err(refusal))`) watch; `Err`
/// when device-service could not say.
type Verdict = Result<Result<(), Response>>;

impl Scope {
    async fn authorize(
        &mut self,
        state: &AppState,
        identity: &Identity,
        request_id: &str,
    ) -> Verdict {
        match self {
            Self::Device(id) => {
                let path = format!("/api/v1/devices/{}", encode_segment(id));
                let answer = ask(state, identity, &path, request_id).await?;
                Ok(if answer.status.is_success() {
                    Ok(())
                } else {
                    Err(pass_through(answer))
                })
            }
            Self::Fleet(view) => view.load(state, identity, request_id).await,
        }
    }

    /// Whether `event` belongs on this stream.
    async fn shows(
        &mut self,
        state: &AppState,
        identity: &Identity,
        request_id: &str,
        event: &StreamEvent,
        recheck: Duration,
    ) -> bool {
        match self {
            Self::Device(id) => event.device_id == *id,
            Self::Fleet(view) => {
                event.kind == EventKind::Status
                    && view
                        .may_see(state, identity, request_id, &event.device_id, recheck)
                        .await
            }
        }
    }
}

impl FleetView {
    /// Checks device:read and loads the devices the caller may see, as
    /// device-service decides it: every device when the caller's
    /// `device:read` reaches the whole fleet, otherwise the caller's own.
    async fn load(&mut self, state: &AppState, identity: &Identity, request_id: &str) -> Verdict {
        let answer = ask(state, identity, "/api/v1/devices/summary", request_id).await?;
        if !answer.status.is_success() {
            return Ok(Err(pass_through(answer)));
        }
        let summary: SummaryScope =
            serde_json::from_slice(&answer.body).map_err(|e| Error::Upstream {
                upstream: Upstream::Device,
                source: crate::clients::UpstreamError::Protocol(format!(
                    "unexpected device summary: {e}"
                )),
            })?;
        if summary.scope == Reach::Fleet {
            self.all = true;
            self.visible.clear();
            self.refused.clear();
            return Ok(Ok(()));
        }
        let mut visible = HashSet::new();
        for page in 0..MAX_PAGES {
            let offset = page * PAGE;
            let path = format!("/api/v1/devices?limit={PAGE}&offset={offset}&sort=id");
            let answer = ask(state, identity, &path, request_id).await?;
            if !answer.status.is_success() {
                return Ok(Err(pass_through(answer)));
            }
            let listed: DevicePage =
                serde_json::from_slice(&answer.body).map_err(|e| Error::Upstream {
                    upstream: Upstream::Device,
                    source: crate::clients::UpstreamError::Protocol(format!(
                        "unexpected device list: {e}"
                    )),
                })?;
            let count = listed.items.len();
            visible.extend(listed.items.into_iter().map(|d| d.id));
            if count < PAGE || listed.total.is_some_and(|t| offset + count >= t) {
                break;
            }
        }
        self.all = false;
        self.visible = visible;
        self.refused.clear();
        Ok(Ok(()))
    }

    async fn may_see(
        &mut self,
        state: &AppState,
        identity: &Identity,
        request_id: &str,
        device_id: &str,
        remember: Duration,
    ) -> bool {
        if self.all || self.visible.contains(device_id) {
            return true;
        }
        let now = Instant::now();
        if self
            .refused
            .get(device_id)
            .is_some_and(|until| *until > now)
        {
            return false;
        }
        if self.lookups.take(LOOKUPS, now.into_std()).is_err() {
            return false;
        }
        let path = format!("/api/v1/devices/{}", encode_segment(device_id));
        let allowed = match ask(state, identity, &path, request_id).await {
            Ok(answer) => answer.status.is_success(),
            Err(e) => {
                tracing::debug!(error = %e, device_id, "device lookup for a fleet stream failed");
                false
            }
        };
        if allowed {
            self.visible.insert(device_id.to_string());
        } else {
            if self.refused.len() >= MAX_REFUSED {
                self.refused.clear();
            }
            self.refused.insert(device_id.to_string(), now + remember);
        }
        allowed
    }
}

/// `GET path` on device-service as the caller.
async fn ask(
    state: &AppState,
    identity: &Identity,
    path: &str,
    request_id: &str,
) -> Result<SmallResponse> {
    state
        .upstreams
        .get(Upstream::Device, path, &identity.token, Some(request_id))
        .await
        .map_err(|source| Error::Upstream {
            upstream: Upstream::Device,
            source,
        })
}

/// device-service's refusal, as it gave it.
fn pass_through(answer: SmallResponse) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    if let Some(ct) = answer.content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}

/// A live stream's state between events.
struct Session {
    state: AppState,
    identity: Arc<Identity>,
    request_id: Arc<str>,
    scope: Scope,
    rx: tokio::sync::broadcast::Receiver<Arc<StreamEvent>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    recheck_every: Duration,
    recheck_at: Instant,
    expires_at: Instant,
    /// Set once the closing event went out.
    finished: bool,
    /// Fleet streams asked for `rate` events: how often, when next, and
    /// the telemetry messages counted since the last one.
    rate_every: Option<Duration>,
    rate_at: Instant,
    rate_count: u64,
    _gauge: SubscriberGauge,
}

struct SubscriberGauge;

impl SubscriberGauge {
    fn new() -> Self {
        metrics::gauge!("wf_gateway_stream_subscribers").increment(1.0);
        Self
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!("wf_gateway_stream_subscribers").decrement(1.0);
    }
}

fn open(
    state: AppState,
    edge: Edge,
    identity: Arc<Identity>,
    scope: Scope,
    rx: tokio::sync::broadcast::Receiver<Arc<StreamEvent>>,
    rate_every: Option<Duration>,
) -> Response {
    let recheck_every = Duration::from_secs(state.config.stream_recheck_secs.max(1));
    let keep_alive = Duration::from_secs(state.config.stream_keep_alive_secs.max(1));
    let now_secs = wf_common::now_millis() / 1000;
    let expires_in =
        Duration::from_secs(u64::try_from(identity.expires_at - now_secs).unwrap_or(0));
    let ready = json!({
        "device_id": match &scope { Scope::Device(id) => Some(id.as_str()), Scope::Fleet(_) => None },
        "expires_in_secs": expires_in.as_secs(),
    })
    .to_string();
    let session = Session {
        stop: Box::pin(state.stop.wait()),
        state,
        identity,
        request_id: edge.request_id,
        scope,
        rx,
        recheck_every,
        recheck_at: Instant::now() + recheck_every,
        expires_at: Instant::now() + expires_in,
        finished: false,
        rate_every,
        rate_at: Instant::now() + rate_every.unwrap_or_default(),
        rate_count: 0,
        _gauge: SubscriberGauge::new(),
    };
    let first = futures_util::stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("ready").data(ready))
    });
    let rest = futures_util::stream::unfold(session, next_event);
    let mut response = Sse::new(futures_util::StreamExt::chain(first, rest))
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    // nginx and friends must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn next_event(mut s: Session) -> Option<(Result<Event, Infallible>, Session)> {
    if s.finished {
        return None;
    }
    loop {
        tokio::select! {
            () = &mut s.stop => return None,
            () = tokio::time::sleep_until(s.expires_at) => {
                s.finished = true;
                let event = Event::default()
                    .event("expired")
                    .data(r#"{"message":"the access token expired; reconnect with a fresh one"}"#);
                return Some((Ok(event), s));
            }
            () = tokio::time::sleep_until(s.recheck_at) => {
                s.recheck_at = Instant::now() + s.recheck_every;
                let identity = s.identity.clone();
                let request_id = s.request_id.clone();
                match s.scope.authorize(&s.state, &identity, &request_id).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refusal)) => {
                        s.finished = true;
                        let event = Event::default().event("revoked").data(
                            json!({"status": refusal.status().as_u16()}).to_string(),
                        );
                        return Some((Ok(event), s));
                    }
                    // device-service unreachable: keep the stream, ask again later.
                    Err(e) => tracing::debug!(error = %e, "stream access re-check failed"),
                }
            }
            () = tokio::time::sleep_until(s.rate_at), if s.rate_every.is_some() => {
                let every = s.rate_every.unwrap_or(Duration::from_secs(1));
                s.rate_at = Instant::now() + every;
                let per_sec = s.rate_count as f64 / every.as_secs_f64();
                s.rate_count = 0;
                let event = Event::default().event("rate").data(
                    json!({"telemetry_per_sec": per_sec, "window_secs": every.as_secs()}).to_string(),
                );
                return Some((Ok(event), s));
            }
            received = s.rx.recv() => match received {
                Ok(event) => {
                    if s.rate_every.is_some() && event.kind == EventKind::Telemetry {
                        if let Scope::Fleet(view) = &s.scope
                            && (view.all || view.visible.contains(&event.device_id))
                        {
                            s.rate_count += 1;
                        }
                        continue;
                    }
                    let identity = s.identity.clone();
                    let request_id = s.request_id.clone();
                    let recheck = s.recheck_every;
                    if s.scope.shows(&s.state, &identity, &request_id, &event, recheck).await {
                        let sse = Event::default().event(event.kind.name()).data(event.data.as_str());
                        return Some((Ok(sse), s));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!("wf_gateway_stream_lagged_total").increment(1);
                    let event = Event::default()
                        .event("lagged")
                        .data(json!({"missed": missed}).to_string());
                    return Some((Ok(event), s));
                }
                Err(RecvError::Closed) => return None,
            },
        }
    }
}
