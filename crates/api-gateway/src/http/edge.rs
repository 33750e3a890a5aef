//! What every request goes through first: its request id and span, the
//! client's address, the access token, the rate limits, and the metrics of
//! its route group.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use serde::Deserialize;
use tracing::Instrument;
use wf_common::telemetry::{REQUEST_ID_HEADER, request_id_from, with_request_id};

use crate::domain::routes::{Access, Route, Target, classify};
use crate::error::{Error, Result};
use crate::state::{AppState, Identity, canonical};

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// What the edge learnt about an admitted request, for the handlers.
#[derive(Debug, Clone)]
pub struct Edge {
    pub route: Route,
    pub request_id: Arc<str>,
    /// `X-Forwarded-For` for the upstream: its last entry is the client.
    pub forwarded_for: String,
    pub forwarded_proto: &'static str,
    /// The verified caller; `None` on public routes.
    pub identity: Option<Arc<Identity>>,
}

pub async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let request_id: Arc<str> = request_id_from(
        req.headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok()),
    )
    .into();
    let route = classify(req.method(), req.uri().path());
    let span = tracing::info_span!(
        "http",
        service = "api-gateway",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
        group = route.group.name(),
    );
    let handled = async {
        match admit(&state, route, request_id.clone(), &mut req).await {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    };
    let mut response =
        with_request_id(request_id.to_string(), handled.instrument(span.clone())).await;
    let elapsed = start.elapsed();
    let status = response.status();
    wf_common::telemetry::finish_response(&span, &mut response, &request_id, elapsed);
    let (requests, duration) = request_metrics(route.group.name(), status.as_u16());
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    response
}

/// The request counter and duration histogram of a route group and status.
/// The handles are looked up in the recorder once, not on every request.
fn request_metrics(group: &'static str, status: u16) -> (Counter, Histogram) {
    type Handles = HashMap<(&'static str, u16), (Counter, Histogram)>;
    static HANDLES: LazyLock<Mutex<Handles>> = LazyLock::new(Default::default);
    let mut handles = HANDLES.lock().unwrap_or_else(PoisonError::into_inner);
    handles
        .entry((group, status))
        .or_insert_with(|| {
            (
                metrics::counter!(
                    "wf_gateway_requests_total",
                    "group" => group,
                    "status" => status.to_string()
                ),
                metrics::histogram!("wf_gateway_request_duration_seconds", "group" => group),
            )
        })
        .clone()
}

/// Lets the request through, or says why not.
async fn admit(
    state: &AppState,
    route: Route,
    request_id: Arc<str>,
    req: &mut Request,
) -> Result<()> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let forwarded = Forwarded::of(state, peer, req.headers());
    let identity = match route.access {
        Access::Public => None,
        Access::Bearer | Access::BearerOrQuery => {
            let token = bearer_token(req.headers()).or_else(|| {
                (route.access == Access::BearerOrQuery)
                    .then(|| query_token(req.uri()))
                    .flatten()
            });
            let verified = match token {
                Some(token) => state.tokens.verify(&token).await.map_err(Error::from),
                None => Err(Error::Unauthenticated(
                    "expected Authorization: Bearer <access token>".into(),
                )),
            };
            match verified {
                Ok(identity) => Some(identity),
                Err(e) => {
                    // Refused tokens still cost their address a token, so
                    // guessing is rate limited too.
                    limit(state, route, forwarded.client_ip, None).await?;
                    return Err(e);
                }
            }
        }
    };
    if route.target == Target::Unknown {
        limit(state, route, forwarded.client_ip, None).await?;
        return Err(Error::NotFound);
    }
    if is_login(route, req) {
        let login = login_name(req).await?;
        state
            .limiter
            .check_login(forwarded.client_ip, &login)
            .await
            .map_err(|denied| refused(route, denied))?;
    } else if route.is_limited() {
        limit(
            state,
            route,
            forwarded.client_ip,
            identity.as_ref().map(|i| i.user_id.as_str()),
        )
        .await?;
    }
    req.extensions_mut().insert(Edge {
        route,
        request_id,
        forwarded_for: forwarded.chain,
        forwarded_proto: forwarded.proto,
        identity,
    });
    Ok(())
}

async fn limit(state: &AppState, route: Route, ip: IpAddr, user: Option<&str>) -> Result<()> {
    state
        .limiter
        .check(route.group, ip, user)
        .await
        .map_err(|denied| refused(route, denied))
}

/// Counts a refusal by the rate limits.
fn refused(route: Route, denied: crate::ratelimit::Denied) -> Error {
    metrics::counter!(
        "wf_gateway_rate_limited_total",
        "group" => route.group.name(),
        "scope" => denied.scope.name()
    )
    .increment(1);
    Error::RateLimited(denied)
}

/// The largest login body the gateway reads to learn the account's name.
const MAX_LOGIN_BODY: usize = 64 * 1024;

/// `POST /api/v1/auth/login`.
fn is_login(route: Route, req: &Request) -> bool {
    route.group == crate::domain::routes::RouteGroup::Auth
        && req.method() == axum::http::Method::POST
        && req.uri().path() == "/api/v1/auth/login"
}

/// The account a login names (`username`, or its aliases `email` and
/// `login`), read from the body, which is put back for the upstream. A
/// body that is not JSON names none: auth-service answers it.
async fn login_name(req: &mut Request) -> Result<String> {
    let body = std::mem::take(req.body_mut());
    let bytes = axum::body::to_bytes(body, MAX_LOGIN_BODY)
        .await
        .map_err(|_| Error::PayloadTooLarge)?;
    let name = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            ["username", "email", "login"]
                .iter()
                .find_map(|k| v.get(k).and_then(|n| n.as_str()).map(str::to_string))
        })
        .unwrap_or_default();
    *req.body_mut() = axum::body::Body::from(bytes);
    Ok(name)
}

/// The client's address and the forwarding headers for the upstream.
struct Forwarded {
    client_ip: IpAddr,
    chain: String,
    proto: &'static str,
}

impl Forwarded {
    /// A trusted proxy's `X-Forwarded-For` names the client last; anyone
    /// else's is kept for the record but the peer is appended, so the last
    /// entry the services read is always the client the gateway decided on.
    fn of(state: &AppState, peer: IpAddr, headers: &HeaderMap) -> Self {
        let peer = canonical(peer);
        let trusted = state.trusts(peer);
        let prior = headers
            .get(X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let from_proxy = prior
            .filter(|_| trusted)
            .and_then(|chain| chain.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok())
            .map(canonical);
        let (client_ip, chain) = match (from_proxy, prior) {
            (Some(client), Some(chain)) => (client, chain.to_string()),
            (_, Some(chain)) => (peer, format!("{chain}, {peer}")),
            (_, None) => (peer, peer.to_string()),
        };
        let proto = match headers.get(X_FORWARDED_PROTO).map(HeaderValue::as_bytes) {
            Some(b"https") if trusted => "https",
            _ => "http",
        };
        Self {
            client_ip,
            chain,
            proto,
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

fn query_token(uri: &axum::http::Uri) -> Option<String> {
    axum::extract::Query::<TokenQuery>::try_from_uri(uri)
        .ok()?
        .0
        .access_token
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn query_tokens() {
        let uri: axum::http::Uri = "/api/v1/devices/stream?x=1&access_token=a.b.c"
            .parse()
            .unwrap();
        assert_eq!(query_token(&uri).as_deref(), Some("a.b.c"));
        let none: axum::http::Uri = "/api/v1/devices/stream".parse().unwrap();
        assert_eq!(query_token(&none), None);
    }
}
