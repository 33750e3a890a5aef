use wf_common::grpc::{InternalChannel, InternalToken};
use wf_proto::mqtt::mqtt_gateway_client::MqttGatewayClient;
use wf_proto::mqtt::{PublishMessageRequest, SyncDeviceCredentialsRequest};

use super::{call_error, lazy_channel};
use crate::error::Result;

/// mqtt-gateway: how commands reach devices, and how an external broker
/// learns device credentials.
pub struct GatewayClient {
    client: MqttGatewayClient<InternalChannel>,
}

impl GatewayClient {
    pub fn new(url: &str, token: &InternalToken) -> Result<Self> {
        Ok(Self {
            client: MqttGatewayClient::new(lazy_channel(url, token)?),
        })
    }

    pub async fn publish(&self, topic: String, payload: Vec<u8>, qos: u32) -> Result<()> {
        self.client
            .clone()
            .publish_message(PublishMessageRequest {
                topic,
                payload,
                qos,
                retain: false,
            })
            .await
            .map(|_| ())
            .map_err(|s| call_error("mqtt-gateway", s))
    }

    /// Tells the gateway a device's new secret (empty: the device is gone).
    pub async fn sync_credentials(&self, device_id: &str, secret: &str) -> Result<()> {
        self.client
            .clone()
            .sync_device_credentials(SyncDeviceCredentialsRequest {
                device_id: device_id.to_string(),
                secret: secret.to_string(),
            })
            .await
            .map(|_| ())
            .map_err(|s| call_error("mqtt-gateway", s))
    }
}
