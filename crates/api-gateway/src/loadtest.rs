//! A small HTTP load generator for `wf-iot bench api`: `concurrency`
//! clients on keep-alive connections send authenticated `GET url` back to
//! back for `duration`, and the report gives throughput and latency
//! percentiles.

use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use http::{Method, Request, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A request that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Requests completed (successful or not).
    pub requests: u64,
    /// Transport errors, timeouts and non-2xx answers.
    pub errors: u64,
    pub elapsed: Duration,
    /// Completed requests per second.
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} errors) in {:.2}s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            self.requests,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.rps,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0,
        )
    }
}

/// Sends `GET url` with `Authorization: Bearer token` from `concurrency`
/// concurrent clients for `duration`. Fails only when `url` is not an
/// `http://` URL; failed requests are counted in the report.
pub async fn load_test(
    url: &str,
    token: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.authority().is_some(),
        "{url:?}: the load generator speaks plain http"
    );
    let concurrency = concurrency.max(1);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector);
    let authorization = format!("Bearer {token}");
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let uri = uri.clone();
            let authorization = authorization.clone();
            tokio::spawn(async move {
                let mut latencies: Vec<u32> = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let req = Request::builder()
                        .method(Method::GET)
                        .uri(uri.clone())
                        .header(header::AUTHORIZATION, authorization.as_str())
                        .body(Body::empty());
                    let Ok(req) = req else {
                        errors += 1;
                        break;
                    };
                    let sent = Instant::now();
                    let ok = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        let resp = client.request(req).await.ok()?;
                        let success = resp.status().is_success();
                        resp.into_body().collect().await.ok()?;
                        Some(success)
                    })
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(false);
                    let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                    latencies.push(micros);
                    if !ok {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await.context("a load worker panicked")?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    Ok(LoadReport {
        requests,
        errors,
        elapsed,
        rps: requests as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

/// The `q` quantile of sorted microsecond latencies (nearest rank).
fn percentile(sorted: &[u32], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_micros(u64::from(sorted[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Duration::from_micros(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&[7], 0.99), Duration::from_micros(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[tokio::test]
    async fn only_http_urls_are_accepted() {
        assert!(
            load_test("https://x", "t", 1, Duration::from_millis(1))
                .await
                .is_err()
        );
        assert!(
            load_test("not a url", "t", 1, Duration::from_millis(1))
                .await
                .is_err()
        );
    }
}
