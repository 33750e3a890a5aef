//! gRPC plumbing shared by every service: a tower layer that carries the
//! request id from metadata into a span and the task, and an interceptor
//! that forwards it on outgoing calls.

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

/// A client interceptor that forwards the current request id.
pub fn propagate_request_id(
    mut req: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(id) = telemetry::current_request_id() {
        if let Ok(v) = id.parse() {
            req.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
    }
    Ok(req)
}

/// A channel to another service that connects on first use, so services
/// can start in any order; calls fail after a short connect timeout rather
/// than hang.
pub fn lazy_channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("invalid service URL {url:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10))
        .connect_lazy())
}
