//! The embedded MQTT broker (rmqtt as a library) with the platform's
//! device authentication and topic ACL hooked in.
//!
//! rmqtt details this module takes care of:
//! - listeners are built with `allow_anonymous(false)`: anonymous clients
//!   would skip the authentication hook;
//! - hooks do nothing until their register is started;
//! - the last will is published without a publish check, so its topic is
//!   vetted at CONNECT;
//! - the client id must equal the username (the device id), or a device
//!   could take over another device's session;
//! - the `MessagePublish` hook runs before the publish ACL, so messages are
//!   taken for ingest from a lowest-priority `MessagePublishCheckAcl`
//!   handler that sees the ACL's verdict;
//! - offline status comes from the disconnect hook, which fires for
//!   keep-alive expiry and dropped sockets too, not only polite clients;
//! - listeners set `SO_REUSEADDR`, so a restart can bind again at once;
//! - a connection that sends no CONNECT within `connect_timeout` is closed
//!   (the handshake timeout; third_party/rmqtt-net applies it to the first
//!   bytes too), and one address may have at most `max_unanswered_per_ip`
//!   connections not yet answered with a CONNACK (third_party/rmqtt-net);
//! - the busy check, which refuses connections under load, is off;
//! - every handler keeps a refusal decided before it (`acc`);
//! - rmqtt acknowledges a QoS 1 or 2 PUBLISH (PUBACK, PUBREC) as soon as
//!   the publish hooks return, and handles one PUBLISH of a connection at a
//!   time: the ingest tap returns only once the message is stored, so an
//!   acknowledgement means stored, and refuses it with a disconnection
//!   when it cannot be stored (an MQTT 3 PUBACK cannot say "refused").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rmqtt::codec::types::{Publish as CodecPublish, QoS};
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::{Builder, Listener};
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::{
    AuthResult, ClientId, ConnectInfo, From, FromType, Id, LastWill, Message, Publish,
    PublishAclResult, PublishResult, Reason, SubscribeAclResult,
};
use tracing::Instrument;

use super::BrokerLink;
use crate::access::{self, ConnectRequest, Refusal};
use crate::clients::DeviceAuthenticator;
use crate::domain::{DeviceId, Malformed, TopicName, may_publish, may_subscribe};
use crate::error::{Error, Result};
use crate::uplink::Ingest;

/// A listener that could not be bound, with the way to move it when its
/// port is taken.
fn bind_error(e: rmqtt::Error, what: &str, addr: SocketAddr, setting: &str) -> anyhow::Error {
    let text = e.to_string();
    let in_use = text.contains("in use") || text.contains("os error 98");
    let hint = if in_use {
        wf_common::listen::port_in_use_hint(addr.port(), setting)
    } else {
        format!("check {setting} ({})", wf_common::listen::env_name(setting))
    };
    anyhow::anyhow!("binding the {what} port {addr}: {text}: {hint}")
}

/// The client id the platform's own messages are sent as.
const PLATFORM_CLIENT_ID: &str = "wf-iot-platform";

/// Priority of the access hooks: before anything else registered.
const ACCESS_PRIORITY: u32 = 100;

/// How long shutdown waits for devices' sessions to close.
const CLOSE_SESSIONS_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the broker's listeners.
pub struct BrokerSettings {
    pub mqtt_addr: SocketAddr,
    /// `None` disables MQTT over WebSocket.
    pub ws_addr: Option<SocketAddr>,
    pub max_payload_bytes: usize,
    /// A connection must complete its CONNECT within this time.
    pub connect_timeout: Duration,
    /// Connections of one address not yet answered, at most (0: no limit).
    pub max_unanswered_per_ip: usize,
    /// QoS 1 and 2 messages in flight per connection, each way.
    pub max_inflight: std::num::NonZeroU16,
}

/// The broker with its listeners bound and its hooks started.
pub struct EmbeddedBroker {
    scx: ServerContext,
    tcp: Listener,
    ws: Option<Listener>,
}

impl EmbeddedBroker {
    pub async fn bind(
        settings: &BrokerSettings,
        authenticator: Arc<dyn DeviceAuthenticator>,
        ingest: Arc<Ingest>,
    ) -> anyhow::Result<Self> {
        let scx = ServerContext::new().busy_check_enable(false).build().await;
        let register = scx.extends.hook_mgr().register();
        let access = || {
            Box::new(AccessHook {
                authenticator: authenticator.clone(),
            })
        };
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
        ] {
            register.add_priority(typ, ACCESS_PRIORITY, access()).await;
        }
        let tap = || {
            Box::new(IngestHook {
                ingest: ingest.clone(),
            })
        };
        for typ in [
            Type::MessagePublishCheckAcl,
            Type::MessagePublish,
            Type::ClientConnected,
            Type::ClientDisconnected,
        ] {
            register.add(typ, tap()).await;
        }
        register.start().await;

        // Oversized payloads are refused by ingest (counted, connection
        // kept); the packet limit only guards the broker's memory.
        let max_packet = u32::try_from(settings.max_payload_bytes.saturating_add(64 * 1024))
            .unwrap_or(u32::MAX)
            .max(1024 * 1024);
        let listener = |name: &str, addr: SocketAddr| {
            Builder::new()
                .name(name)
                .laddr(addr)
                .allow_anonymous(false)
                .reuseaddr(Some(true))
                .nodelay(true)
                .max_clientid_len(crate::domain::topic::MAX_DEVICE_ID_LEN)
                .max_packet_size(max_packet)
                .handshake_timeout(settings.connect_timeout)
                .max_pending_per_ip(settings.max_unanswered_per_ip)
                .max_inflight(settings.max_inflight)
                .bind()
        };
        let tcp = listener("mqtt/tcp", settings.mqtt_addr)
            .and_then(|l| l.tcp())
            .map_err(|e| bind_error(e, "MQTT", settings.mqtt_addr, "mqtt_gateway.mqtt_port"))?;
        let ws =
            match settings.ws_addr {
                Some(addr) => Some(listener("mqtt/ws", addr).and_then(|l| l.ws()).map_err(
                    |e| bind_error(e, "MQTT over WebSocket", addr, "mqtt_gateway.ws_port"),
                )?),
                None => None,
            };
        Ok(Self { scx, tcp, ws })
    }

    pub fn mqtt_port(&self) -> u16 {
        self.tcp.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// 0 when MQTT over WebSocket is disabled.
    pub fn ws_port(&self) -> u16 {
        self.ws
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The platform's trusted path into the broker.
    pub fn link(&self) -> EmbeddedLink {
        EmbeddedLink {
            scx: self.scx.clone(),
        }
    }

    /// Serves devices until `stop` resolves; then stops accepting, closes
    /// every session (so offline status and last wills go out) and waits
    /// a little for them to end.
    pub async fn run(self, ingest: Arc<Ingest>, stop: impl Future<Output = ()>) {
        let mut server = MqttServer::new(self.scx.clone()).listener_by_id(self.tcp, 1);
        if let Some(ws) = self.ws {
            server = server.listener_by_id(ws, 2);
        }
        let serving = tokio::spawn(server.build().run());
        let refusals = tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics::counter!("wf_mqtt_connections_refused_total", "reason" => "unanswered_per_ip")
                    .absolute(rmqtt::net::refused_pending_connections());
            }
        });
        stop.await;
        serving.abort();
        refusals.abort();
        let sessions: Vec<_> = {
            let shared = self.scx.extends.shared().await;
            shared.iter().filter_map(|entry| entry.tx()).collect()
        };
        for tx in sessions {
            let _ = tx.unbounded_send(Message::Closed(Reason::from_static("server shutting down")));
        }
        let deadline = tokio::time::Instant::now() + CLOSE_SESSIONS_TIMEOUT;
        while ingest.connected_devices() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Publishes as the platform: trusted, no ACL, through the broker's
/// system forward (as rmqtt's own system-topic messages are).
#[derive(Clone)]
pub struct EmbeddedLink {
    scx: ServerContext,
}

#[async_trait]
impl BrokerLink for EmbeddedLink {
    async fn publish(
        &self,
        topic: &TopicName,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> Result<()> {
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
        let publish = Publish::new(
            Box::new(CodecPublish {
                dup: false,
                retain,
                qos,
                topic: topic.as_str().into(),
                packet_id: None,
                payload,
                properties: None,
            }),
            None,
            None,
            Some(wf_common::now_millis()),
        );
        let from = From::from_system(Id::from(
            self.scx.node.id(),
            ClientId::from_static(PLATFORM_CLIENT_ID),
        ));
        SessionState::forwards(&self.scx, from, publish, false, None)
            .await
            .map_err(|e| Error::Unavailable(format!("the broker did not take the message: {e}")))
    }

    /// The embedded broker asks device-service at CONNECT, so there is no
    /// credential store of its own to keep in step; but a connection made
    /// with a secret that was just replaced, or by a device just deleted,
    /// must not outlive it. The device is disconnected (its session
    /// cleared) and has to connect again with its new secret.
    async fn sync_credentials(&self, device: &DeviceId, _secret: &str) -> Result<()> {
        let id = Id::from(self.scx.node.id(), ClientId::from(device.as_str()));
        let mut entry = self.scx.extends.shared().await.entry(id);
        if !entry.exist() {
            return Ok(());
        }
        entry.kick(true, true, true).await.map_err(|e| {
            Error::Unavailable(format!("the broker could not disconnect the device: {e}"))
        })?;
        metrics::counter!("wf_mqtt_sessions_revoked_total").increment(1);
        tracing::info!(device_id = %device, "device disconnected: its credentials changed");
        Ok(())
    }

    /// In the same process: ready whenever the gateway is.
    fn check_ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Device authentication and the topic ACL.
struct AccessHook {
    authenticator: Arc<dyn DeviceAuthenticator>,
}

impl AccessHook {
    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let will_topic = info.last_will().map(|lw| match lw {
            LastWill::V3(lw) => lw.topic.clone(),
            LastWill::V5(lw) => lw.topic.clone(),
        });
        let req = ConnectRequest {
            client_id: info.client_id(),
            username: info.username().map(|u| &**u),
            password: info.password().map(|p| &p[..]),
            will_topic: will_topic.as_deref(),
        };
        // A request id per CONNECT, forwarded to device-service.
        let request_id = wf_common::telemetry::request_id_from(None);
        let span = tracing::info_span!("mqtt_connect", request_id = %request_id, client_id = %req.client_id);
        let outcome = wf_common::telemetry::with_request_id(
            request_id,
            access::authorize_connect(self.authenticator.as_ref(), req).instrument(span.clone()),
        )
        .await;
        match outcome {
            Ok(_) => AuthResult::Allow(false, None),
            Err(refusal) => {
                metrics::counter!("wf_mqtt_connections_refused_total", "reason" => refusal.reason())
                    .increment(1);
                span.in_scope(|| match &refusal {
                    Refusal::Unavailable(e) => {
                        tracing::warn!(error = %e, "device credentials could not be checked")
                    }
                    Refusal::NotAuthorized(why) => {
                        tracing::info!(reason = why, "connection refused")
                    }
                    Refusal::BadCredentials => {
                        tracing::info!("connection refused: bad credentials")
                    }
                });
                match refusal {
                    Refusal::BadCredentials => AuthResult::BadUsernameOrPassword,
                    Refusal::NotAuthorized(_) | Refusal::Unavailable(_) => {
                        AuthResult::NotAuthorized
                    }
                }
            }
        }
    }
}

/// The device a session belongs to: its client id, checked at CONNECT.
fn session_device(client_id: &str) -> Option<DeviceId> {
    DeviceId::parse(client_id).ok()
}

#[async_trait]
impl Handler for AccessHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                if matches!(
                    acc,
                    Some(HookResult::AuthResult(
                        AuthResult::BadUsernameOrPassword | AuthResult::NotAuthorized
                    ))
                ) {
                    return (false, acc);
                }
                match self.authenticate(info).await {
                    allow @ AuthResult::Allow(..) => (true, Some(HookResult::AuthResult(allow))),
                    refused => (false, Some(HookResult::AuthResult(refused))),
                }
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                if matches!(&acc, Some(HookResult::SubscribeAclResult(r)) if r.failure()) {
                    return (false, acc);
                }
                let allowed = session_device(&session.id.client_id)
                    .is_some_and(|d| may_subscribe(&d, &subscribe.topic_filter));
                if allowed {
                    let granted = SubscribeAclResult::new_success(subscribe.opts.qos(), None);
                    (true, Some(HookResult::SubscribeAclResult(granted)))
                } else {
                    metrics::counter!("wf_mqtt_acl_denied_total", "action" => "subscribe")
                        .increment(1);
                    let refused =
                        SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                    (false, Some(HookResult::SubscribeAclResult(refused)))
                }
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                if matches!(&acc, Some(HookResult::PublishAclResult(r)) if r.is_rejected()) {
                    return (false, acc);
                }
                let allowed = session_device(&session.id.client_id)
                    .is_some_and(|d| may_publish(&d, &publish.topic));
                if allowed {
                    (
                        true,
                        Some(HookResult::PublishAclResult(PublishAclResult::allow())),
                    )
                } else {
                    metrics::counter!("wf_mqtt_acl_denied_total", "action" => "publish")
                        .increment(1);
                    let refused = PublishAclResult::rejected(false, Some("not authorized".into()));
                    (false, Some(HookResult::PublishAclResult(refused)))
                }
            }
            _ => (true, acc),
        }
    }
}

/// Feeds ingest: messages the ACL allowed, last wills, connections.
struct IngestHook {
    ingest: Arc<Ingest>,
}

#[async_trait]
impl Handler for IngestHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::MessagePublishCheckAcl(session, publish) => {
                if !matches!(&acc, Some(HookResult::PublishAclResult(r)) if r.is_allow()) {
                    return (true, acc);
                }
                if publish.qos == QoS::AtMostOnce {
                    self.ingest.accept(
                        &session.id.client_id,
                        &publish.topic,
                        &publish.payload,
                        publish.qos.value(),
                        false,
                    );
                    return (true, acc);
                }
                // The PUBACK (PUBREC) waits until the message is stored;
                // the connection reads on meanwhile. Not stored: the
                // connection is closed without it, and the device sends the
                // message again.
                let device = &session.id.client_id;
                match self
                    .ingest
                    .accept_durable(
                        device,
                        &publish.topic,
                        &publish.payload,
                        publish.qos.value(),
                    )
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(stored)) => {
                        // Reference-counted: no copy per message.
                        let (ingest, device, topic) =
                            (self.ingest.clone(), device.clone(), publish.topic.clone());
                        session.defer_ack(Box::pin(async move {
                            match stored.await {
                                Ok(()) => true,
                                Err(why) => {
                                    ingest.not_stored(&device, &topic, why);
                                    false
                                }
                            }
                        }));
                    }
                    // MQTT 5 devices learn why in the PUBACK's reason code;
                    // MQTT 3.1.1 has no codes: they get a plain PUBACK, and
                    // the refusal is counted and logged.
                    Err(malformed) => {
                        let refused = PublishAclResult(PublishResult::reason_code(
                            puback_reason(malformed),
                            Some(malformed.reason().into()),
                            false,
                        ));
                        return (false, Some(HookResult::PublishAclResult(refused)));
                    }
                }
            }
            Parameter::MessagePublish(_, from, publish)
                if matches!(from.typ(), FromType::LastWill) =>
            {
                self.ingest.accept(
                    &from.id.client_id,
                    &publish.topic,
                    &publish.payload,
                    publish.qos.value(),
                    true,
                );
            }
            Parameter::ClientConnected(session) => self.ingest.connected(&session.id.client_id),
            Parameter::ClientDisconnected(session, _) => {
                self.ingest.disconnected(&session.id.client_id)
            }
            _ => {}
        }
        (true, acc)
    }
}

/// The MQTT 5 PUBACK reason code for a message refused as malformed. MQTT 5
/// has no "packet too large" among PUBACK codes: an oversized payload is
/// answered "quota exceeded".
fn puback_reason(malformed: Malformed) -> PublishAckReason {
    match malformed {
        Malformed::Oversized => PublishAckReason::QuotaExceeded,
        _ => PublishAckReason::PayloadFormatInvalid,
    }
}
