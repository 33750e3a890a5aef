//! Shared by the tests that run services against real servers: a TCP proxy
//! the test can take down and bring back (an outage without touching the
//! real server, or a balancer over replicas), free ports and polling.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    listener.local_addr().expect("an address").port()
}

/// The environment variable's value, when set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A random lower-case name part, unique enough to keep runs apart.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos & 0xff_ffff)
}

/// A TCP proxy on a loopback port. Each connection goes to the next
/// backend that accepts it (round robin, skipping those that refuse), the
/// way a Kubernetes Service or a TCP balancer spreads connections over
/// replicas. Taken down, it closes every open connection and drops new
/// ones as soon as they arrive, as an unreachable server would look.
pub struct TcpProxy {
    pub port: u16,
    state: Arc<ProxyState>,
    accept: AbortHandle,
}

struct ProxyState {
    backends: Mutex<Vec<SocketAddr>>,
    up: AtomicBool,
    next: AtomicUsize,
    connections: Mutex<Vec<AbortHandle>>,
}

impl TcpProxy {
    /// Starts relaying to `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("the proxy binds");
        let port = listener.local_addr().expect("an address").port();
        let state = Arc::new(ProxyState {
            backends: Mutex::new(backends),
            up: AtomicBool::new(true),
            next: AtomicUsize::new(0),
            connections: Mutex::new(Vec::new()),
        });
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !accepting.up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let relay = tokio::spawn(relay(accepting.clone(), inbound));
                let mut connections = accepting.connections.lock().expect("not poisoned");
                connections.retain(|c| !c.is_finished());
                connections.push(relay.abort_handle());
            }
        })
        .abort_handle();
        Self {
            port,
            state,
            accept,
        }
    }

    /// A proxy in front of the server a `redis://` or `mysql://` URL names.
    pub async fn in_front_of(url: &str) -> Self {
        let parsed = reqwest::Url::parse(url).expect("a URL");
        let host = parsed.host_str().expect("a host").to_string();
        let port = parsed
            .port_or_known_default()
            .unwrap_or(match parsed.scheme() {
                "redis" => 6379,
                _ => 3306,
            });
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .expect("the host resolves")
            .next()
            .expect("an address");
        Self::start(vec![addr]).await
    }

    /// `url` pointed at this proxy, with its path replaced by `path` when
    /// given.
    pub fn through(&self, url: &str, path: Option<&str>) -> String {
        let mut url = reqwest::Url::parse(url).expect("a URL");
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.set_port(Some(self.port)).expect("a port");
        if let Some(path) = path {
            url.set_path(path);
        }
        url.to_string()
    }

    /// Takes the proxied server "down": open connections are cut, new ones
    /// closed at once.
    pub fn take_down(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for c in self
            .state
            .connections
            .lock()
            .expect("not poisoned")
            .drain(..)
        {
            c.abort();
        }
    }

    /// Relays new connections to `backends` from now on (a server that
    /// came back on another port, as a restarted one may).
    pub fn point_at(&self, backends: Vec<SocketAddr>) {
        *self.state.backends.lock().expect("not poisoned") = backends;
    }

    /// Brings it back.
    pub fn bring_up(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.take_down();
    }
}

async fn relay(state: Arc<ProxyState>, mut inbound: TcpStream) {
    let backends = state.backends.lock().expect("not poisoned").clone();
    let n = backends.len();
    let first = state.next.fetch_add(1, Ordering::SeqCst);
    for i in 0..n {
        let backend = backends[(first + i) % n];
        let connected =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend)).await;
        if let Ok(Ok(mut outbound)) = connected {
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
}

/// `GET url/readyz`: whether it answered 200, and its body.
pub async fn readiness(client: &reqwest::Client, base: &str) -> Option<(bool, serde_json::Value)> {
    let resp = client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let ready = resp.status().is_success();
    Some((ready, resp.json().await.unwrap_or_default()))
}
