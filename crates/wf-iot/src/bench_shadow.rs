//! `wf-iot bench shadow`: a desired state change to a whole connected
//! fleet, from one shadow job, until every device has applied it and
//! reported it back. The server runs in a process of its own
//! (`wf-iot serve`); the devices are `wf-iot simulate` processes (several:
//! one process holds at most `--devices-per-process` connections, under
//! the open-file limit), which apply desired deltas as firmware does.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::mib;
use crate::bench_peers::{Process, Serve};

#[derive(clap::Args, Debug)]
pub struct ShadowBenchArgs {
    /// Simulated devices, one MQTT connection each.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// The most devices one simulator process connects.
    #[arg(long, default_value_t = 5000)]
    pub devices_per_process: usize,
    /// Seconds between two telemetry messages of one device meanwhile.
    #[arg(long, default_value_t = 10.0)]
    pub interval: f64,
    /// Give up after this many seconds (connecting, then converging).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// The device type the benchmark's devices are registered with; the job
/// targets it with the simulator's tag.
const DEVICE_TYPE: &str = "bench-shadow";

pub async fn run(args: ShadowBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.devices > 0 && args.devices_per_process > 0 && args.interval > 0.0,
        "--devices, --devices-per-process and --interval must be positive"
    );
    let dir = tempfile::tempdir()?;
    let password = wf_common::random::password();
    let server = Serve::start(dir.path(), &password, &[]).await?;
    let idle = server.resident_bytes()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let login: Value = http
        .post(format!("{}/api/v1/auth/login", server.auth_url()))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .context("no access token")?
        .to_string();

    // The fleet: simulator processes, each with its own devices.
    let processes = args.devices.div_ceil(args.devices_per_process);
    let mut simulators = Vec::with_capacity(processes);
    let exe = std::env::current_exe().context("finding wf-iot")?;
    let connecting = Instant::now();
    for p in 0..processes {
        let count = (args.devices - p * args.devices_per_process).min(args.devices_per_process);
        let mut command = Command::new(&exe);
        command
            .arg("simulate")
            .args(["--devices", &count.to_string()])
            .args(["--rate", &format!("{}", count as f64 / args.interval)])
            .args(["--prefix", &format!("shadow{p}")])
            .args(["--device-type", DEVICE_TYPE])
            .args(["--auth-url", &server.auth_url()])
            .args(["--device-url", &server.device_url()])
            .args(["--mqtt-port", &server.ports.mqtt.to_string()])
            .env("WF_IOT_SIM_PASSWORD", &password)
            .env("WF_IOT_LOG__LEVEL", "warn");
        simulators.push(Process::spawn(
            "wf-iot simulate",
            command,
            dir.path().join(format!("simulate-{p}.log")),
        )?);
    }
    let deadline = connecting + Duration::from_secs(args.timeout);
    let summary_url = format!("{}/api/v1/devices/summary", server.device_url());
    loop {
        for s in &mut simulators {
            s.check_running()?;
        }
        let summary: Value = http
            .get(&summary_url)
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if summary["online"].as_u64().unwrap_or(0) >= args.devices as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} devices came online",
                summary["online"],
                args.devices
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let connected_in = connecting.elapsed();
    let before = server.resident_bytes()?;
    eprintln!(
        "wf-iot serve (pid {}): {} devices online from {processes} simulator processes in {:.1} s",
        server.pid(),
        args.devices,
        connected_in.as_secs_f64()
    );

    // The change: one job to every device of the fleet.
    let sampling_ms = (args.interval * 2000.0).round() as u64;
    let started = Instant::now();
    let job: Value = http
        .post(format!("{}/api/v1/shadow-jobs", server.device_url()))
        .bearer_auth(&token)
        .json(&json!({
            "desired": {"sampling_ms": sampling_ms},
            "target": {"tag": "simulated", "type": DEVICE_TYPE},
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let accepted_in = started.elapsed();
    let job_url = format!(
        "{}/api/v1/shadow-jobs/{}",
        server.device_url(),
        job["id"].as_str().context("no job id")?
    );
    let mut delivered_in = None;
    let progress = loop {
        let job: Value = http
            .get(&job_url)
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let progress = job["progress"].clone();
        let count = |key: &str| progress[key].as_u64().unwrap_or(0);
        if delivered_in.is_none() && count("delivered") >= args.devices as u64 {
            delivered_in = Some(started.elapsed());
        }
        if job["status"] == "completed" || started.elapsed() > Duration::from_secs(args.timeout) {
            break progress;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let converged_in = started.elapsed();
    let loaded = server.resident_bytes()?;
    let count = |key: &str| progress[key].as_u64().unwrap_or(0);
    println!(
        "shadow benchmark: {} connected devices ({processes} simulator processes, telemetry \
         every {} s each), one job setting sampling_ms on all of them; the server in its own \
         process",
        args.devices, args.interval
    );
    println!(
        "  converged (every device applied it and reported back): {} of {} in {:.2} s \
         (target: 30 s for 10,000)",
        count("converged"),
        args.devices,
        converged_in.as_secs_f64()
    );
    if let Some(d) = delivered_in {
        println!("  delivered to every device:  {:.2} s", d.as_secs_f64());
    }
    println!(
        "  job accepted (targets resolved and stored): {:.2} s",
        accepted_in.as_secs_f64()
    );
    println!(
        "  {:.0} devices converged per second",
        count("converged") as f64 / converged_in.as_secs_f64()
    );
    println!(
        "  wf-iot memory: {:.1} MiB idle after start, {:.1} MiB with the fleet connected, \
         {:.1} MiB after the job",
        mib(idle),
        mib(before),
        mib(loaded)
    );
    println!(
        "  targeted {}, converged {}, pending {}, failed {}",
        count("targeted"),
        count("converged"),
        count("pending"),
        count("failed")
    );
    // The figures are out before the processes stop, and a stop that fails
    // fails the run.
    for mut s in simulators {
        s.stop().await?;
    }
    server.stop().await?;
    anyhow::ensure!(
        count("targeted") == args.devices as u64 && count("converged") == args.devices as u64,
        "not every device converged: {progress}"
    );
    Ok(())
}
