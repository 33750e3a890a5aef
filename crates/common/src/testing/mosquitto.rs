//! `MosquittoServer`: a real Mosquitto 2 with its dynamic-security plugin,
//! one per test, on a free port of the loopback interface, with its config
//! and dynamic-security file in a temporary directory. Anonymous access is
//! off and every default ACL denies, so devices can do only what their
//! roles grant. Up to 1000 messages may be in flight to one client (so a
//! gateway acknowledging after the event bus is not held to Mosquitto's
//! default of 20). The process is killed when the value is dropped.
//!
//! Tests get one with [`MosquittoServer::start_or_skip`]. Where Mosquitto is
//! not installed (Debian: `apt-get install mosquitto mosquitto-clients`),
//! they say so and pass, so that `cargo test` works on a machine with
//! nothing but Rust; with `WF_IOT_TEST_REQUIRE_MOSQUITTO` set (as CI sets
//! it) a missing Mosquitto fails them instead.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long Mosquitto may take to listen.
const WAIT: Duration = Duration::from_secs(10);

/// The dynamic-security admin the gateway connects as.
pub const ADMIN: &str = "wf-admin";
pub const ADMIN_PASSWORD: &str = "admin-secret";

pub struct MosquittoServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// Set (to anything) to make a missing Mosquitto a failure, not a skip.
pub const REQUIRE_ENV: &str = "WF_IOT_TEST_REQUIRE_MOSQUITTO";

impl MosquittoServer {
    /// Whether Mosquitto 2, its control tool and its dynamic-security
    /// plugin are installed.
    pub fn installed() -> bool {
        find_program("mosquitto").is_some()
            && find_program("mosquitto_ctrl").is_some()
            && find_dynsec_plugin().is_some()
    }

    /// [`MosquittoServer::start`] where Mosquitto is installed; `None`,
    /// after saying why, where it is not (a failure instead when
    /// [`REQUIRE_ENV`] is set).
    pub async fn start_or_skip() -> Option<Self> {
        if !Self::installed() {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set but Mosquitto 2 with mosquitto_ctrl and its \
                 dynamic-security plugin is not installed (Debian: apt-get install mosquitto \
                 mosquitto-clients)"
            );
            eprintln!(
                "skipped: this test needs Mosquitto 2 (Debian: apt-get install mosquitto \
                 mosquitto-clients)"
            );
            return None;
        }
        Some(Self::start().await)
    }

    /// Initialises the dynamic-security file, starts Mosquitto and waits
    /// until it accepts connections.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let dynsec = dir.path().join("dynamic-security.json");
        let init = Command::new(program("mosquitto_ctrl"))
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args([ADMIN, ADMIN_PASSWORD])
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
             max_inflight_messages 1000\n\
             max_queued_messages 100000\n\
             # Started by root, Mosquitto would switch to the mosquitto user,\n\
             # who cannot write this directory; as anyone else this is a no-op.\n\
             user root\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n",
            plugin = dynsec_plugin().display(),
            dynsec = dynsec.display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("config written");
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.launch().await;
        server
    }

    /// A Mosquitto that lets every client in, whatever its credentials
    /// (anonymous access on, no plugin): a working broker that is not the
    /// platform's. `None`, as [`MosquittoServer::start_or_skip`], where
    /// Mosquitto is not installed.
    pub async fn start_open_or_skip() -> Option<Self> {
        if find_program("mosquitto").is_none() {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set but Mosquitto is not installed (Debian: apt-get install \
                 mosquitto mosquitto-clients)"
            );
            eprintln!(
                "skipped: this test needs Mosquitto (Debian: apt-get install mosquitto \
                 mosquitto-clients)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             user root\n\
             log_type error\n\
             log_type warning\n"
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("config written");
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.launch().await;
        Some(server)
    }

    /// Starts the process (again, on the same port and files) and waits
    /// until it accepts connections.
    pub async fn launch(&mut self) {
        assert!(self.child.is_none(), "Mosquitto is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(program("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited ({status}):\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on {addr} in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process, as a crash would, and waits for it to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What Mosquitto logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }
}

impl Drop for MosquittoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every default ACL denies (`dynsec init` allows receiving and
/// unsubscribing by default).
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

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    listener.local_addr().expect("an address").port()
}

/// An installed program: on the PATH, or in the sbin directories Debian
/// puts `mosquitto` in (not on every user's PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: the tests with an external broker need Mosquitto 2 \
             and its clients (Debian: apt-get install mosquitto mosquitto-clients)"
        )
    })
}

/// `mosquitto_dynamic_security.so`, where the distributions put it
/// (Debian: /usr/lib/<multiarch>/).
fn find_dynsec_plugin() -> Option<PathBuf> {
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
}

fn dynsec_plugin() -> PathBuf {
    find_dynsec_plugin().unwrap_or_else(|| {
        panic!(
            "mosquitto_dynamic_security.so was not found under /usr/lib: the external-broker \
             tests need Mosquitto 2 with its dynamic-security plugin (Debian: apt-get install \
             mosquitto)"
        )
    })
}
