//! Shared by the tests that run services against real servers: a TCP proxy
//! the test can take down and bring back (an outage without touching the
//! real server, or a balancer over replicas), a private Mosquitto with its
//! dynamic-security plugin, and free ports.

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    backends: Vec<SocketAddr>,
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
            backends,
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

    /// A proxy in front of one loopback port.
    pub async fn to_port(port: u16) -> Self {
        Self::start(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]).await
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
    let n = state.backends.len();
    let first = state.next.fetch_add(1, Ordering::SeqCst);
    for i in 0..n {
        let backend = state.backends[(first + i) % n];
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

/// A Mosquitto 2 with its dynamic-security plugin on a free loopback port,
/// its files in a temporary directory; anonymous access off and every
/// default ACL denying. Killed when dropped.
pub struct MosquittoServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The dynamic-security admin the gateways connect as.
pub const MOSQUITTO_ADMIN: &str = "wf-admin";
pub const MOSQUITTO_ADMIN_PASSWORD: &str = "admin-secret";

impl MosquittoServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let dynsec = dir.path().join("dynamic-security.json");
        let init = Command::new(program("mosquitto_ctrl"))
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args([MOSQUITTO_ADMIN, MOSQUITTO_ADMIN_PASSWORD])
            .stdin(Stdio::null())
            .output()
            .expect("mosquitto_ctrl runs");
        assert!(
            init.status.success(),
            "mosquitto_ctrl dynsec init failed: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        deny_by_default(&dynsec);
        let port = free_port();
        let config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             plugin {plugin}\n\
             plugin_opt_config_file {dynsec}\n\
             persistence false\n\
             max_queued_messages 100000\n\
             max_inflight_messages 1000\n\
             user root\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n",
            plugin = dynsec_plugin().display(),
            dynsec = dynsec.display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("config written");
        let log = File::create(dir.path().join("mosquitto.log")).expect("log file");
        let child = Command::new(program("mosquitto"))
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        let mut server = Self {
            port,
            dir,
            child: Some(child),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                return server;
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited ({status}):\n{}", server.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on {port} in time:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for MosquittoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every default ACL denies (`dynsec init` allows receiving by default).
fn deny_by_default(dynsec: &Path) {
    let text = std::fs::read_to_string(dynsec).expect("dynamic-security file");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("dynamic-security JSON");
    config["defaultACLAccess"] = serde_json::json!({
        "publishClientSend": false,
        "publishClientReceive": false,
        "subscribe": false,
        "unsubscribe": false,
    });
    std::fs::write(dynsec, serde_json::to_vec_pretty(&config).expect("JSON"))
        .expect("dynamic-security file written");
}

/// An installed program: on the PATH, or in the sbin directories Debian
/// puts `mosquitto` in.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: this test needs Mosquitto 2 and its clients \
                 (Debian: apt-get install mosquitto mosquitto-clients)"
            )
        })
}

/// `mosquitto_dynamic_security.so`, where the distributions put it.
fn dynsec_plugin() -> PathBuf {
    const NAME: &str = "mosquitto_dynamic_security.so";
    let mut dirs: Vec<PathBuf> = [
        "/usr/lib",
        "/usr/local/lib",
        "/usr/lib64",
        "/usr/lib/mosquitto",
    ]
    .map(PathBuf::from)
    .into();
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    dirs.into_iter()
        .map(|dir| dir.join(NAME))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{NAME} was not found under /usr/lib (Debian: apt-get install mosquitto)")
        })
}

/// Polls `check` every 100 ms until it returns `Some`, or panics naming
/// `what` once `within` has passed.
pub async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
