//! gRPC plumbing shared by every service: a tower layer that carries the
//! request id from metadata into a span and the task, the shared secret
//! that authenticates every call between services ([`InternalToken`]: a
//! layer that checks it on the server, an interceptor that sends it with
//! the request id on the client), and lazily connecting channels.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tracing::Instrument;

use crate::telemetry::{self, REQUEST_ID_HEADER};

/// Wraps every gRPC call in the request id taken from `x-request-id`
/// metadata (or a new one).
#[derive(Clone, Copy)]
pub struct RequestContextLayer {
    service: &'static str,
}

impl RequestContextLayer {
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestContext {
            inner,
            service: self.service,
        }
    }
}

#[derive(Clone)]
pub struct RequestContext<S> {
    inner: S,
    service: &'static str,
}

impl<S, B> tower::Service<http::Request<B>> for RequestContext<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let id = telemetry::request_id_from(
            req.headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let span = tracing::info_span!(
            "grpc",
            service = self.service,
            request_id = %id,
            method = %req.uri().path(),
        );
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(telemetry::with_request_id(
            id,
            inner.call(req).instrument(span),
        ))
    }
}

/// Forwards the current request id on an outgoing call.
fn propagate_request_id(req: &mut tonic::Request<()>) {
    if let Some(id) = telemetry::current_request_id()
        && let Ok(v) = id.parse()
    {
        req.metadata_mut().insert(REQUEST_ID_HEADER, v);
    }
}

/// The metadata key internal calls carry their secret in.
const INTERNAL_AUTH_HEADER: &str = "authorization";

/// The secret that every gRPC call between services carries (as
/// `authorization: Bearer <token>`) and every gRPC server checks, so that
/// reaching a service's gRPC port is not enough to call it.
///
/// The default is a random token of this process: a service that is not
/// told the shared token answers no other process. `wf-iot serve` hands
/// one token to every service it runs; services run apart are given the
/// same `internal.token`.
#[derive(Clone)]
pub struct InternalToken(Arc<str>);

impl Default for InternalToken {
    fn default() -> Self {
        Self::generate()
    }
}

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(***)")
    }
}

impl InternalToken {
    /// Shortest token accepted from the configuration.
    pub const MIN_LEN: usize = 16;

    pub fn generate() -> Self {
        Self(crate::random::token().into())
    }

    /// A configured token: at least [`Self::MIN_LEN`] characters that can
    /// travel in a header.
    pub fn parse(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < Self::MIN_LEN {
            return Err(format!(
                "the internal token must have at least {} characters",
                Self::MIN_LEN
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the internal token must be printable ASCII without spaces".into());
        }
        Ok(Self(token.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The server side: a layer refusing calls without this token.
    pub fn layer(&self, service: &'static str) -> InternalAuthLayer {
        InternalAuthLayer {
            expected: format!("Bearer {}", self.0).into(),
            service,
        }
    }

    /// The client side: sends this token and the current request id.
    pub fn interceptor(&self) -> Outgoing {
        Outgoing {
            authorization: format!("Bearer {}", self.0)
                .parse()
                .expect("a parsed token is a valid header value"),
        }
    }
}

/// The interceptor of every client of another service: the internal token
/// and the current request id.
#[derive(Clone)]
pub struct Outgoing {
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Outgoing {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        propagate_request_id(&mut req);
        req.metadata_mut()
            .insert(INTERNAL_AUTH_HEADER, self.authorization.clone());
        Ok(req)
    }
}

/// A client of another service, with the internal token and request ids.
pub type InternalChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Outgoing>;

/// Refuses gRPC calls that do not carry the internal token, except the
/// standard health check (which reveals nothing and serves probes).
#[derive(Clone)]
pub struct InternalAuthLayer {
    expected: Arc<str>,
    service: &'static str,
}

impl<S> tower::Layer<S> for InternalAuthLayer {
    type Service = InternalAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InternalAuth {
            inner,
            expected: self.expected.clone(),
            service: self.service,
        }
    }
}

#[derive(Clone)]
pub struct InternalAuth<S> {
    inner: S,
    expected: Arc<str>,
    service: &'static str,
}

/// Refused internal calls are logged at most this often (each is counted).
static REFUSED_LOG: telemetry::LogEvery =
    telemetry::LogEvery::new(std::time::Duration::from_secs(10));

impl<S, B, RB> tower::Service<http::Request<B>> for InternalAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let presented = req
            .headers()
            .get(INTERNAL_AUTH_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let allowed = path.starts_with("/grpc.health.v1.Health/")
            || bool::from(subtle::ConstantTimeEq::ct_eq(
                presented,
                self.expected.as_bytes(),
            ));
        if !allowed {
            metrics::counter!("wf_grpc_unauthenticated_total", "service" => self.service)
                .increment(1);
            if REFUSED_LOG.ready() {
                tracing::warn!(
                    service = self.service,
                    method = path,
                    "refused a gRPC call without the internal token \
                     (wf_grpc_unauthenticated_total counts every one)"
                );
            }
            let status = tonic::Status::unauthenticated(
                "this is an internal service: calls must carry the internal token",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

/// A generated tonic server (`XServiceServer<..>`) that [`serve`] can run.
pub trait GrpcService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + tonic::server::NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves a service's gRPC API on `listener` until `shutdown` resolves:
/// with the standard health service (reporting `service` as serving) and
/// reflection, every call in a span with its request id, and every call but
/// the health check refused unless it carries `token`.
pub async fn serve<S: GrpcService>(
    name: &'static str,
    token: &InternalToken,
    service: S,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<S>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(wf_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .layer(RequestContextLayer::new(name))
        .layer(token.layer(name))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

/// A page of a gRPC list call: `page_size` (0 means 100, at most 1000) and
/// `page_token`, the opaque offset a previous page handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub fn parse(page_size: u32, page_token: &str) -> Result<Self, tonic::Status> {
        let limit = match page_size {
            0 => 100,
            n => i64::from(n.min(1000)),
        };
        let offset = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse()
                .ok()
                .filter(|o: &i64| *o >= 0)
                .ok_or_else(|| {
                    tonic::Status::invalid_argument("page_token is not one this service issued")
                })?
        };
        Ok(Self { limit, offset })
    }

    /// The token of the page after this one, which returned `returned` of
    /// `total` items; empty on the last page.
    pub fn next_token(&self, returned: usize, total: i64) -> String {
        let next = self.offset + returned as i64;
        if next < total {
            next.to_string()
        } else {
            String::new()
        }
    }
}

/// Maps a failed call to another service: not found and invalid argument
/// pass through; anything else means `service` is unavailable.
pub fn call_error(service: &str, status: tonic::Status) -> crate::Error {
    match status.code() {
        tonic::Code::NotFound => crate::Error::NotFound(status.message().to_string()),
        tonic::Code::InvalidArgument => crate::Error::Validation(status.message().to_string()),
        _ => crate::Error::Unavailable(format!("{service}: {}", status.message())),
    }
}

/// A channel to another service that connects on first use, so services
/// can start in any order; calls fail after a short connect timeout rather
/// than hang. Every call carries `token` and the current request id.
pub fn internal_channel(url: &str, token: &InternalToken) -> anyhow::Result<InternalChannel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("invalid service URL {url:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10))
        .connect_lazy();
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        token.interceptor(),
    ))
}

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn pages_default_cap_and_refuse_foreign_tokens() {
        assert_eq!(
            Page::parse(0, "").unwrap(),
            Page {
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(
            Page::parse(5000, "40").unwrap(),
            Page {
                limit: 1000,
                offset: 40
            }
        );
        for bad in ["-1", "abc", "1.5"] {
            assert_eq!(
                Page::parse(10, bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
        let page = Page::parse(10, "20").unwrap();
        assert_eq!(page.next_token(10, 35), "30");
        assert_eq!(page.next_token(10, 30), "");
    }
}
