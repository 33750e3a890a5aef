//! What the gateway's handlers share.

use std::sync::Arc;

use bytes::Bytes;
use wf_common::events::EventBus;

use crate::Config;
use crate::broker::BrokerLink;
use crate::clients::DeviceAuthenticator;
use crate::domain::{Route, TopicName};
use crate::error::{Error, Result};
use crate::uplink::Ingest;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub authenticator: Arc<dyn DeviceAuthenticator>,
    pub ingest: Arc<Ingest>,
    pub broker: Arc<dyn BrokerLink>,
    pub bus: Arc<dyn EventBus>,
}

impl AppState {
    /// Publishes on behalf of the platform, to device topics only
    /// (`devices/{id}/...`), and not on those the devices themselves
    /// publish on (telemetry, status, ...): a message there would pass for
    /// the device's own (with an external broker it would even come back
    /// through the gateway's subscriptions as if the device had sent it).
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: u32, retain: bool) -> Result<()> {
        let topic = TopicName::parse(topic).map_err(Error::BadRequest)?;
        let Some((_, suffix)) = topic.device_topic() else {
            return Err(Error::BadRequest(format!(
                "\"{topic}\" is not a device topic (devices/{{id}}/...)"
            )));
        };
        if Route::of(suffix).is_upstream() {
            return Err(Error::BadRequest(format!(
                "\"{topic}\" is a topic the device publishes on; the platform may not"
            )));
        }
        let qos = u8::try_from(qos)
            .ok()
            .filter(|q| *q <= 2)
            .ok_or_else(|| Error::BadRequest(format!("qos must be 0, 1 or 2, not {qos}")))?;
        if payload.len() > self.config.max_payload_bytes {
            return Err(Error::BadRequest(format!(
                "the payload has {} bytes; at most {} are accepted",
                payload.len(),
                self.config.max_payload_bytes
            )));
        }
        self.broker.publish(&topic, payload, qos, retain).await?;
        metrics::counter!("wf_mqtt_platform_messages_published_total").increment(1);
        Ok(())
    }
}
