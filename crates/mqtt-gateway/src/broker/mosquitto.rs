//! The external-broker mode: the gateway is an MQTT client of Mosquitto 2
//! (the dynamic-security admin) and binds no MQTT listener of its own.
//!
//! - Mosquitto authenticates devices and enforces their topic ACLs. With
//!   `dynsec` on, [`SyncDeviceCredentials`](crate::grpc) keeps its
//!   dynamic-security plugin in step with the registry (see [`dynsec`]);
//!   with it off, Mosquitto's credentials are managed by other means.
//! - Device messages arrive through shared subscriptions
//!   (`$share/{shared_group}/devices/+/{telemetry,status,...}`, QoS 1), so
//!   replicas of the gateway in one group each get a share, none twice,
//!   and go through the same [`Ingest`] as the embedded broker's.
//! - The platform's publishes go out on the same connection. With dynsec,
//!   the admin client is given [`dynsec::GATEWAY_ROLE`] (publish to
//!   `devices/#`) on first connect; Mosquitto reconnects it once for that.
//! - A lost connection is retried with backoff (100 ms doubling to 5 s);
//!   `/readyz` reports the broker as failing until the connection is back,
//!   subscribed and provisioned. Sessions are clean by default: while a
//!   replica is away the others take its share, and a new connection
//!   subscribes again; but Mosquitto drops the messages in flight to a
//!   replica that crashed (it does not hand them to the rest of the group).
//! - With `durable_session`, the session outlives the connection and each
//!   device message is acknowledged only once its event is on the bus, so
//!   a crashed replica gets back, when it reconnects, what it had not
//!   passed on, and meanwhile Mosquitto keeps its share for it.
//!
//! Presence: Mosquitto 2.0 does not tell its clients when other clients
//! connect or drop, so online and offline come from `devices/{id}/status`
//! alone. Devices must publish "online" there once connected and set a
//! last will of "offline" on the same topic (as `wf-iot simulate` does);
//! both are reported with reason `status_message`.
//!
//! With several replicas, one device's messages may be split between them,
//! so their events can reach the bus out of order; events carry the time
//! they were received (`at`, `ts`) for consumers that care. A
//! `SubscribeTopic` stream sees the messages its own replica receives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use secrecy::ExposeSecret;

use super::BrokerLink;
use super::dynsec::{self, Dynsec, Provisioned};
use crate::MosquittoConfig;
use crate::domain::topic::DEVICES_ROOT;
use crate::domain::{DeviceId, Route, TopicName};
use crate::error::{Error, Result};
use crate::uplink::{Ack, Ingest};

/// The largest packet MQTT can carry. Oversized payloads are dropped (and
/// counted) by ingest; refusing them at the socket would drop the gateway's
/// connection instead, so a device could knock the gateway off the broker.
/// Bound packet sizes with Mosquitto's own `max_packet_size`.
const MAX_INCOMING_PACKET: usize = 268_435_455;

/// Requests queued towards the connection.
const REQUEST_CAPACITY: usize = 1024;

/// How long a publish or a dynamic-security request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long shutdown waits for DISCONNECT to go out.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared subscriptions that bring device messages in.
pub fn device_filters(shared_group: &str) -> Vec<String> {
    Route::UPSTREAM_SUFFIXES
        .iter()
        .map(|suffix| format!("$share/{shared_group}/{DEVICES_ROOT}/+/{suffix}"))
        .collect()
}

/// Where the connection stands.
#[derive(Debug, Default)]
struct LinkState {
    /// Bumped on every connect and disconnect, so work started for one
    /// connection stops when it ends.
    generation: u64,
    connected: bool,
    subscribed: bool,
    /// The gateway's own access is in place (always, without dynsec).
    provisioned: bool,
    /// Why the link is not ready, for `/readyz` and the logs.
    problem: Option<String>,
    /// The admin was just granted the gateway role: Mosquitto is about to
    /// drop this connection, and that is expected.
    regranting: bool,
}

/// The platform's side of the connection: publishes, credential changes,
/// readiness.
pub struct MosquittoLink {
    client: AsyncClient,
    dynsec: Option<Dynsec>,
    admin_username: String,
    address: String,
    state: Mutex<LinkState>,
}

impl MosquittoLink {
    fn with_state<T>(&self, f: impl FnOnce(&mut LinkState) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// Connected with the subscriptions in place (dynamic-security answers
    /// arrive on one of them).
    fn require_subscribed(&self) -> Result<()> {
        let ok = self
            .with_state(|s| s.connected && s.subscribed)
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(Error::Unavailable(self.not_ready_reason()))
        }
    }

    fn not_ready_reason(&self) -> String {
        self.with_state(|s| s.problem.clone())
            .flatten()
            .unwrap_or_else(|| format!("not connected to Mosquitto at {}", self.address))
    }

    fn connected(&self) -> u64 {
        metrics::gauge!("wf_mqtt_broker_connected").set(1.0);
        self.with_state(|s| {
            s.generation += 1;
            s.connected = true;
            s.subscribed = false;
            s.provisioned = self.dynsec.is_none();
            s.problem = Some("subscribing to the device topics".into());
            s.generation
        })
        .unwrap_or_default()
    }

    fn subscribed(&self) -> u64 {
        self.with_state(|s| {
            s.subscribed = true;
            s.problem = if s.provisioned {
                None
            } else {
                Some("provisioning the gateway's access in the dynamic-security plugin".into())
            };
            s.generation
        })
        .unwrap_or_default()
    }

    /// Records why the current connection is not usable; `true` when it is
    /// a new reason (worth a log line at warn).
    fn trouble(&self, generation: Option<u64>, problem: String) -> bool {
        self.with_state(|s| {
            if generation.is_some_and(|g| g != s.generation) {
                return false;
            }
            let new = s.problem.as_deref() != Some(problem.as_str());
            s.problem = Some(problem);
            new
        })
        .unwrap_or(false)
    }

    /// The connection ended (or could not be made): whether it had been up,
    /// whether `problem` is news, and whether the end was expected (the
    /// role grant).
    fn disconnected(&self, problem: String) -> (bool, bool, bool) {
        metrics::gauge!("wf_mqtt_broker_connected").set(0.0);
        if let Some(d) = &self.dynsec {
            d.connection_lost();
        }
        self.with_state(|s| {
            let was_connected = s.connected;
            if was_connected {
                s.generation += 1;
            }
            s.connected = false;
            s.subscribed = false;
            s.provisioned = false;
            let new = s.problem.as_deref() != Some(problem.as_str());
            s.problem = Some(problem);
            (was_connected, new, std::mem::take(&mut s.regranting))
        })
        .unwrap_or((false, false, false))
    }

    fn is_current(&self, generation: u64) -> bool {
        self.with_state(|s| s.connected && s.generation == generation)
            .unwrap_or(false)
    }

    fn mark_provisioned(&self, generation: u64) -> bool {
        self.with_state(|s| {
            if s.generation != generation || !s.connected {
                return false;
            }
            s.provisioned = true;
            if s.subscribed {
                s.problem = None;
            }
            true
        })
        .unwrap_or(false)
    }

    fn is_connected(&self) -> bool {
        self.with_state(|s| s.connected).unwrap_or(false)
    }

    /// Gives the admin client its role, retrying while this connection
    /// lasts.
    async fn provision(self: Arc<Self>, generation: u64) {
        let Some(dynsec) = &self.dynsec else {
            return;
        };
        let mut delay = Duration::from_millis(500);
        while self.is_current(generation) {
            match dynsec.provision_gateway(&self.admin_username).await {
                Ok(Provisioned::Ready) => {
                    if self.mark_provisioned(generation) {
                        tracing::info!(broker = %self.address, "connected to Mosquitto; device messages flowing");
                    }
                    return;
                }
                Ok(Provisioned::RoleGranted) => {
                    tracing::info!(
                        admin = %self.admin_username,
                        role = dynsec::GATEWAY_ROLE,
                        "granted the gateway role to the admin client; Mosquitto reconnects it to apply the role"
                    );
                    self.trouble(
                        Some(generation),
                        "waiting for Mosquitto to apply the gateway role".into(),
                    );
                    self.with_state(|s| s.regranting = s.generation == generation);
                    delay = Duration::from_millis(500);
                }
                Err(e) => {
                    let problem = format!("provisioning the gateway's access failed: {e}");
                    if self.trouble(Some(generation), problem.clone()) {
                        tracing::warn!(broker = %self.address, "{problem}");
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

#[async_trait]
impl BrokerLink for MosquittoLink {
    async fn publish(
        &self,
        topic: &TopicName,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> Result<()> {
        self.check_ready().map_err(Error::Unavailable)?;
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            other => {
                return Err(Error::BadRequest(format!(
                    "qos must be 0, 1 or 2, not {other}"
                )));
            }
        };
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.client
                .publish_bytes(topic.as_str(), qos, retain, payload),
        )
        .await
        .map_err(|_| Error::Unavailable("the connection to Mosquitto is saturated".into()))?
        .map_err(|e| Error::Unavailable(format!("the connection to Mosquitto is closed: {e}")))
    }

    async fn sync_credentials(&self, device: &DeviceId, secret: &str) -> Result<()> {
        let Some(dynsec) = &self.dynsec else {
            // Mosquitto's credentials are managed outside the gateway.
            return Ok(());
        };
        self.require_subscribed()?;
        if secret.is_empty() {
            dynsec.remove_device(device).await?;
            tracing::info!(device_id = %device, "device removed from Mosquitto");
        } else {
            dynsec.put_device(device, secret).await?;
            tracing::info!(device_id = %device, "device credentials set in Mosquitto");
        }
        Ok(())
    }

    fn check_ready(&self) -> Result<(), String> {
        let ready = self
            .with_state(|s| s.connected && s.subscribed && s.provisioned)
            .unwrap_or(false);
        if ready {
            Ok(())
        } else {
            Err(self.not_ready_reason())
        }
    }
}

/// The connection's event loop, feeding ingest.
pub struct Bridge {
    link: Arc<MosquittoLink>,
    eventloop: EventLoop,
    filters: Vec<SubscribeFilter>,
    /// Device messages are acknowledged once their events are on the bus.
    manual_acks: bool,
}

impl Bridge {
    /// Sets up the client; nothing is connected until [`Bridge::run`].
    pub fn new(config: &MosquittoConfig, max_payload_bytes: usize) -> anyhow::Result<Self> {
        config.validate()?;
        let mut options =
            MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        options
            .set_credentials(
                config.admin_username.clone(),
                config.admin_password.expose_secret().to_string(),
            )
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(1)))
            .set_clean_session(!config.durable_session)
            .set_manual_acks(config.durable_session)
            .set_max_packet_size(
                MAX_INCOMING_PACKET,
                max_payload_bytes.saturating_add(64 * 1024),
            );
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let dynsec = config
            .dynsec
            .then(|| Dynsec::new(client.clone(), &config.client_id, REQUEST_TIMEOUT));
        let mut filters: Vec<SubscribeFilter> = device_filters(&config.shared_group)
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect();
        if dynsec.is_some() {
            filters.push(SubscribeFilter::new(
                dynsec::RESPONSE_TOPIC.into(),
                QoS::AtLeastOnce,
            ));
        }
        let address = format!("{}:{}", config.host, config.port);
        metrics::gauge!("wf_mqtt_broker_connected").set(0.0);
        Ok(Self {
            link: Arc::new(MosquittoLink {
                client,
                dynsec,
                admin_username: config.admin_username.clone(),
                state: Mutex::new(LinkState {
                    problem: Some(format!("connecting to Mosquitto at {address}")),
                    ..LinkState::default()
                }),
                address,
            }),
            eventloop,
            filters,
            manual_acks: config.durable_session,
        })
    }

    /// The acknowledgement of `publish`, sent only while the connection it
    /// arrived on lasts: after a reconnect its packet id may name another
    /// message, and the durable session delivers the unacknowledged one
    /// again anyway.
    fn ack_later(&self, publish: &rumqttc::Publish) -> Ack {
        let link = self.link.clone();
        let generation = link.with_state(|s| s.generation).unwrap_or_default();
        let publish = publish.clone();
        Box::new(move || {
            if !link.is_current(generation) {
                return;
            }
            if link.client.try_ack(&publish).is_err() {
                let client = link.client.clone();
                tokio::spawn(async move {
                    let _ = client.ack(&publish).await;
                });
            }
        })
    }

    pub fn link(&self) -> Arc<MosquittoLink> {
        self.link.clone()
    }

    /// Connects, reconnecting with backoff, and hands every device message
    /// to `ingest` until `stop` resolves; then disconnects politely.
    pub async fn run(mut self, ingest: Arc<Ingest>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut backoff = MIN_BACKOFF;
        loop {
            let event = tokio::select! {
                () = &mut stop => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = MIN_BACKOFF;
                    let generation = self.link.connected();
                    tracing::info!(broker = %self.link.address, generation, "connected to Mosquitto");
                    if let Err(e) = self.link.client.try_subscribe_many(self.filters.clone()) {
                        tracing::warn!(error = %e, "could not queue the subscriptions");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        let problem = "Mosquitto refused the gateway's subscriptions: the admin \
                                       client needs subscribe access to devices/# and \
                                       $CONTROL/dynamic-security/#"
                            .to_string();
                        if self.link.trouble(None, problem.clone()) {
                            tracing::error!("{problem}");
                        }
                        continue;
                    }
                    let generation = self.link.subscribed();
                    if self.link.dynsec.is_some() {
                        tokio::spawn(self.link.clone().provision(generation));
                    } else {
                        tracing::info!(broker = %self.link.address, "subscribed to the device topics");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let ack = self.manual_acks.then(|| self.ack_later(&publish));
                    if publish.topic == dynsec::RESPONSE_TOPIC {
                        if let Some(d) = &self.link.dynsec {
                            d.on_response(&publish.payload);
                        }
                        if let Some(ack) = ack {
                            ack();
                        }
                    } else {
                        ingest.accept_brokered(
                            &publish.topic,
                            &publish.payload,
                            publish.qos as u8,
                            ack,
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let problem = describe(&e, &self.link.address);
                    let (was_connected, new, expected) = self.link.disconnected(problem.clone());
                    if expected {
                        tracing::info!(
                            "Mosquitto closed the connection to apply the gateway role; reconnecting"
                        );
                    } else if was_connected {
                        tracing::warn!(error = %e, "lost the connection to Mosquitto; reconnecting");
                    } else if new {
                        tracing::warn!("{problem}; retrying");
                    } else {
                        tracing::debug!("{problem}; retrying");
                    }
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.disconnect().await;
    }

    async fn disconnect(mut self) {
        let was_connected = self.link.is_connected();
        self.link
            .disconnected("the gateway is shutting down".into());
        if !was_connected || self.link.client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// A connection failure as an operator reads it.
fn describe(e: &ConnectionError, address: &str) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "Mosquitto at {address} refused the gateway's connection ({code:?}): check admin_username and admin_password"
        ),
        other => format!("cannot reach Mosquitto at {address}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions_cover_every_upstream_topic() {
        assert_eq!(
            device_filters("wf-iot-gateway"),
            [
                "$share/wf-iot-gateway/devices/+/telemetry",
                "$share/wf-iot-gateway/devices/+/status",
                "$share/wf-iot-gateway/devices/+/commands/response",
                "$share/wf-iot-gateway/devices/+/ota/progress",
                "$share/wf-iot-gateway/devices/+/shadow/reported",
                "$share/wf-iot-gateway/devices/+/shadow/get",
            ]
        );
    }

    #[tokio::test]
    async fn the_link_is_ready_only_when_connected_subscribed_and_provisioned() {
        let config = MosquittoConfig {
            admin_username: "admin".into(),
            admin_password: secrecy::SecretString::from("pw"),
            ..MosquittoConfig::default()
        };
        let bridge = Bridge::new(&config, 1024).unwrap();
        let link = bridge.link();
        assert!(
            link.check_ready()
                .unwrap_err()
                .contains("connecting to Mosquitto")
        );
        let generation = link.connected();
        assert!(link.check_ready().is_err());
        assert_eq!(link.subscribed(), generation);
        assert!(link.check_ready().unwrap_err().contains("provisioning"));
        assert!(link.mark_provisioned(generation));
        assert!(link.check_ready().is_ok());
        link.disconnected("cannot reach Mosquitto".into());
        assert_eq!(link.check_ready().unwrap_err(), "cannot reach Mosquitto");
        // Work for the old connection no longer counts.
        assert!(!link.mark_provisioned(generation));
        assert!(!link.is_current(generation));
    }
}
