//! The one HTTP server every listener runs: axum's router behind hyper's
//! HTTP/1 connection builder, with the limits a hostile client meets.
//!
//! - a header-read timeout: a client that has not sent a whole request head
//!   within `header_read_timeout_secs` is disconnected (slow-loris);
//! - a cap on the request head (`max_header_bytes`), answered `431`;
//! - a cap on the connections one client address holds open at once;
//! - a reserve of file descriptors: when the process nears its descriptor
//!   limit, new connections get a short header timeout and no keep-alive
//!   (enough for a health check), and nearer still they are closed at once,
//!   so that accepting never fails with "too many open files" and existing
//!   sessions, database connections and health checks keep working.
//!
//! Each refusal is counted in `wf_http_connections_refused_total{service,reason}`
//! and logged. The caller's address reaches handlers as
//! `ConnectInfo<SocketAddr>`. Upgrades (WebSocket) work; on shutdown the
//! listener closes and in-flight requests finish.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// Limits of every HTTP listener; `[<service>.http_limits]` in the
/// configuration, `WF_IOT_<SERVICE>__HTTP_LIMITS__...` in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpLimits {
    /// A client must send a whole request head within this many seconds
    /// (also the idle time allowed between keep-alive requests).
    pub header_read_timeout_secs: u64,
    /// The largest request head (request line and headers) accepted;
    /// beyond it the answer is `431 Request Header Fields Too Large`.
    pub max_header_bytes: usize,
    /// The most connections one client address may hold open on one
    /// listener; 0: no cap. Behind a reverse proxy every request comes from
    /// the proxy's address: raise it there.
    pub max_connections_per_ip: usize,
    /// File descriptors kept free for everything but new HTTP connections.
    /// With fewer than this many left, new connections are served one
    /// request each with a short header timeout; with fewer than half of it
    /// left, they are closed at once.
    pub fd_reserve: usize,
}

impl HttpLimits {
    /// Settings the listener cannot work with (`http_limits.*`).
    pub fn check(&self, problems: &mut crate::config::Problems) {
        problems.section("http_limits", |p| {
            p.positive("header_read_timeout_secs", self.header_read_timeout_secs);
            p.require(
                self.max_header_bytes >= 1024,
                "max_header_bytes",
                format_args!("must be at least 1024, not {}", self.max_header_bytes),
            );
        });
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            max_header_bytes: 16 * 1024,
            max_connections_per_ip: 256,
            fd_reserve: 256,
        }
    }
}

/// The header timeout of a connection accepted inside the descriptor reserve.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// hyper's smallest read buffer.
const MIN_BUF: usize = 8 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the requests in flight. `service` labels the
/// metrics and log lines.
pub async fn serve(
    service: &'static str,
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::telemetry::metrics_handle();
    for reason in ["per_ip", "fd_reserve"] {
        metrics::counter!("wf_http_connections_refused_total", "service" => service, "reason" => reason)
            .increment(0);
    }
    let per_ip = PerIp::new(limits.max_connections_per_ip);
    let (signal_tx, signal_rx) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept:
                    // wait a little instead of spinning.
                    tracing::warn!(service, error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let budget = fd_budget(limits.fd_reserve);
        if budget == Budget::Refuse {
            refuse(service, "fd_reserve", remote, tcp);
            continue;
        }
        let Some(slot) = per_ip.acquire(remote.ip()) else {
            refuse(service, "per_ip", remote, tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "setting TCP_NODELAY failed");
        }
        let builder = builder(&limits, budget == Budget::Reserve);
        let router = router.clone();
        let mut signal_rx = signal_rx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let _open = OpenConnection::new();
            // The request being answered, for the shutdown's report of what
            // it waits for.
            let current: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
            let in_request = current.clone();
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                let label = format!("{} {}", req.method(), req.uri().path());
                *in_request.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((label, Instant::now()));
                let answered = in_request.clone();
                let response = router.clone().oneshot(req.map(axum::body::Body::new));
                async move {
                    let response = response.await;
                    *answered.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    response
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let mut awaited = None;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
                        }
                        break;
                    }
                    _ = signal_rx.changed(), if awaited.is_none() => {
                        conn.as_mut().graceful_shutdown();
                        // Idle connections close now; one still open is
                        // answering a request (or sending a response's
                        // body), which shutdown waits for.
                        let what = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        awaited = Some(match what {
                            Some((request, since)) => crate::shutdown::awaited_since(
                                format!("{service}: HTTP {request} from {remote}"),
                                since,
                            ),
                            None => crate::shutdown::awaited(format!(
                                "{service}: an HTTP response to {remote}"
                            )),
                        });
                    }
                }
            }
            drop(awaited);
            drop(slot);
            drop(close_rx);
        });
    }
    drop(listener);
    drop(signal_rx);
    signal_tx.send_replace(());
    drop(close_rx);
    close_tx.closed().await;
    Ok(())
}

fn builder(limits: &HttpLimits, in_reserve: bool) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    let timeout = Duration::from_secs(limits.header_read_timeout_secs.max(1));
    builder
        .timer(TokioTimer::new())
        .max_header_size(limits.max_header_bytes.max(1024))
        .max_buf_size((limits.max_header_bytes + 1024).max(MIN_BUF))
        .header_read_timeout(timeout);
    if in_reserve {
        builder
            .keep_alive(false)
            .header_read_timeout(timeout.min(RESERVE_HEADER_TIMEOUT));
    }
    builder
}

fn refuse(service: &'static str, reason: &'static str, remote: SocketAddr, tcp: TcpStream) {
    metrics::counter!("wf_http_connections_refused_total", "service" => service, "reason" => reason)
        .increment(1);
    tracing::warn!(service, %remote, reason, "HTTP connection refused");
    drop(tcp);
}

/// Open connections per client address on one listener.
struct PerIp {
    cap: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

struct Slot {
    ip: IpAddr,
    open: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
}

impl PerIp {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Arc::default(),
        }
    }

    fn acquire(&self, ip: IpAddr) -> Option<Slot> {
        if self.cap == 0 {
            return Some(Slot { ip, open: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Slot {
            ip,
            open: Some(self.open.clone()),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Budget {
    Normal,
    Reserve,
    Refuse,
}

/// HTTP connections open in this process, over every listener.
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The descriptors in use, counted in `/proc/self/fd` at most every
/// [`FD_SAMPLE_EVERY`], and between counts estimated from the HTTP
/// connections opened and closed since.
struct FdSample {
    at: Instant,
    in_use: usize,
    connections: usize,
}

const FD_SAMPLE_EVERY: Duration = Duration::from_millis(500);

fn fd_budget(reserve: usize) -> Budget {
    let Some(limit) = fd_limit() else {
        return Budget::Normal;
    };
    static SAMPLE: Mutex<Option<FdSample>> = Mutex::new(None);
    let connections = OPEN_CONNECTIONS.load(Ordering::Relaxed);
    let in_use = {
        let mut sample = SAMPLE.lock().unwrap_or_else(|e| e.into_inner());
        let stale = sample
            .as_ref()
            .is_none_or(|s| s.at.elapsed() >= FD_SAMPLE_EVERY);
        if stale && let Some(in_use) = count_open_fds() {
            *sample = Some(FdSample {
                at: Instant::now(),
                in_use,
                connections,
            });
        }
        match sample.as_ref() {
            Some(s) => (s.in_use + connections).saturating_sub(s.connections),
            None => return Budget::Normal,
        }
    };
    let left = limit.saturating_sub(in_use);
    if left < reserve / 2 {
        Budget::Refuse
    } else if left < reserve {
        Budget::Reserve
    } else {
        Budget::Normal
    }
}

/// The soft limit on open descriptors (`ulimit -n`), read once.
fn fd_limit() -> Option<usize> {
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn count_open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_per_ip_cap_frees_a_slot_when_a_connection_closes() {
        let per_ip = PerIp::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = per_ip.acquire(ip).unwrap();
        let _b = per_ip.acquire(ip).unwrap();
        assert!(per_ip.acquire(ip).is_none());
        assert!(per_ip.acquire(other).is_some());
        drop(a);
        assert!(per_ip.acquire(ip).is_some());
    }

    #[test]
    fn the_descriptor_limit_is_read() {
        if cfg!(target_os = "linux") {
            assert!(fd_limit().is_some_and(|l| l > 0));
            assert_eq!(fd_budget(0), Budget::Normal);
            assert_eq!(fd_budget(usize::MAX), Budget::Refuse);
        }
    }
}
