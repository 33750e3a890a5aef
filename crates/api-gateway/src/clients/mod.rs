//! The gateway's one outbound dependency: the services behind it, over
//! pooled HTTP/1.1 connections.

mod body;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use body::{IdleTimeout, Progress};

use crate::Config;
use crate::domain::routes::Upstream;

/// Why an upstream call gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, unreachable, or no connection in time.
    #[error("cannot connect: {0}")]
    Unavailable(String),
    #[error("no answer in time")]
    Timeout,
    /// Broken or unexpected HTTP from the upstream.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client's body went over the route's limit.
    #[error("request body over the limit")]
    BodyTooLarge,
    /// The client's body could not be read (it went away mid-upload).
    #[error("reading the client's body failed: {0}")]
    ClientBody(String),
}

impl UpstreamError {
    /// The `kind` label of `wf_gateway_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
            Self::Protocol(_) => "protocol",
            Self::BodyTooLarge => "body_too_large",
            Self::ClientBody(_) => "client_body",
        }
    }

    /// Whether the upstream is to blame (counted as an upstream error).
    pub fn is_upstream_fault(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout | Self::Protocol(_)
        )
    }
}

/// Where one service listens.
#[derive(Debug, Clone)]
struct Base {
    scheme: Scheme,
    authority: Authority,
    /// A path the service is mounted under, without a trailing slash.
    prefix: String,
}

impl Base {
    fn parse(name: &str, url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .trim()
            .parse()
            .with_context(|| format!("gateway.{name}_url {url:?} is not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .with_context(|| format!("gateway.{name}_url {url:?} has no scheme"))?;
        anyhow::ensure!(
            scheme == Scheme::HTTP,
            "gateway.{name}_url {url:?}: upstream services are reached over plain http"
        );
        let authority = uri
            .authority()
            .cloned()
            .with_context(|| format!("gateway.{name}_url {url:?} has no host"))?;
        Ok(Self {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let pq: PathAndQuery = if self.prefix.is_empty() {
            path_and_query.parse()?
        } else {
            format!("{}{path_and_query}", self.prefix).parse()?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

/// A small answer read whole (access checks on the caller's behalf).
#[derive(Debug)]
pub struct SmallResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// The most of an upstream answer [`Upstreams::get`] reads.
const SMALL_BODY: usize = 1024 * 1024;

pub struct Upstreams {
    client: Client<HttpConnector, Body>,
    auth: Base,
    device: Base,
    firmware: Base,
    timeout: Duration,
}

impl Upstreams {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(
            config.upstream_connect_timeout_ms.max(1),
        )));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(512)
            .build(connector);
        Ok(Self {
            client,
            auth: Base::parse("auth", &config.auth_url)?,
            device: Base::parse("device", &config.device_url)?,
            firmware: Base::parse("firmware", &config.firmware_url)?,
            timeout: Duration::from_secs(config.upstream_timeout_secs.max(1)),
        })
    }

    fn base(&self, upstream: Upstream) -> &Base {
        match upstream {
            Upstream::Auth => &self.auth,
            Upstream::Device => &self.device,
            Upstream::Firmware => &self.firmware,
        }
    }

    /// The URI of `path_and_query` on `upstream`.
    pub fn uri(&self, upstream: Upstream, path_and_query: &str) -> Result<Uri, UpstreamError> {
        self.base(upstream)
            .uri(path_and_query)
            .map_err(|e| UpstreamError::Protocol(format!("building the upstream URI: {e}")))
    }

    /// How long a body may stall, either way.
    pub fn idle_timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `req` and waits for the response head: at most the upstream
    /// timeout after the request body was last read from (so an upload that
    /// keeps moving is never cut, and one that stalls is).
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let progress = Arc::new(Progress::new());
        let req = req.map(|body| Body::new(progress.track(body)));
        let call = self.client.request(req);
        tokio::pin!(call);
        loop {
            let deadline = progress.last_activity() + self.timeout;
            tokio::select! {
                result = &mut call => return result.map_err(classify),
                () = tokio::time::sleep_until(deadline.into()) => {
                    if progress.last_activity() + self.timeout <= std::time::Instant::now() {
                        return Err(UpstreamError::Timeout);
                    }
                }
            }
        }
    }

    /// `GET path` on `upstream` as the holder of `token`, read whole.
    pub async fn get(
        &self,
        upstream: Upstream,
        path_and_query: &str,
        token: &str,
        request_id: Option<&str>,
    ) -> Result<SmallResponse, UpstreamError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(self.uri(upstream, path_and_query)?)
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(id) = request_id {
            req = req.header(wf_common::telemetry::REQUEST_ID_HEADER, id);
        }
        let req = req
            .body(Body::empty())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(resp.into_body(), SMALL_BODY).collect(),
        )
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?
        .to_bytes();
        Ok(SmallResponse {
            status,
            content_type,
            body,
        })
    }
}

/// Sorts a client error into refused/unreachable, our client's body, or a
/// broken upstream.
fn classify(error: hyper_util::client::legacy::Error) -> UpstreamError {
    if error.is_connect() {
        return UpstreamError::Unavailable(chain(&error));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut from_request_body = false;
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return UpstreamError::BodyTooLarge;
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            from_request_body = true;
        }
        source = e.source();
    }
    if from_request_body {
        UpstreamError::ClientBody(chain(&error))
    } else {
        UpstreamError::Protocol(chain(&error))
    }
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_keep_their_prefix() {
        let base = Base::parse("device", "http://10.0.0.5:8102/").unwrap();
        assert_eq!(
            base.uri("/api/v1/devices?limit=1").unwrap().to_string(),
            "http://10.0.0.5:8102/api/v1/devices?limit=1"
        );
        let mounted = Base::parse("device", "http://devices.internal/svc").unwrap();
        assert_eq!(
            mounted.uri("/api/v1/devices").unwrap().to_string(),
            "http://devices.internal/svc/api/v1/devices"
        );
        assert!(Base::parse("auth", "https://auth.internal").is_err());
        assert!(Base::parse("auth", "auth.internal:8101").is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("dev-1_a.b~c"), "dev-1_a.b~c");
        assert_eq!(encode_segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
