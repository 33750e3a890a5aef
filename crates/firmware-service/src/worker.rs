//! The rollout worker. Each round it
//!
//! 1. starts scheduled rollouts whose time has come,
//! 2. times out executions past their deadline (retrying them with backoff
//!    while retries remain),
//! 3. aborts running rollouts past their failure threshold and completes
//!    those whose executions are all final, and
//! 4. notifies the next due devices of each running rollout, within its
//!    rate, by leasing their executions (see the crate docs on why the
//!    executions table is the job queue).
//!
//! Alongside, it consumes `device.ota.progress` and `device.deleted`, and
//! `device.status.changed`: a device that comes back online while notified
//! gets its notification again at once, instead of at its timeout.
//! Any number of workers can run against one database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::json;
use wf_common::contract::StatusChanged;
use wf_common::events::{Batch, EventBus, run_consumer};
use wf_common::service::Runner;

use crate::Config;
use crate::clients::GatewayClient;
use crate::domain::{
    ExecutionEvent, ExecutionState, LinkSigner, RolloutState, StateCounts, new_id,
    threshold_exceeded,
};
use crate::engine::{Applied, apply_event};
use crate::error::{Error, Result};
use crate::store::{FirmwareRecord, RolloutRecord, Store, TaskRecord};

/// Overdue executions handled per round.
const TIMEOUTS_PER_ROUND: i64 = 1000;
/// How long a notification that could not be published waits.
const PUBLISH_RETRY_MS: i64 = 5_000;

/// Rollouts in progress and their executions per state, as the gauges
/// `wf_rollouts_active{state}` and `wf_rollout_executions{state}` (every
/// worker reports the same figures, read at the start of its round).
#[derive(Default)]
struct Progress {
    running: u64,
    paused: u64,
    executions: StateCounts,
}

impl Progress {
    fn add(&mut self, state: RolloutState, counts: &StateCounts) {
        match state {
            RolloutState::Running => self.running += 1,
            RolloutState::Paused => self.paused += 1,
            _ => return,
        }
        for s in ExecutionState::ALL {
            self.executions
                .set(s, self.executions.get(s) + counts.get(s));
        }
    }

    fn publish(&self) {
        metrics::gauge!("wf_rollouts_active", "state" => "running").set(self.running as f64);
        metrics::gauge!("wf_rollouts_active", "state" => "paused").set(self.paused as f64);
        for s in ExecutionState::ALL {
            metrics::gauge!("wf_rollout_executions", "state" => s.as_str())
                .set(self.executions.get(s) as f64);
        }
    }
}

pub struct Worker {
    config: Arc<Config>,
    store: Store,
    gateway: GatewayClient,
    links: LinkSigner,
    bus: Arc<dyn EventBus>,
    /// `/healthz`, `/readyz`, `/metrics`, when `worker.http_port` is set.
    http: Option<tokio::net::TcpListener>,
    /// Devices back online, with when their notifications go out again.
    returning: std::sync::Mutex<Vec<(tokio::time::Instant, String)>>,
}

/// What one round did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub started: usize,
    pub timed_out: usize,
    pub notified: usize,
    pub completed: usize,
    pub aborted: usize,
}

impl Worker {
    /// Connects to the firmware database (migrating when configured).
    /// mqtt-gateway is reached lazily.
    pub async fn build(config: Arc<Config>, bus: Arc<dyn EventBus>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.worker.name.trim().is_empty(),
            "firmware.worker.name must not be empty"
        );
        let (store, links) = crate::open_store(&config).await?;
        let gateway = GatewayClient::new(&config.mqtt_gateway_url, &config.internal_token)
            .context("the mqtt-gateway URL")?;
        let http = match config.worker.http_port {
            Some(port) => Some(
                wf_common::listen::bind(
                    std::net::SocketAddr::new(config.host, port),
                    "the worker's HTTP",
                    "firmware.worker.http_port",
                )
                .await?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            store,
            gateway,
            links,
            bus,
            http,
            returning: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.worker.name
    }

    /// The port of `/healthz`, `/readyz` and `/metrics`, when served.
    pub fn http_port(&self) -> Option<u16> {
        self.http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// Liveness, readiness (the database and the event bus) and metrics.
    fn ops_router(&self) -> axum::Router {
        let db_check = wf_common::http::database_check(self.store.db().clone());
        let bus_check = wf_common::http::event_bus_check(self.bus.clone());
        wf_common::http::finish(
            wf_common::http::ops_routes(vec![("database", db_check), ("event_bus", bus_check)]),
            "firmware-worker",
            16 * 1024,
        )
    }

    /// Works until `shutdown` resolves. A round in progress finishes first;
    /// executions it had leased but not yet notified are picked up again by
    /// any worker once their lease ends.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ops = self.http.take();
        let runner = Runner::new("firmware-worker");
        let stop = runner.stop();
        let consumers = crate::events::run(
            self.store.clone(),
            self.bus.clone(),
            self.config.worker.name.clone(),
            stop.clone(),
        );
        let comebacks = run_consumer(
            self.bus.clone(),
            crate::events::GROUP.into(),
            self.config.worker.name.clone(),
            256,
            stop.wait(),
            |batch| self.note_returning(batch),
        );
        // On /metrics from the start, at 0, so that alerts see the first one.
        metrics::counter!("wf_ota_renotifications_total").increment(0);
        for state in ["completed", "aborted"] {
            metrics::counter!("wf_rollouts_finished_total", "state" => state).increment(0);
        }
        tracing::info!(worker = %self.name(), "firmware worker starting");
        let rounds = async {
            let stopped = stop.wait();
            tokio::pin!(stopped);
            let mut tick = tokio::time::interval(Duration::from_millis(
                self.config.worker.poll_interval_ms.max(10),
            ));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut stopped => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = self.renotify_due().await {
                    tracing::warn!(worker = %self.name(), error = %e, "notifying returning devices failed");
                }
                match self.round().await {
                    Ok(r) if r != Round::default() => {
                        tracing::debug!(worker = %self.name(), round = ?r, "worker round");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(worker = %self.name(), error = %e, "worker round failed")
                    }
                }
            }
        };
        runner
            .http(ops, self.ops_router(), self.config.http_limits.clone())
            .task(consumers)
            .task(comebacks)
            .task(rounds)
            .run_until(shutdown)
            .await?;
        tracing::info!(worker = %self.name(), "firmware worker stopped");
        Ok(())
    }

    /// One pass over every rollout.
    pub async fn round(&self) -> Result<Round> {
        let mut done = Round::default();
        let now = wf_common::now_millis();
        for r in self.store.due_scheduled(now).await? {
            if self
                .store
                .set_rollout_state(
                    &r.id,
                    RolloutState::Scheduled,
                    RolloutState::Running,
                    None,
                    now,
                )
                .await?
            {
                tracing::info!(rollout_id = %r.id, "rollout started");
                done.started += 1;
            }
        }
        done.timed_out = self.time_out(now).await?;
        let mut progress = Progress::default();
        for rollout in self
            .store
            .rollouts_in(&[RolloutState::Running, RolloutState::Paused])
            .await?
        {
            let counts = self.store.counts(&rollout.id).await?;
            progress.add(rollout.state, &counts);
            let now = wf_common::now_millis();
            if rollout.state == RolloutState::Running
                && threshold_exceeded(
                    &counts,
                    rollout.failure_threshold_percent,
                    u64::try_from(rollout.min_finished).unwrap_or_default(),
                )
            {
                let reason = format!(
                    "{} of {} finished executions failed, past the {}% threshold",
                    counts.failures(),
                    counts.finished(),
                    rollout.failure_threshold_percent
                );
                if self.abort(&rollout, &reason, now).await? {
                    done.aborted += 1;
                }
                continue;
            }
            if rollout.state.may_complete() && counts.open() == 0 {
                if self
                    .store
                    .set_rollout_state(
                        &rollout.id,
                        rollout.state,
                        RolloutState::Completed,
                        None,
                        now,
                    )
                    .await?
                {
                    metrics::counter!("wf_rollouts_finished_total", "state" => "completed")
                        .increment(1);
                    tracing::info!(rollout_id = %rollout.id, "rollout completed");
                    done.completed += 1;
                }
                continue;
            }
            if rollout.state == RolloutState::Running {
                done.notified += self.dispatch(&rollout).await?;
            }
        }
        progress.publish();
        Ok(done)
    }

    async fn abort(&self, rollout: &RolloutRecord, reason: &str, now: i64) -> Result<bool> {
        if !self
            .store
            .set_rollout_state(
                &rollout.id,
                RolloutState::Running,
                RolloutState::Aborted,
                Some(reason),
                now,
            )
            .await?
        {
            return Ok(false);
        }
        let canceled = self
            .store
            .cancel_queued(&rollout.id, "the rollout was aborted", self.name(), now)
            .await?;
        metrics::counter!("wf_rollouts_finished_total", "state" => "aborted").increment(1);
        tracing::warn!(rollout_id = %rollout.id, reason, canceled, "rollout aborted");
        Ok(true)
    }

    /// Times out executions past their deadline.
    async fn time_out(&self, now: i64) -> Result<usize> {
        let overdue = self.store.overdue_tasks(now, TIMEOUTS_PER_ROUND).await?;
        let mut rollouts: HashMap<String, Option<RolloutRecord>> = HashMap::new();
        let mut n = 0;
        for task in overdue {
            if !rollouts.contains_key(&task.rollout_id) {
                let r = self.store.get_rollout(&task.rollout_id).await?;
                rollouts.insert(task.rollout_id.clone(), r);
            }
            let Some(Some(rollout)) = rollouts.get(&task.rollout_id) else {
                continue;
            };
            if let Applied::Changed(state) = apply_event(
                &self.store,
                task,
                rollout,
                &ExecutionEvent::DeadlinePassed,
                self.name(),
                None,
            )
            .await?
            {
                if state.is_final() {
                    metrics::counter!("wf_ota_executions_finished_total", "state" => state.as_str())
                        .increment(1);
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Leases and notifies the next due devices of a running rollout.
    async fn dispatch(&self, rollout: &RolloutRecord) -> Result<usize> {
        let batch = self.config.worker.batch_size.max(1);
        let now = wf_common::now_millis();
        let candidates = self.store.due_tasks(&rollout.id, now, batch).await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let Some(firmware) = self.store.get_firmware(&rollout.firmware_id).await? else {
            self.abort(rollout, "the firmware was deleted", now).await?;
            return Ok(0);
        };
        let granted = self
            .store
            .reserve_slots(
                &rollout.id,
                rollout.rate_per_minute,
                u32::try_from(candidates.len()).unwrap_or(batch),
                now,
            )
            .await?;
        if granted == 0 {
            return Ok(0);
        }
        let token = new_id("lease");
        let lease_until =
            now + i64::try_from(self.config.worker.lease_secs.max(1) * 1000).unwrap_or(30_000);
        let claimed = self
            .store
            .claim(
                &candidates[..granted as usize],
                self.name(),
                &token,
                lease_until,
                now,
            )
            .await?;
        self.store
            .refund_slots(
                &rollout.id,
                rollout.rate_per_minute,
                granted.saturating_sub(u32::try_from(claimed.len()).unwrap_or(granted)),
            )
            .await?;
        let results: Vec<Result<bool>> = futures_util::stream::iter(claimed)
            .map(|task| self.notify(rollout, &firmware, task, &token))
            .buffer_unordered(self.config.worker.publish_concurrency.max(1))
            .collect()
            .await;
        let mut notified = 0;
        for r in results {
            match r {
                Ok(true) => notified += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(rollout_id = %rollout.id, error = %e, "notifying a device failed")
                }
            }
        }
        Ok(notified)
    }

    /// Devices in `batch` that came online get the notification of their
    /// execution again when it is still `notified`: they may have missed it
    /// while away. A device treats a repeated task id as the same task.
    /// Notes the devices that came back online: their pending
    /// notifications go out again `renotify_delay_ms` later, from the
    /// worker's own loop ([`Worker::renotify_due`]), so that the status
    /// event is acknowledged at once (a device's acknowledgement of its own
    /// status message waits for every consumer of it).
    async fn note_returning(&self, batch: Batch<StatusChanged>) -> anyhow::Result<()> {
        let due = tokio::time::Instant::now()
            + Duration::from_millis(self.config.worker.renotify_delay_ms);
        let back = batch
            .events()
            .into_iter()
            .filter(|c| c.online)
            .map(|c| (due, c.device_id));
        if let Ok(mut returning) = self.returning.lock() {
            returning.extend(back);
        }
        Ok(())
    }

    /// Publishes again the pending notifications of the devices that came
    /// back and whose delay has passed. One lost to a crash before this is
    /// still covered by the execution's timeout.
    async fn renotify_due(&self) -> anyhow::Result<()> {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = match self.returning.lock() {
            Ok(mut returning) => {
                let (due, later) = returning.drain(..).partition(|(at, _)| *at <= now);
                *returning = later;
                due.into_iter().map(|(_, device)| device).collect()
            }
            Err(_) => Vec::new(),
        };
        for device_id in due {
            for task in self.store.open_tasks_of_device(&device_id).await? {
                // Not one a worker is notifying right now.
                if task.state != ExecutionState::Notified || task.lease_owner.is_some() {
                    continue;
                }
                let Some(rollout) = self.store.get_rollout(&task.rollout_id).await? else {
                    continue;
                };
                if rollout.state != RolloutState::Running {
                    continue;
                }
                let Some(firmware) = self.store.get_firmware(&rollout.firmware_id).await? else {
                    continue;
                };
                let payload = self.notification(&rollout, &firmware, &task);
                let topic = format!("devices/{device_id}/ota");
                match self
                    .gateway
                    .publish(topic, payload.to_string().into_bytes(), 1)
                    .await
                {
                    Ok(()) => {
                        metrics::counter!("wf_ota_renotifications_total").increment(1);
                        tracing::info!(device_id = %device_id, task_id = %task.id, "update notification sent again: the device came back");
                    }
                    // The timeout still covers it.
                    Err(e) => {
                        tracing::warn!(device_id = %device_id, task_id = %task.id, error = %e, "update notification not sent again")
                    }
                }
            }
        }
        Ok(())
    }

    /// The OTA notification for one execution, with a download link only
    /// that device can use, valid for the execution's timeout (and at most
    /// `download_link_ttl_secs`).
    pub fn notification(
        &self,
        rollout: &RolloutRecord,
        firmware: &FirmwareRecord,
        task: &TaskRecord,
    ) -> serde_json::Value {
        let ttl = (rollout.timeout_secs.max(0) + 60)
            .min(i64::try_from(self.config.download_link_ttl_secs).unwrap_or(i64::MAX))
            .max(60);
        let expires_at = chrono::Utc::now().timestamp() + ttl;
        let token = self.links.sign(&firmware.id, &task.device_id, expires_at);
        json!({
            "task_id": task.id,
            "version": firmware.version,
            "url": format!(
                "{}/api/v1/firmware/{}/download?token={token}",
                self.config.public_url.trim_end_matches('/'),
                firmware.id
            ),
            "size": firmware.size,
            "sha256": firmware.sha256,
            "signature": firmware.signature,
        })
    }

    /// Records the notification (keeping the lease), publishes it, then
    /// ends the lease. A worker dying in between leaves a `notified`
    /// execution with a lease that runs out; any worker then claims it and
    /// publishes again, with the same task id.
    async fn notify(
        &self,
        rollout: &RolloutRecord,
        firmware: &FirmwareRecord,
        task: TaskRecord,
        token: &str,
    ) -> Result<bool> {
        let task = if task.state == ExecutionState::Queued {
            let id = task.id.clone();
            let applied = apply_event(
                &self.store,
                task,
                rollout,
                &ExecutionEvent::Notified,
                self.name(),
                Some(token),
            )
            .await?;
            if !matches!(applied, Applied::Changed(_)) {
                return Ok(false);
            }
            match self.store.get_task(&id).await? {
                Some(t) => t,
                None => return Ok(false),
            }
        } else {
            task
        };
        let payload = self.notification(rollout, firmware, &task);
        let topic = format!("devices/{}/ota", task.device_id);
        match self
            .gateway
            .publish(topic, payload.to_string().into_bytes(), 1)
            .await
        {
            Ok(()) => {
                self.store.confirm(&task.id, token).await?;
                metrics::counter!("wf_ota_notifications_total").increment(1);
                Ok(true)
            }
            Err(Error::Unavailable(m)) => {
                tracing::warn!(task_id = %task.id, error = %m, "mqtt-gateway unavailable; notification postponed");
                self.store
                    .unpublished(
                        &task,
                        token,
                        wf_common::now_millis() + PUBLISH_RETRY_MS,
                        self.name(),
                        &m,
                    )
                    .await?;
                Ok(false)
            }
            Err(e) => {
                // Refused (a device id the gateway will not publish to):
                // trying again cannot help.
                let reason = format!("the notification was refused: {e}");
                apply_event(
                    &self.store,
                    task,
                    rollout,
                    &ExecutionEvent::Cancel { reason: &reason },
                    self.name(),
                    None,
                )
                .await?;
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(ExecutionState, u64)]) -> StateCounts {
        let mut c = StateCounts::default();
        for (s, n) in pairs {
            c.set(*s, *n);
        }
        c
    }

    #[test]
    fn progress_sums_the_rollouts_in_progress_only() {
        let mut p = Progress::default();
        p.add(
            RolloutState::Running,
            &counts(&[(ExecutionState::Queued, 5), (ExecutionState::Succeeded, 2)]),
        );
        p.add(
            RolloutState::Paused,
            &counts(&[(ExecutionState::Queued, 1), (ExecutionState::Failed, 1)]),
        );
        p.add(
            RolloutState::Completed,
            &counts(&[(ExecutionState::Succeeded, 100)]),
        );
        assert_eq!((p.running, p.paused), (1, 1));
        assert_eq!(p.executions.get(ExecutionState::Queued), 6);
        assert_eq!(p.executions.get(ExecutionState::Succeeded), 2);
        assert_eq!(p.executions.get(ExecutionState::Failed), 1);
    }
}
