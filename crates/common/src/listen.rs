//! Binding listeners so that a port held for a moment does not stop a
//! start, and a port held for good says which setting moves it.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

/// How long a port in the ephemeral range is tried again when it is held.
pub const EPHEMERAL_RETRY: Duration = Duration::from_secs(30);

/// The range Linux hands out as source ports of outgoing connections
/// (`net.ipv4.ip_local_port_range`), or its default.
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut parts = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The environment variable that sets a configuration key such as
/// `device.grpc_port`.
pub fn env_name(setting: &str) -> String {
    format!("WF_IOT_{}", setting.to_uppercase().replace('.', "__"))
}

/// Binds `addr` for `what` (a listener's name, such as "device-service
/// gRPC"), configured by `setting` (such as `device.grpc_port`).
///
/// A port inside the ephemeral range can be held for a while by an
/// outgoing connection that happened to get it as its source port: it is
/// tried again for up to [`EPHEMERAL_RETRY`], with a log line that names
/// the cause and the fix. Any other port that is taken fails at once,
/// naming the setting that moves it.
pub async fn bind(addr: SocketAddr, what: &str, setting: &str) -> anyhow::Result<TcpListener> {
    let (low, high) = ephemeral_range();
    let ephemeral = addr.port() != 0 && (low..=high).contains(&addr.port());
    let deadline = Instant::now() + EPHEMERAL_RETRY;
    let mut warned = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                if warned {
                    tracing::info!(%addr, "{what}: port {} is free again and bound", addr.port());
                }
                return Ok(listener);
            }
            Err(e)
                if e.kind() == ErrorKind::AddrInUse && ephemeral && Instant::now() < deadline =>
            {
                if !warned {
                    warned = true;
                    tracing::warn!(
                        %addr,
                        "{what}: port {port} is in use. It lies in the range the kernel hands out \
                         as source ports of outgoing connections ({low}-{high}), so a connection \
                         may hold it for a while; trying again for up to {secs} s. Reserve it with \
                         `sysctl -w net.ipv4.ip_local_reserved_ports={port}`, or move it with \
                         {setting} ({env}).",
                        port = addr.port(),
                        secs = EPHEMERAL_RETRY.as_secs(),
                        env = env_name(setting),
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                let hint = if e.kind() == ErrorKind::AddrInUse {
                    port_in_use_hint(addr.port(), setting)
                } else {
                    format!("check {setting} ({})", env_name(setting))
                };
                return Err(e).with_context(|| format!("binding {what} on {addr}: {hint}"));
            }
        }
    }
}

/// What to do about `port`, configured by `setting`, being held by another
/// program: every way to move the listener.
pub fn port_in_use_hint(port: u16, setting: &str) -> String {
    let flag = serve_flag(setting)
        .map(|f| format!("`wf-iot serve {f} <port>`, "))
        .unwrap_or_default();
    let holder = port_holder(port).unwrap_or_else(|| "another program".to_string());
    format!(
        "{holder} holds port {port}; stop it, or move this listener with \
         {flag}{setting} in the configuration file (./wf-iot.toml) or {env}=<port>",
        env = env_name(setting),
    )
}

/// The program listening on TCP `port`, as `name (pid N)`, when this
/// process may see it (Linux: the listening socket in `/proc/net/tcp*`,
/// then the process holding it among `/proc/*/fd`); `None` otherwise.
pub fn port_holder(port: u16) -> Option<String> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| listening_inode(line, port))
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        });
        if holds {
            let command = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let command = command.trim();
            return Some(if command.is_empty() {
                format!("process {pid}")
            } else {
                format!("{command} (pid {pid})")
            });
        }
    }
    None
}

/// The socket inode of a `/proc/net/tcp` line listening on `port`.
fn listening_inode(line: &str, port: u16) -> Option<String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let state = fields.get(3)?;
    let inode = fields.get(9)?;
    let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    // 0A: LISTEN.
    (local_port == port && *state == "0A" && *inode != "0").then(|| inode.to_string())
}

/// The `wf-iot serve` flag that moves the listener of `setting`, for the
/// ports a user meets first.
pub fn serve_flag(setting: &str) -> Option<&'static str> {
    match setting {
        "gateway.http_port" => Some("--http-port"),
        "mqtt_gateway.mqtt_port" => Some("--mqtt-port"),
        "mqtt_gateway.ws_port" => Some("--ws-port"),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_their_environment_variables() {
        assert_eq!(env_name("device.grpc_port"), "WF_IOT_DEVICE__GRPC_PORT");
        assert_eq!(
            env_name("mqtt_gateway.mqtt_port"),
            "WF_IOT_MQTT_GATEWAY__MQTT_PORT"
        );
    }

    #[tokio::test]
    async fn a_port_held_outside_the_ephemeral_range_fails_at_once_naming_the_setting() {
        let (low, high) = ephemeral_range();
        // Find a free port below the ephemeral range and hold it.
        let held = (low.saturating_sub(2000)..low)
            .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
            .expect("a free port below the ephemeral range");
        let addr = held.local_addr().unwrap();
        assert!(!(low..=high).contains(&addr.port()));
        let started = Instant::now();
        let err = bind(addr, "test HTTP", "test.http_port").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let message = format!("{err:#}");
        assert!(message.contains("test.http_port"), "{message}");
        assert!(message.contains("WF_IOT_TEST__HTTP_PORT"), "{message}");
        // The holder is this very test process.
        assert!(
            message.contains(&format!(
                "(pid {}) holds port {}",
                std::process::id(),
                addr.port()
            )),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_held_ephemeral_port_is_bound_once_it_is_released() {
        let (low, high) = ephemeral_range();
        let held = (low..=high)
            .rev()
            .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
            .expect("a free port in the ephemeral range");
        let addr = held.local_addr().unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(held);
        });
        let listener = bind(addr, "test gRPC", "test.grpc_port").await.unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
        release.await.unwrap();
    }
}
