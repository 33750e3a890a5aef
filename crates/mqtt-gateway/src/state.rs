//! What the gateway's handlers share.

use std::sync::Arc;

use bytes::Bytes;
use wf_common::events::EventBus;

use crate::Config;
use crate::broker::Platform;
use crate::clients::DeviceAuthenticator;
use crate::domain::TopicName;
use crate::error::{Error, Result};
use crate::ingest::Ingest;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub authenticator: Arc<dyn DeviceAuthenticator>,
    pub ingest: Arc<Ingest>,
    pub platform: Platform,
    pub bus: Arc<dyn EventBus>,
}

impl AppState {
    /// Publishes on behalf of the platform, to device topics only
    /// (`devices/{id}/...`).
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: u32, retain: bool) -> Result<()> {
        let topic = TopicName::parse(topic).map_err(Error::InvalidArgument)?;
        if topic.device_topic().is_none() {
            return Err(Error::InvalidArgument(format!(
                "\"{topic}\" is not a device topic (devices/{{id}}/...)"
            )));
        }
        let qos = u8::try_from(qos)
            .ok()
            .filter(|q| *q <= 2)
            .ok_or_else(|| Error::InvalidArgument(format!("qos must be 0, 1 or 2, not {qos}")))?;
        if payload.len() > self.config.max_payload_bytes {
            return Err(Error::InvalidArgument(format!(
                "the payload has {} bytes; at most {} are accepted",
                payload.len(),
                self.config.max_payload_bytes
            )));
        }
        self.platform.publish(&topic, payload, qos, retain).await?;
        metrics::counter!("wf_mqtt_platform_messages_published_total").increment(1);
        Ok(())
    }
}
