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
