//! What the benchmarks measure, each as a process of its own beside the
//! load generator: `wf-iot serve` (this very binary), and the peers a user
//! would pick instead, in the same run: a bare Mosquitto relaying MQTT, and
//! nginx proxying HTTP. Each is stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a process may take to answer after it is started.
const START_LIMIT: Duration = Duration::from_secs(60);

/// `count` free TCP ports of the loopback interface.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Where a program is installed: on the `PATH`, or in `/usr/sbin`
/// (Debian's Mosquitto and nginx, outside a normal user's `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The resident memory of a process, in bytes (Linux).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A child process, stopped (SIGTERM, then killed) when dropped.
pub struct Process {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { child, name, log })
    }

    /// Fails, with the end of its log, when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }

    /// Waits until the process accepts connections on `port`.
    async fn wait_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            self.check_running()?;
            if started.elapsed() > START_LIMIT {
                bail!(
                    "{} did not listen on port {port} within {START_LIMIT:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// SIGTERM, then up to 30 s for the process to exit, then SIGKILL.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child.kill()?;
        bail!("{} did not stop within 30 s of SIGTERM", self.name)
    }
}

impl Drop for Process {
    /// SIGTERM first, which also stops nginx's workers, then SIGKILL after
    /// up to 2 s.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ports of a `wf-iot serve` started by [`Serve::start`].
#[derive(Debug, Clone, Copy)]
pub struct ServePorts {
    pub auth_http: u16,
    pub device_http: u16,
    pub gateway_http: u16,
    pub mqtt: u16,
}

/// `wf-iot serve`, every service in one process, started from this binary
/// with a data directory and free loopback ports of its own.
pub struct Serve {
    process: Process,
    pub ports: ServePorts,
    pub data_dir: PathBuf,
    /// From the start of the process until its api-gateway answered
    /// `/readyz`.
    pub start_to_ready: Duration,
}

impl Serve {
    /// Starts `wf-iot serve` in `dir` (its data directory is `dir/data`,
    /// made on the first start), the first administrator's password being
    /// `password`, with `settings` (`WF_IOT_...` variables) on top, and
    /// waits until it is ready.
    pub async fn start(
        dir: &Path,
        password: &str,
        settings: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let ports = free_ports(4)?;
        let ports = ServePorts {
            auth_http: ports[0],
            device_http: ports[1],
            gateway_http: ports[2],
            mqtt: ports[3],
        };
        let data_dir = dir.join("data");
        let mut command = Command::new(std::env::current_exe().context("finding wf-iot")?);
        for (key, _) in std::env::vars() {
            if key.starts_with(wf_common::config::ENV_PREFIX) {
                command.env_remove(key);
            }
        }
        command
            .arg("serve")
            .current_dir(dir)
            .env("WF_IOT_DATA_DIR", &data_dir)
            .env("WF_IOT_ADMIN_PASSWORD", password)
            .env("WF_IOT_LOG__LEVEL", "warn")
            .env("WF_IOT_AUTH__HOST", "127.0.0.1")
            .env("WF_IOT_AUTH__HTTP_PORT", ports.auth_http.to_string())
            .env("WF_IOT_DEVICE__HOST", "127.0.0.1")
            .env("WF_IOT_DEVICE__HTTP_PORT", ports.device_http.to_string())
            .env("WF_IOT_MQTT_GATEWAY__HOST", "127.0.0.1")
            .env("WF_IOT_MQTT_GATEWAY__MQTT_PORT", ports.mqtt.to_string())
            .env("WF_IOT_MQTT_GATEWAY__WS_ENABLED", "false")
            .env("WF_IOT_MQTT_GATEWAY__HTTP_PORT", "0")
            .env("WF_IOT_FIRMWARE__HOST", "127.0.0.1")
            .env("WF_IOT_FIRMWARE__HTTP_PORT", "0")
            .env("WF_IOT_GATEWAY__HOST", "127.0.0.1")
            .env("WF_IOT_GATEWAY__HTTP_PORT", ports.gateway_http.to_string());
        for (key, value) in settings {
            command.env(key, value);
        }
        let started = Instant::now();
        let mut process = Process::spawn("wf-iot serve", command, dir.join("serve.log"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let ready = format!("http://127.0.0.1:{}/readyz", ports.gateway_http);
        loop {
            process.check_running()?;
            if let Ok(resp) = client.get(&ready).send().await
                && resp.status().is_success()
            {
                break;
            }
            if started.elapsed() > START_LIMIT {
                bail!("wf-iot serve was not ready within {START_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            process,
            ports,
            data_dir,
            start_to_ready: started.elapsed(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The server's resident memory now.
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        resident_bytes(self.pid()).context("reading the server's resident memory")
    }

    pub fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.auth_http)
    }

    pub fn device_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.device_http)
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.gateway_http)
    }

    /// Stops the server as Ctrl-C does, and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.process.stop().await
    }
}

/// A bare Mosquitto: anonymous clients on a free port, nothing stored,
/// up to `inflight` QoS 1 messages in flight to each client.
pub struct BareMosquitto {
    process: Process,
    pub port: u16,
}

impl BareMosquitto {
    /// Starts it, or `None` where Mosquitto is not installed.
    pub async fn start(dir: &Path, inflight: u16) -> anyhow::Result<Option<Self>> {
        let Some(program) = find_program("mosquitto") else {
            return Ok(None);
        };
        let port = free_ports(1)?[0];
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages {inflight}\nmax_queued_messages 1000000\n\
                 log_type error\n"
            ),
        )?;
        let mut command = Command::new(program);
        command.arg("-c").arg(&config);
        let mut process = Process::spawn("mosquitto", command, dir.join("mosquitto.log"))?;
        process.wait_listening(port).await?;
        Ok(Some(Self { process, port }))
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.process.stop().await
    }
}

/// nginx as a plain reverse proxy in front of `upstream` (keep-alive
/// connections to it, no access log), on a free port.
pub struct Nginx {
    process: Process,
    pub port: u16,
}

impl Nginx {
    /// Starts it, or `None` where nginx is not installed.
    pub async fn start(dir: &Path, upstream: &str) -> anyhow::Result<Option<Self>> {
        let Some(program) = find_program("nginx") else {
            return Ok(None);
        };
        let port = free_ports(1)?[0];
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let config = prefix.join("nginx.conf");
        let p = prefix.display();
        std::fs::write(
            &config,
            format!(
                "worker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  \
                 proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  \
                 uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  \
                 upstream service {{ server {upstream}; keepalive 128; }}\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      \
                 proxy_pass http://service;\n      proxy_http_version 1.1;\n      \
                 proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
            ),
        )?;
        let mut command = Command::new(program);
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"]);
        let mut process = Process::spawn("nginx", command, prefix.join("logs/stdout.log"))?;
        process.wait_listening(port).await?;
        Ok(Some(Self { process, port }))
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.process.stop().await
    }
}
