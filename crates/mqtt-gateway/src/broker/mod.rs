//! The MQTT broker devices talk to, in one of two modes (`broker` in the
//! configuration):
//!
//! - [`embedded`]: rmqtt inside the gateway, with device authentication
//!   and the topic ACL hooked in; the gateway binds the MQTT listeners.
//! - [`mosquitto`]: an external Mosquitto that authenticates devices and
//!   enforces their ACLs itself (its dynamic-security plugin, kept in step
//!   by the gateway); the gateway is one of its clients and binds no MQTT
//!   listener.
//!
//! Either way every device message the broker accepted reaches the same
//! [`Ingest`] (decode, route, batch to the event
//! bus, live feed), and the platform's own publishes and credential
//! changes go through a [`BrokerLink`].

pub mod dynsec;
pub mod embedded;
pub mod mosquitto;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::domain::{DeviceId, TopicName};
use crate::error::Result;
use crate::uplink::Ingest;

/// The platform's trusted path into the broker.
#[async_trait]
pub trait BrokerLink: Send + Sync + 'static {
    /// Publishes on behalf of the platform; the topic has been checked to
    /// be one of a device's downstream topics.
    async fn publish(&self, topic: &TopicName, payload: Bytes, qos: u8, retain: bool)
    -> Result<()>;

    /// Keeps the broker's own credential store in step with the registry:
    /// `secret` is the device's new secret, empty when the device is gone.
    async fn sync_credentials(&self, device: &DeviceId, secret: &str) -> Result<()>;

    /// For `/readyz`: `Err` with the reason while the broker cannot be used.
    fn check_ready(&self) -> Result<(), String>;
}

/// The broker side of a built gateway.
pub enum Backend {
    Embedded(embedded::EmbeddedBroker),
    /// Boxed: the client's event loop is large and lives once per process.
    Mosquitto(Box<mosquitto::Bridge>),
}

impl Backend {
    pub fn link(&self) -> Arc<dyn BrokerLink> {
        match self {
            Self::Embedded(broker) => Arc::new(broker.link()),
            Self::Mosquitto(bridge) => bridge.link(),
        }
    }

    /// The bound MQTT port; 0 with an external broker.
    pub fn mqtt_port(&self) -> u16 {
        match self {
            Self::Embedded(broker) => broker.mqtt_port(),
            Self::Mosquitto(_) => 0,
        }
    }

    /// The bound MQTT over WebSocket port; 0 when disabled or with an
    /// external broker.
    pub fn ws_port(&self) -> u16 {
        match self {
            Self::Embedded(broker) => broker.ws_port(),
            Self::Mosquitto(_) => 0,
        }
    }

    /// Carries device traffic into `ingest` until `stop` resolves, then
    /// winds down (embedded: closes the devices' sessions; external:
    /// disconnects from the broker).
    pub async fn run(self, ingest: Arc<Ingest>, stop: impl Future<Output = ()>) {
        match self {
            Self::Embedded(broker) => broker.run(ingest, stop).await,
            Self::Mosquitto(bridge) => bridge.run(ingest, stop).await,
        }
    }
}
