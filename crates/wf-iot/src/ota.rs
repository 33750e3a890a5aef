//! Over-the-air updates on simulated devices. A device subscribed to
//! `devices/{id}/ota` answers each notification the way real firmware does:
//! it reports `downloading`, downloads the image through the notification's
//! link, checks its size, SHA-256 and (when signed and keys are given) its
//! Ed25519 signature, reports `installing`, "restarts" (offline, then online
//! again) and reports `succeeded` with the version it now runs. A chosen
//! share of the fleet fails or never answers, to exercise failure
//! thresholds and timeouts: exactly that share, whatever the fleet's size,
//! picked by a seeded shuffle.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The version simulated devices run before any update, by default.
pub const INITIAL_VERSION: &str = "1.0.0";

#[derive(clap::Args, Debug, Clone)]
pub struct OtaArgs {
    /// Percentage of devices whose updates fail (after downloading).
    #[arg(long, default_value_t = 0.0)]
    pub ota_fail: f64,
    /// Percentage of devices that never answer an update (they time out).
    #[arg(long, default_value_t = 0.0)]
    pub ota_hang: f64,
    /// How long installing an image takes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub ota_install_ms: u64,
    /// How long the restart into the new image takes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub ota_restart_ms: u64,
    /// An Ed25519 public key (base64 of the 32 raw bytes, or a PEM file)
    /// that firmware signatures must verify against; repeatable. Without
    /// one, signatures are not checked.
    #[arg(long = "ota-public-key")]
    pub ota_public_keys: Vec<String>,
    /// The version simulated devices run before any update.
    #[arg(long, default_value = INITIAL_VERSION)]
    pub ota_initial_version: String,
    /// Picks which devices fail and which hang: the same seed and fleet
    /// size pick the same devices.
    #[arg(long, default_value_t = 1)]
    pub ota_seed: u64,
}

impl Default for OtaArgs {
    fn default() -> Self {
        Self {
            ota_fail: 0.0,
            ota_hang: 0.0,
            ota_install_ms: 500,
            ota_restart_ms: 500,
            ota_public_keys: Vec::new(),
            ota_initial_version: INITIAL_VERSION.into(),
            ota_seed: 1,
        }
    }
}

/// Counters across every simulated device.
#[derive(Default)]
pub struct OtaStats {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    pub hung: AtomicU64,
    pub downloaded_bytes: AtomicU64,
}

/// `devices/{id}/ota`, as the platform sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct Notification {
    pub task_id: String,
    pub version: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub signature: Option<String>,
}

/// What a device does with an update, decided once for the fleet (see
/// [`Ota::assign`]) so a device keeps behaving the same across retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Update,
    Fail,
    Hang,
}

/// The fleet's OTA behaviour and state.
pub struct Ota {
    args: OtaArgs,
    keys: Vec<VerifyingKey>,
    http: reqwest::Client,
    pub stats: OtaStats,
    /// Tasks a device is working on, so a repeated notification is not
    /// started twice.
    busy: Mutex<HashSet<(String, String)>>,
    /// The version each device runs.
    running: Mutex<HashMap<String, String>>,
    /// The devices that fail or hang; every other one updates.
    fates: Mutex<HashMap<String, Fate>>,
}

/// The fates of a fleet of `n` devices, by position: exactly
/// `round(n * fail_pct / 100)` fail and `round(n * hang_pct / 100)` hang
/// (fewer hang when rounding both up would exceed the fleet), chosen by a
/// shuffle seeded with `seed`.
pub fn choose_fates(n: usize, fail_pct: f64, hang_pct: f64, seed: u64) -> Vec<Fate> {
    let share = |pct: f64| ((n as f64 * pct / 100.0).round() as usize).min(n);
    let failing = share(fail_pct);
    let hanging = share(hang_pct).min(n - failing);
    // Fisher-Yates with SplitMix64: small, and the same on every platform.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut fates = vec![Fate::Update; n];
    for (rank, &index) in order.iter().enumerate() {
        if rank < failing {
            fates[index] = Fate::Fail;
        } else if rank < failing + hanging {
            fates[index] = Fate::Hang;
        }
    }
    fates
}

fn parse_key(k: &str) -> anyhow::Result<VerifyingKey> {
    let text = if std::path::Path::new(k).is_file() {
        std::fs::read_to_string(k).with_context(|| format!("reading {k}"))?
    } else {
        k.to_string()
    };
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PEM public key: {e}"));
    }
    let raw: [u8; 32] = STANDARD
        .decode(text)
        .context("a public key must be PEM or base64")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a raw Ed25519 public key is 32 bytes"))?;
    Ok(VerifyingKey::from_bytes(&raw)?)
}

impl Ota {
    pub fn new(args: &OtaArgs) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            (0.0..=100.0).contains(&args.ota_fail)
                && (0.0..=100.0).contains(&args.ota_hang)
                && args.ota_fail + args.ota_hang <= 100.0,
            "--ota-fail and --ota-hang are percentages that add up to at most 100"
        );
        let keys = args
            .ota_public_keys
            .iter()
            .map(|k| parse_key(k))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(Self {
            args: args.clone(),
            keys,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()?,
            stats: OtaStats::default(),
            busy: Mutex::default(),
            running: Mutex::default(),
            fates: Mutex::default(),
        }))
    }

    /// Decides, for the whole fleet, which devices fail and which hang
    /// (`--ota-fail`, `--ota-hang`, `--ota-seed`).
    pub fn assign(&self, device_ids: &[String]) {
        let fates = choose_fates(
            device_ids.len(),
            self.args.ota_fail,
            self.args.ota_hang,
            self.args.ota_seed,
        );
        let chosen = device_ids
            .iter()
            .cloned()
            .zip(fates)
            .filter(|(_, fate)| *fate != Fate::Update)
            .collect();
        if let Ok(mut fates) = self.fates.lock() {
            *fates = chosen;
        }
    }

    /// Which devices fail and hang updates, for the simulator's start.
    pub fn fates_summary(&self) -> String {
        let fates = self.fates.lock().map(|f| f.clone()).unwrap_or_default();
        let of = |fate: Fate| {
            let mut ids: Vec<&str> = fates
                .iter()
                .filter(|(_, f)| **f == fate)
                .map(|(id, _)| id.as_str())
                .collect();
            ids.sort_unstable();
            if ids.is_empty() {
                return "0".to_string();
            }
            let shown = ids.len().min(10);
            let more = if ids.len() > shown { ", ..." } else { "" };
            format!("{} ({}{more})", ids.len(), ids[..shown].join(", "))
        };
        format!(
            "ota: updates fail on {} and hang on {} (--ota-seed {})",
            of(Fate::Fail),
            of(Fate::Hang),
            self.args.ota_seed
        )
    }

    /// The topic a device subscribes to for updates.
    pub fn topic(device_id: &str) -> String {
        format!("devices/{device_id}/ota")
    }

    /// The version `device_id` runs now.
    pub fn running_version(&self, device_id: &str) -> String {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(device_id).cloned())
            .unwrap_or_else(|| self.args.ota_initial_version.clone())
    }

    /// What this device does with updates: as [`Ota::assign`] decided,
    /// and an update for a device outside the fleet.
    pub fn fate(&self, device_id: &str) -> Fate {
        self.fates
            .lock()
            .ok()
            .and_then(|f| f.get(device_id).copied())
            .unwrap_or(Fate::Update)
    }

    /// Handles a message on `devices/{id}/ota`: the update runs on its own
    /// task, so the connection keeps serving.
    pub fn accept(self: &Arc<Self>, client: &AsyncClient, device_id: &str, payload: &[u8]) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let notification: Notification = match serde_json::from_slice(payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(device = %device_id, error = %e, "unreadable OTA notification");
                return;
            }
        };
        let key = (device_id.to_string(), notification.task_id.clone());
        let fresh = self
            .busy
            .lock()
            .map(|mut busy| busy.insert(key.clone()))
            .unwrap_or(true);
        if !fresh {
            return;
        }
        let ota = self.clone();
        let client = client.clone();
        let device_id = device_id.to_string();
        tokio::spawn(async move {
            ota.update(&client, &device_id, &notification).await;
            if let Ok(mut busy) = ota.busy.lock() {
                busy.remove(&key);
            }
        });
    }

    async fn report(
        &self,
        client: &AsyncClient,
        device_id: &str,
        task_id: &str,
        state: &str,
        extra: serde_json::Value,
    ) {
        let mut body = json!({ "task_id": task_id, "state": state });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let topic = format!("devices/{device_id}/ota/progress");
        if let Err(e) = client
            .publish(topic, QoS::AtLeastOnce, false, body.to_string())
            .await
        {
            tracing::debug!(device = %device_id, error = %e, "reporting OTA progress failed");
        }
    }

    async fn update(&self, client: &AsyncClient, device_id: &str, n: &Notification) {
        // A notification repeated after the update finished: say so again.
        if self.running_version(device_id) == n.version {
            self.report(
                client,
                device_id,
                &n.task_id,
                "succeeded",
                json!({ "version": n.version }),
            )
            .await;
            return;
        }
        let fate = self.fate(device_id);
        if fate == Fate::Hang {
            self.stats.hung.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.report(
            client,
            device_id,
            &n.task_id,
            "downloading",
            json!({ "progress": 0 }),
        )
        .await;
        let image = match self.download(client, device_id, n).await {
            Ok(digest) => digest,
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.report(
                    client,
                    device_id,
                    &n.task_id,
                    "failed",
                    json!({ "error": e.to_string() }),
                )
                .await;
                return;
            }
        };
        if let Err(e) = self.check_signature(&image, n.signature.as_deref()) {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            self.report(
                client,
                device_id,
                &n.task_id,
                "rejected",
                json!({ "error": e }),
            )
            .await;
            return;
        }
        if fate == Fate::Fail {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.report(
                client,
                device_id,
                &n.task_id,
                "failed",
                json!({ "error": "simulated flash write failure" }),
            )
            .await;
            return;
        }
        self.report(
            client,
            device_id,
            &n.task_id,
            "installing",
            json!({ "progress": 0 }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(self.args.ota_install_ms)).await;
        // "Restart" into the new image.
        let status = format!("devices/{device_id}/status");
        let _ = client
            .publish(status.clone(), QoS::AtLeastOnce, false, "offline")
            .await;
        tokio::time::sleep(Duration::from_millis(self.args.ota_restart_ms)).await;
        if let Ok(mut running) = self.running.lock() {
            running.insert(device_id.to_string(), n.version.clone());
        }
        let _ = client
            .publish(status, QoS::AtLeastOnce, false, "online")
            .await;
        // The device's state says which firmware it runs now.
        let _ = client
            .publish(
                format!("devices/{device_id}/shadow/reported"),
                QoS::AtLeastOnce,
                false,
                json!({ "fw_version": n.version }).to_string(),
            )
            .await;
        self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
        self.report(
            client,
            device_id,
            &n.task_id,
            "succeeded",
            json!({ "version": self.running_version(device_id) }),
        )
        .await;
    }

    /// Downloads the image, reporting progress at each quarter; returns its
    /// SHA-256 once size and digest match the notification.
    async fn download(
        &self,
        client: &AsyncClient,
        device_id: &str,
        n: &Notification,
    ) -> anyhow::Result<[u8; 32]> {
        let mut resp = self
            .http
            .get(&n.url)
            .send()
            .await
            .context("downloading the image")?;
        anyhow::ensure!(
            resp.status().is_success(),
            "downloading the image: {}",
            resp.status()
        );
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut next_report = n.size / 4;
        while let Some(chunk) = resp.chunk().await.context("downloading the image")? {
            hasher.update(&chunk);
            got += chunk.len() as u64;
            anyhow::ensure!(got <= n.size, "the image is larger than announced");
            if n.size > 0 && got >= next_report && got < n.size {
                let pct = (got * 100 / n.size) as f64;
                self.report(
                    client,
                    device_id,
                    &n.task_id,
                    "downloading",
                    json!({ "progress": pct }),
                )
                .await;
                next_report += n.size / 4;
            }
        }
        self.stats
            .downloaded_bytes
            .fetch_add(got, Ordering::Relaxed);
        anyhow::ensure!(got == n.size, "the image is {got} bytes, not {}", n.size);
        let digest: [u8; 32] = hasher.finalize().into();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        anyhow::ensure!(
            hex.eq_ignore_ascii_case(&n.sha256),
            "the image's SHA-256 does not match"
        );
        self.report(
            client,
            device_id,
            &n.task_id,
            "downloading",
            json!({ "progress": 100 }),
        )
        .await;
        Ok(digest)
    }

    /// With keys configured, a signed image must verify against one; an
    /// unsigned image is accepted (the platform decides whether to require
    /// signatures).
    fn check_signature(&self, digest: &[u8; 32], signature: Option<&str>) -> Result<(), String> {
        let Some(signature) = signature.filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        if self.keys.is_empty() {
            return Ok(());
        }
        let bytes = STANDARD
            .decode(signature)
            .map_err(|_| "the signature is not base64".to_string())?;
        let signature =
            Signature::from_slice(&bytes).map_err(|_| "malformed signature".to_string())?;
        if self
            .keys
            .iter()
            .any(|k| k.verify_strict(digest, &signature).is_ok())
        {
            Ok(())
        } else {
            Err("the firmware signature does not verify".into())
        }
    }

    /// One line for the simulator's periodic report.
    pub fn summary(&self) -> String {
        format!(
            "ota: {} notified, {} succeeded, {} failed, {} rejected, {} hung",
            self.stats.received.load(Ordering::Relaxed),
            self.stats.succeeded.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed),
            self.stats.rejected.load(Ordering::Relaxed),
            self.stats.hung.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn exactly_the_chosen_share_fails_and_hangs_in_a_small_fleet() {
        let args = OtaArgs {
            ota_fail: 10.0,
            ota_hang: 5.0,
            ..OtaArgs::default()
        };
        let ota = Ota::new(&args).unwrap();
        let ids: Vec<String> = (1..=50).map(|i| format!("sim-{i:05}")).collect();
        ota.assign(&ids);
        let chosen =
            |fate: Fate| -> Vec<&String> { ids.iter().filter(|id| ota.fate(id) == fate).collect() };
        // round(50 * 10 %) = 5 fail, round(50 * 5 %) = 2.5 -> 3 hang.
        assert_eq!(chosen(Fate::Fail).len(), 5);
        assert_eq!(chosen(Fate::Hang).len(), 3);
        assert_eq!(chosen(Fate::Update).len(), 42);
        assert!(
            ota.fates_summary().contains("fail on 5 (sim-"),
            "{}",
            ota.fates_summary()
        );

        // The same seed picks the same devices; another seed others.
        let again = Ota::new(&args).unwrap();
        again.assign(&ids);
        assert!(ids.iter().all(|id| again.fate(id) == ota.fate(id)));
        let other = Ota::new(&OtaArgs {
            ota_seed: 2,
            ..args.clone()
        })
        .unwrap();
        other.assign(&ids);
        assert!(ids.iter().any(|id| other.fate(id) != ota.fate(id)));
        // A device outside the fleet updates.
        assert_eq!(ota.fate("other-00001"), Fate::Update);
    }

    #[test]
    fn shares_hold_for_any_fleet_size() {
        for n in [0, 1, 2, 7, 20, 50, 999, 10_000] {
            for (fail, hang) in [
                (0.0, 0.0),
                (10.0, 5.0),
                (50.0, 50.0),
                (100.0, 0.0),
                (33.3, 0.0),
            ] {
                let fates = choose_fates(n, fail, hang, 7);
                let count = |f: Fate| fates.iter().filter(|x| **x == f).count();
                let failing = (n as f64 * fail / 100.0).round() as usize;
                let hanging = ((n as f64 * hang / 100.0).round() as usize).min(n - failing);
                assert_eq!(count(Fate::Fail), failing, "{n} devices, {fail} % fail");
                assert_eq!(count(Fate::Hang), hanging, "{n} devices, {hang} % hang");
                assert_eq!(fates.len(), n);
            }
        }
        assert!(
            Ota::new(&OtaArgs {
                ota_fail: 80.0,
                ota_hang: 30.0,
                ..OtaArgs::default()
            })
            .is_err()
        );
    }

    #[test]
    fn signatures_are_checked_when_keys_are_given() {
        let signer = SigningKey::from_bytes(&[5; 32]);
        let key = STANDARD.encode(signer.verifying_key().to_bytes());
        let ota = Ota::new(&OtaArgs {
            ota_public_keys: vec![key],
            ..OtaArgs::default()
        })
        .unwrap();
        let digest = [9u8; 32];
        let good = STANDARD.encode(signer.sign(&digest).to_bytes());
        let bad = STANDARD.encode(SigningKey::from_bytes(&[6; 32]).sign(&digest).to_bytes());
        assert!(ota.check_signature(&digest, Some(&good)).is_ok());
        assert!(ota.check_signature(&digest, Some(&bad)).is_err());
        assert!(ota.check_signature(&digest, None).is_ok());
        assert_eq!(ota.running_version("d1"), "1.0.0");
    }
}
