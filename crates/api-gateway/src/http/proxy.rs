//! The reverse proxy: a request admitted by the edge goes to its service
//! with its body streamed as it arrives, and the answer streams back the
//! same way. Nothing is buffered whole.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Version, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;
use wf_common::telemetry::REQUEST_ID_HEADER;

use super::edge::{Edge, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::clients::IdleTimeout;
use crate::domain::routes::{Target, Upstream};
use crate::error::{Error, Result};
use crate::state::AppState;

pub const X_USER_ID: &str = "x-user-id";
pub const X_USERNAME: &str = "x-username";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers the gateway sets itself; a client's own are dropped.
const EDGE_SET: [&str; 6] = [
    X_USER_ID,
    X_USERNAME,
    REQUEST_ID_HEADER,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

pub async fn forward(State(state): State<AppState>, req: Request) -> Response {
    let Some(edge) = req.extensions().get::<Edge>().cloned() else {
        return Error::NotFound.into_response();
    };
    let upstream = match edge.route.target {
        Target::Upstream(upstream) => upstream,
        // A console path no page answers.
        Target::Console => return state.console.not_found(req.headers()),
        _ => return Error::NotFound.into_response(),
    };
    match proxy(&state, upstream, &edge, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn proxy(
    state: &AppState,
    upstream: Upstream,
    edge: &Edge,
    req: Request,
) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let limit = edge
        .route
        .body_limit(state.config.max_body_bytes, state.config.max_upload_bytes);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::PayloadTooLarge);
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = state
        .upstreams
        .uri(upstream, path_and_query)
        .map_err(|source| Error::Upstream { upstream, source })?;
    let mut out = axum::http::Request::new(Body::new(Limited::new(
        body,
        usize::try_from(limit).unwrap_or(usize::MAX),
    )));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = upstream_headers(parts.headers, edge);
    let response = state
        .upstreams
        .send(out)
        .await
        .map_err(|source| Error::Upstream { upstream, source })?;
    let (mut head, body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let body = Body::new(IdleTimeout::new(body, state.upstreams.idle_timeout()));
    Ok(Response::from_parts(head, body))
}

/// The client's headers without hop-by-hop ones and without anything the
/// edge vouches for, plus the edge's own: request id, verified identity and
/// forwarding information.
fn upstream_headers(mut headers: HeaderMap, edge: &Edge) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    // Most requests carry none of these: one look at the names they do
    // carry is cheaper than a lookup for each.
    let edge_set = |name: &HeaderName| EDGE_SET.contains(&name.as_str());
    if headers.keys().any(edge_set) {
        for name in EDGE_SET {
            headers.remove(name);
        }
    }
    // The client's `Expect: 100-continue` was answered by the gateway's own
    // server when it started reading the body.
    headers.remove(header::EXPECT);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if let Ok(v) = HeaderValue::from_str(&edge.request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    if let Some(identity) = &edge.identity {
        if let Ok(v) = HeaderValue::from_str(&identity.user_id) {
            headers.insert(X_USER_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&identity.username) {
            headers.insert(X_USERNAME, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&edge.forwarded_for) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(edge.forwarded_proto),
    );
    headers
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::routes::classify;
    use crate::state::Identity;

    fn edge(identity: bool) -> Edge {
        Edge {
            route: classify(&axum::http::Method::GET, "/api/v1/devices"),
            request_id: "req-1".into(),
            forwarded_for: "1.2.3.4, 10.1.1.1".into(),
            forwarded_proto: "http",
            identity: identity.then(|| {
                Arc::new(Identity {
                    user_id: "u-1".into(),
                    username: "alice".into(),
                    expires_at: 0,
                    token: "t".into(),
                })
            }),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn clients_cannot_vouch_for_themselves() {
        let incoming = headers(&[
            ("x-user-id", "admin"),
            ("x-username", "root"),
            ("x-request-id", "client-chosen"),
            ("x-forwarded-for", "6.6.6.6"),
            ("authorization", "Bearer t"),
        ]);
        let out = upstream_headers(incoming.clone(), &edge(false));
        assert!(out.get(X_USER_ID).is_none());
        assert!(out.get(X_USERNAME).is_none());
        assert_eq!(out[REQUEST_ID_HEADER], "req-1");
        assert_eq!(out[X_FORWARDED_FOR], "1.2.3.4, 10.1.1.1");
        // The services verify the token again.
        assert_eq!(out[header::AUTHORIZATION], "Bearer t");

        let out = upstream_headers(incoming, &edge(true));
        assert_eq!(out[X_USER_ID], "u-1");
        assert_eq!(out[X_USERNAME], "alice");
        assert_eq!(out.get_all(X_USER_ID).iter().count(), 1);
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let incoming = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("host", "gateway.example"),
            ("content-type", "application/json"),
        ]);
        let out = upstream_headers(incoming, &edge(false));
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "transfer-encoding",
            "te",
            "upgrade",
            "host",
        ] {
            assert!(out.get(gone).is_none(), "{gone}");
        }
        assert_eq!(out[header::CONTENT_TYPE], "application/json");
        assert_eq!(out[X_FORWARDED_HOST], "gateway.example");
        assert_eq!(out[X_FORWARDED_PROTO], "http");
    }
}
