//! What device-service does with device events: stores telemetry, applies
//! status changes, completes commands from their responses, records the
//! firmware version a device runs after an update, merges the state devices
//! report into their shadows and answers their requests for it, runs fleet
//! shadow jobs, and times out commands nobody answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use wf_common::contract::{
    BrokerHeartbeat, CommandOutcome, CommandResponded, Event, MAX_TEXT_VALUE_BYTES, OtaProgress,
    OtaState, ShadowReported, ShadowRequested, StatusChanged, StatusReason, TelemetryBatch,
};
use wf_common::events::{Batch, publish, run_consumer};
use wf_common::shutdown::Shutdown;

use crate::domain::{CommandStatus, Reading};
use crate::state::AppState;

/// The consumer group of every device-service replica.
const GROUP: &str = "device-service";

/// Telemetry events taken at once. While devices wait for their
/// acknowledgements, the gateway passes each message on at once, so events
/// are small (often one message): taking many of them is what lets one
/// database commit serve the whole fleet.
const TELEMETRY_EVENTS_PER_BATCH: usize = 1024;

/// The most readings (telemetry messages) written in one transaction (full
/// events carry up to 500 each).
const READINGS_PER_TRANSACTION: usize = 32_000;

/// Values refused by the store are logged at most this often (each is counted).
static REFUSED_LOG: wf_common::telemetry::LogEvery =
    wf_common::telemetry::LogEvery::new(Duration::from_secs(10));

/// Runs every background worker until `stop` is triggered.
pub async fn run(state: AppState, stop: Shutdown) {
    // Every outcome is on /metrics from the start, at 0, so that rates and
    // alerts see the first one.
    for status in ["succeeded", "failed", "timed_out"] {
        metrics::counter!("wf_commands_completed_total", "status" => status).increment(0);
    }
    let noted: Arc<Mutex<Noted>> = Arc::default();
    let telemetry = {
        let noted = noted.clone();
        consume::<TelemetryBatch, _, _>(
            &state,
            TELEMETRY_EVENTS_PER_BATCH,
            &stop,
            move |state, batch| {
                let noted = noted.clone();
                async move { store_telemetry(&state, &noted, batch).await }
            },
        )
    };
    let status = consume::<StatusChanged, _, _>(&state, 256, &stop, |state, batch| async move {
        apply_status(&state, batch).await
    });
    let responses =
        consume::<CommandResponded, _, _>(&state, 256, &stop, |state, batch| async move {
            complete_commands(&state, batch).await
        });
    let updates = consume::<OtaProgress, _, _>(&state, 256, &stop, |state, batch| async move {
        record_firmware_versions(&state, batch).await
    });
    let reports = consume::<ShadowReported, _, _>(&state, 256, &stop, |state, batch| async move {
        let reports = batch.events().into_iter().map(|r| (r.device_id, r.state));
        per_device(reports, |device_id, report| {
            let state = state.clone();
            async move { crate::shadows::reported(&state, &device_id, &report).await }
        })
        .await?;
        Ok(())
    });
    let requests =
        consume::<ShadowRequested, _, _>(&state, 256, &stop, |state, batch| async move {
            let requests = batch.events().into_iter().map(|r| (r.device_id, ()));
            per_device(requests, |device_id, ()| {
                let state = state.clone();
                async move {
                    if let Err(e) = crate::shadows::requested(&state, &device_id).await {
                        // The device asks again; nothing is lost.
                        tracing::warn!(device_id = %device_id, error = %e,
                            "the shadow a device asked for could not be sent");
                    }
                    Ok::<_, crate::error::Error>(())
                }
            })
            .await?;
            Ok(())
        });
    // Lapsed leases are swept only once the heartbeats published while
    // this process was away have been read: a lease is only as old as the
    // last heartbeat seen.
    let leases_current = Arc::new(AtomicBool::new(false));
    let leases_heard = Arc::new(AtomicBool::new(false));
    let leases = {
        let current = leases_current.clone();
        let heard = leases_heard.clone();
        consume::<BrokerHeartbeat, _, _>(
            &state,
            HEARTBEATS_PER_BATCH,
            &stop,
            move |state, batch| {
                let current = current.clone();
                heard.store(true, AtomicOrdering::Release);
                async move {
                    let caught_up = batch.len() < HEARTBEATS_PER_BATCH;
                    renew_broker_leases(&state, batch).await?;
                    if caught_up {
                        current.store(true, AtomicOrdering::Release);
                    }
                    Ok(())
                }
            },
        )
    };
    tokio::join!(
        telemetry,
        status,
        responses,
        updates,
        reports,
        requests,
        leases,
        sweep_lapsed_brokers(state.clone(), leases_current, leases_heard, stop.clone()),
        expire_commands(state.clone(), stop.clone()),
        count_devices(state.clone(), stop.clone()),
        flush_noted(&state, &noted, stop.clone()),
        crate::shadows::run_jobs(state.clone(), stop.clone()),
    );
    // What the consumers handled while they stopped.
    flush_once(&state, &noted).await;
}

/// How many devices' events [`per_device`] handles at once.
const DEVICES_AT_ONCE: usize = 16;

/// Handles `(device id, event)` pairs with `handle`: each device's in the
/// order given, several devices at once. The first error, once all are
/// handled (the batch is then delivered again, and handling is
/// idempotent).
async fn per_device<T, F, Fut, Err>(
    events: impl Iterator<Item = (String, T)>,
    handle: F,
) -> Result<(), Err>
where
    F: Fn(String, T) -> Fut,
    Fut: Future<Output = Result<(), Err>>,
{
    let mut order: Vec<String> = Vec::new();
    let mut by_device: HashMap<String, Vec<T>> = HashMap::new();
    for (device_id, event) in events {
        by_device
            .entry(device_id)
            .or_insert_with_key(|id| {
                order.push(id.clone());
                Vec::new()
            })
            .push(event);
    }
    let handle = &handle;
    let results: Vec<Result<(), Err>> = futures_util::stream::iter(order)
        .map(|device_id| {
            let events = by_device.remove(&device_id).unwrap_or_default();
            async move {
                for event in events {
                    handle(device_id.clone(), event).await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(DEVICES_AT_ONCE)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What stored telemetry leaves to write later, in one write every few
/// seconds rather than one per batch: when each device was last seen, and
/// the messages stored per device and minute (the fleet's activity).
#[derive(Default)]
struct Noted {
    last_seen: HashMap<String, i64>,
    activity: HashMap<(String, i64), i64>,
}

/// A consumer of the topic of `E` in device-service's group: `handle` gets
/// each batch of at most `max_batch` events until `stop` is triggered.
async fn consume<E, H, Fut>(state: &AppState, max_batch: usize, stop: &Shutdown, handle: H)
where
    E: Event,
    H: Fn(AppState, Batch<E>) -> Fut + Send + Sync,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    run_consumer(
        state.bus.clone(),
        GROUP.into(),
        state.config.consumer_name.clone(),
        max_batch,
        stop.wait(),
        |batch| handle(state.clone(), batch),
    )
    .await;
}

async fn store_telemetry(
    state: &AppState,
    noted: &Mutex<Noted>,
    batch: Batch<TelemetryBatch>,
) -> anyhow::Result<()> {
    let mut readings: Vec<Reading> = batch
        .events()
        .into_iter()
        .flat_map(|b| b.messages)
        .map(|m| Reading {
            device_id: m.device_id,
            ts: m.ts,
            values: m.values,
        })
        .collect();
    // The gateway publishes only what can be stored, and an event naming a
    // metric badly does not decode; text too long for the store is still
    // dropped here, so one bad value can never hold up the batch forever.
    for r in &mut readings {
        r.values.retain(|(metric, value)| {
            let ok = value.is_storable();
            if !ok {
                metrics::counter!("wf_telemetry_values_rejected_total").increment(1);
                if REFUSED_LOG.ready() {
                    tracing::warn!(
                        device_id = %r.device_id,
                        metric = %metric,
                        "telemetry value not stored: text over {MAX_TEXT_VALUE_BYTES} bytes \
                         (wf_telemetry_values_rejected_total counts every one)"
                    );
                }
            }
            ok
        });
    }
    readings.retain(|r| !r.values.is_empty());
    if readings.is_empty() {
        return Ok(());
    }
    let offered: u64 = readings.iter().map(|r| r.values.len() as u64).sum();
    let mut stored = 0;
    let mut activity: HashMap<(String, i64), i64> = HashMap::new();
    for chunk in readings.chunks(READINGS_PER_TRANSACTION) {
        let inserted = state.store.insert_telemetry(chunk).await?;
        stored += inserted;
        count_messages(chunk, inserted, &mut activity);
    }
    metrics::counter!("wf_telemetry_messages_stored_total").increment(readings.len() as u64);
    metrics::counter!("wf_telemetry_values_stored_total").increment(stored);
    // A value whose (device, metric, ts) is stored already: a redelivered
    // event, or a device that sent two values with the same `ts`.
    let duplicates = offered.saturating_sub(stored);
    if duplicates > 0 {
        metrics::counter!("wf_telemetry_values_duplicate_total").increment(duplicates);
        if REFUSED_LOG.ready() {
            tracing::info!(
                duplicates,
                "telemetry values already stored under the same device, metric and ts were \
                 not stored again (wf_telemetry_values_duplicate_total counts every one)"
            );
        }
    }
    let now = wf_common::now_millis();
    if let Ok(mut noted) = noted.lock() {
        for r in &readings {
            noted.last_seen.insert(r.device_id.clone(), now);
        }
        for (key, n) in activity {
            *noted.activity.entry(key).or_default() += n;
        }
    }
    Ok(())
}

/// Adds the messages of `chunk` that were stored to `activity`, per device
/// and minute of their time. A message repeated in the chunk counts once;
/// a chunk stored before (a redelivered event) counts nothing; one stored
/// in part (some of its values were) counts its share.
fn count_messages(chunk: &[Reading], inserted: u64, activity: &mut HashMap<(String, i64), i64>) {
    let mut seen: HashMap<(&str, i64), usize> = HashMap::new();
    for r in chunk {
        seen.entry((r.device_id.as_str(), r.ts))
            .and_modify(|values| *values = (*values).max(r.values.len()))
            .or_insert(r.values.len());
    }
    let rows: u64 = seen.values().map(|&v| v as u64).sum();
    if inserted == 0 || rows == 0 {
        return;
    }
    let mut per_minute: HashMap<(&str, i64), i64> = HashMap::new();
    for (device, ts) in seen.keys() {
        *per_minute
            .entry((*device, ts - ts.rem_euclid(60_000)))
            .or_default() += 1;
    }
    for ((device, minute), n) in per_minute {
        let counted = if inserted >= rows {
            n
        } else {
            ((n as f64) * inserted as f64 / rows as f64).round() as i64
        };
        if counted > 0 {
            *activity.entry((device.to_string(), minute)).or_default() += counted;
        }
    }
}

async fn apply_status(state: &AppState, batch: Batch<StatusChanged>) -> anyhow::Result<()> {
    for change in batch.events() {
        let applied = state
            .store
            .apply_status(
                &change.device_id,
                change.online,
                change.at,
                change.reason.as_str(),
                change.broker.as_deref(),
            )
            .await?;
        tracing::debug!(device_id = %change.device_id, online = change.online, applied, "status change");
        if applied && change.online {
            tokio::spawn(crate::shadows::device_connected(
                state.clone(),
                change.device_id.clone(),
            ));
            tokio::spawn(redeliver_commands(state.clone(), change.device_id));
        }
    }
    Ok(())
}

async fn renew_broker_leases(
    state: &AppState,
    batch: Batch<BrokerHeartbeat>,
) -> anyhow::Result<()> {
    for beat in batch.events() {
        state
            .store
            .renew_broker_lease(&beat.broker, beat.at.saturating_add(beat.lease_ms))
            .await?;
    }
    Ok(())
}

/// Heartbeats taken at once; a smaller batch means the consumer is current.
const HEARTBEATS_PER_BATCH: usize = 256;

/// The longest sweeping waits, after a start, for the heartbeats gateway
/// instances published meanwhile: several of their intervals (5 s by
/// default).
const LEASE_CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

/// Devices taken offline per sweep at most (the next sweep goes on).
const SWEEP_BATCH: i64 = 1000;

/// How long a device may name a broker instance that never announced its
/// lease before it counts as lost (covers a heartbeat still on its way).
const UNKNOWN_BROKER_GRACE_MS: i64 = 30_000;

/// Every second: devices whose embedded broker instance stopped renewing
/// its lease (a crashed or cut-off mqtt-gateway) go offline with reason
/// `gateway_lost`, announced on the bus like any status change. Every
/// replica sweeps; the conditional update lets one of them win per device.
///
/// Sweeping waits for the heartbeats published while this process was
/// away, but not for ever: when none at all has come within
/// [`LEASE_CATCH_UP_LIMIT`] of the start, no gateway instance is alive to
/// send one, and the leases stored are as current as they will get. While
/// heartbeats are still being read, it waits for them.
async fn sweep_lapsed_brokers(
    state: AppState,
    leases_current: Arc<AtomicBool>,
    leases_heard: Arc<AtomicBool>,
    stop: Shutdown,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.wait() => return,
        }
        if !leases_current.load(AtomicOrdering::Acquire) {
            if started.elapsed() < LEASE_CATCH_UP_LIMIT
                || leases_heard.load(AtomicOrdering::Acquire)
            {
                continue;
            }
            tracing::info!(
                "no gateway heartbeat since the start: sweeping devices of gateway instances \
                 by the leases stored"
            );
            leases_current.store(true, AtomicOrdering::Release);
        }
        round += 1;
        if let Err(e) = sweep_once(&state, round.is_multiple_of(10)).await {
            tracing::warn!(error = %e, "sweeping devices of lost gateway instances failed; retrying");
        }
    }
}

/// One sweep; `unknown` also looks for devices of instances never heard of.
async fn sweep_once(state: &AppState, unknown: bool) -> anyhow::Result<usize> {
    let now = wf_common::now_millis();
    let mut lost: Vec<(String, String)> = Vec::new();
    for broker in state.store.lapsed_brokers(now).await? {
        for device in state.store.devices_on_broker(&broker, SWEEP_BATCH).await? {
            lost.push((device, broker.clone()));
        }
    }
    if unknown {
        lost.extend(
            state
                .store
                .devices_on_unknown_brokers(now - UNKNOWN_BROKER_GRACE_MS, SWEEP_BATCH)
                .await?,
        );
        state.store.forget_lapsed_brokers(now - 3_600_000).await?;
    }
    let mut changes = Vec::new();
    for (device, broker) in lost {
        if state
            .store
            .mark_offline_on(&device, &broker, now, StatusReason::GatewayLost.as_str())
            .await?
        {
            tracing::info!(device_id = %device, broker = %broker, "device offline: its gateway instance stopped renewing its lease");
            metrics::counter!("wf_devices_lost_with_gateway_total").increment(1);
            changes.push(StatusChanged {
                device_id: device,
                online: false,
                at: now,
                reason: StatusReason::GatewayLost,
                broker: None,
            });
        }
    }
    if !changes.is_empty() {
        publish(state.bus.as_ref(), &changes).await?;
    }
    Ok(changes.len())
}

/// A device that comes back gets its open commands again (the ones it
/// may have missed while away), once it had the time to subscribe. A
/// device answers a command id once; a repeat changes nothing.
async fn redeliver_commands(state: AppState, device_id: String) {
    tokio::time::sleep(Duration::from_millis(
        state.config.command_redelivery_delay_ms,
    ))
    .await;
    let open = match state
        .store
        .open_commands(&device_id, wf_common::now_millis())
        .await
    {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(device_id = %device_id, error = %e, "open commands not redelivered");
            return;
        }
    };
    for command in open {
        let published = match crate::http::commands::publish(&state, &command).await {
            Ok(()) => {
                state
                    .store
                    .mark_command_sent(&command.id, wf_common::now_millis())
                    .await
            }
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => {
                metrics::counter!("wf_commands_redelivered_total").increment(1);
                tracing::info!(device_id = %device_id, command_id = %command.id, "open command delivered again on reconnect");
            }
            Err(e) => {
                tracing::warn!(device_id = %device_id, command_id = %command.id, error = %e, "open command not redelivered");
            }
        }
    }
}

async fn complete_commands(state: &AppState, batch: Batch<CommandResponded>) -> anyhow::Result<()> {
    for response in batch.events() {
        let status = match response.status {
            CommandOutcome::Succeeded => CommandStatus::Succeeded,
            CommandOutcome::Failed => CommandStatus::Failed,
        };
        let error = (status == CommandStatus::Failed).then_some("the device reported a failure");
        let completed = state
            .store
            .complete_command(
                &response.command_id,
                &response.device_id,
                status,
                Some(&response.result),
                error,
                response.at,
            )
            .await?;
        if completed {
            metrics::counter!("wf_commands_completed_total", "status" => status.as_str())
                .increment(1);
            let _ = state.command_done.send(response.command_id);
        }
    }
    Ok(())
}

/// The longest firmware version recorded.
const MAX_VERSION_LEN: usize = 64;

/// A device that reports a finished update (`succeeded`, after restarting
/// into the new image) runs the version it names: the registry shows it.
/// Whether the rollout counts it as a success is firmware-service's call.
async fn record_firmware_versions(
    state: &AppState,
    batch: Batch<OtaProgress>,
) -> anyhow::Result<()> {
    for report in batch.events() {
        let finished = report.state == OtaState::Succeeded;
        let Some(version) = report.version.as_deref().map(str::trim) else {
            continue;
        };
        if !finished {
            continue;
        }
        let printable = version
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
        if version.is_empty() || version.len() > MAX_VERSION_LEN || !printable {
            tracing::info!(device_id = %report.device_id, "ignoring an unusable firmware version in an OTA report");
            continue;
        }
        let changed = state
            .store
            .set_firmware_version(&report.device_id, version, wf_common::now_millis())
            .await?;
        if changed {
            tracing::info!(device_id = %report.device_id, version, "device runs new firmware");
        }
    }
    Ok(())
}

/// Marks open commands past their deadline `timed_out`, every second. Safe
/// to run on every replica: the update is conditional.
async fn expire_commands(state: AppState, stop: Shutdown) {
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
        }
        match state.store.expire_commands(wf_common::now_millis()).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("wf_commands_completed_total", "status" => "timed_out")
                    .increment(n);
            }
            Err(e) => tracing::warn!(error = %e, "timing out commands failed"),
        }
    }
}

/// How often the device gauges are refreshed from the database.
const COUNT_INTERVAL: Duration = Duration::from_secs(10);

/// Keeps `wf_devices_registered` and `wf_devices_online` current, counted in
/// the database, so they hold whichever broker devices connect to and
/// however many replicas run (each reports the same fleet-wide figures).
async fn count_devices(state: AppState, stop: Shutdown) {
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(COUNT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
        }
        match state.store.count_devices(None).await {
            Ok((total, online)) => {
                metrics::gauge!("wf_devices_registered").set(total as f64);
                metrics::gauge!("wf_devices_online").set(online as f64);
            }
            Err(e) => tracing::warn!(error = %e, "counting devices failed"),
        }
    }
}

/// Writes what [`Noted`] holds every 5 s until `stop`.
async fn flush_noted(state: &AppState, noted: &Mutex<Noted>, stop: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.wait() => return,
            _ = tick.tick() => {}
        }
        flush_once(state, noted).await;
    }
}

async fn flush_once(state: &AppState, noted: &Mutex<Noted>) {
    let Noted {
        last_seen,
        activity,
    } = noted
        .lock()
        .map(|mut n| std::mem::take(&mut *n))
        .unwrap_or_default();
    let seen: Vec<(String, i64)> = last_seen.into_iter().collect();
    if !seen.is_empty()
        && let Err(e) = state.store.touch_last_seen(&seen).await
    {
        tracing::warn!(error = %e, "recording last-seen times failed; trying again");
        keep_noted(noted, |n| {
            for (device, at) in seen {
                let kept = n.last_seen.entry(device).or_default();
                *kept = (*kept).max(at);
            }
        });
    }
    // In key order, so that replicas writing the same rows take their
    // locks in the same order.
    let mut counts: Vec<(String, i64, i64)> = activity
        .into_iter()
        .map(|((device, minute), n)| (device, minute, n))
        .collect();
    counts.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    if let Err(e) = state.store.add_activity(&counts).await {
        tracing::warn!(error = %e, "recording the fleet's activity failed; trying again");
        keep_noted(noted, |n| {
            for (device, minute, count) in counts {
                *n.activity.entry((device, minute)).or_default() += count;
            }
        });
    }
}

/// Puts back what a failed write took out, for the next flush.
fn keep_noted(noted: &Mutex<Noted>, put_back: impl FnOnce(&mut Noted)) {
    if let Ok(mut n) = noted.lock() {
        put_back(&mut n);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use wf_common::contract::{MetricName, MetricValue};

    use super::*;

    #[tokio::test]
    async fn each_devices_events_are_handled_in_order_while_devices_go_at_once() {
        let seen = Mutex::new(Vec::new());
        let events = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3)];
        let result: Result<(), String> = per_device(
            events.iter().map(|(d, n)| (d.to_string(), *n)),
            |device, n| {
                let seen = &seen;
                async move {
                    // The first device's events take longest: the others
                    // are not held up behind them.
                    if device == "a" {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    seen.lock().unwrap().push((device, n));
                    Ok(())
                }
            },
        )
        .await;
        result.unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 6);
        assert_eq!(
            seen[..3].iter().filter(|(d, _)| d == "a").count(),
            0,
            "{seen:?}"
        );
        for device in ["a", "b", "c"] {
            let order: Vec<i32> = seen
                .iter()
                .filter(|(d, _)| d == device)
                .map(|(_, n)| *n)
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(order, sorted, "{device}: {seen:?}");
        }

        // A failure stops that device's later events, not the others', and
        // is what the batch returns.
        let handled = Mutex::new(Vec::new());
        let result = per_device(
            events.iter().map(|(d, n)| (d.to_string(), *n)),
            |device, n| {
                let handled = &handled;
                async move {
                    if device == "a" && n == 2 {
                        return Err(format!("{device} {n} failed"));
                    }
                    handled.lock().unwrap().push((device, n));
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(result, Err("a 2 failed".to_string()));
        let mut handled = handled.into_inner().unwrap();
        handled.sort();
        assert_eq!(
            handled,
            [
                ("a".into(), 1),
                ("b".into(), 1),
                ("b".into(), 2),
                ("c".into(), 1)
            ]
        );
    }

    fn reading(device: &str, ts: i64, metrics: &[&str]) -> Reading {
        Reading {
            device_id: device.into(),
            ts,
            values: metrics
                .iter()
                .map(|m| (MetricName::parse(m).unwrap(), MetricValue::Number(1.0)))
                .collect(),
        }
    }

    fn counted(chunk: &[Reading], inserted: u64) -> Vec<(String, i64, i64)> {
        let mut activity = HashMap::new();
        count_messages(chunk, inserted, &mut activity);
        let mut out: Vec<_> = activity
            .into_iter()
            .map(|((device, minute), n)| (device, minute, n))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn stored_messages_are_counted_per_device_and_minute_once() {
        let chunk = [
            reading("a", 60_500, &["temp", "hum"]),
            reading("a", 60_500, &["temp", "hum"]),
            reading("a", 119_999, &["temp"]),
            reading("a", 120_000, &["temp"]),
            reading("b", 61_000, &["temp"]),
        ];
        // Five values are new: the repeated message counts once.
        assert_eq!(
            counted(&chunk, 5),
            [
                ("a".to_string(), 60_000, 2),
                ("a".to_string(), 120_000, 1),
                ("b".to_string(), 60_000, 1),
            ]
        );
        // Redelivered: every value was stored before.
        assert_eq!(counted(&chunk, 0), []);
        // Stored in part: each device and minute counts its share.
        let half = [
            reading("c", 0, &["temp"]),
            reading("c", 1, &["temp"]),
            reading("c", 2, &["temp"]),
            reading("c", 3, &["temp"]),
        ];
        assert_eq!(counted(&half, 2), [("c".to_string(), 0, 2)]);
    }
}
