//! Clients of the services that several others call, built on
//! [`crate::grpc::internal_channel`] (lazy, carrying the internal token and
//! the request id) and mapping failures with [`crate::grpc::call_error`].

use wf_proto::mqtt::mqtt_gateway_client::MqttGatewayClient;
use wf_proto::mqtt::{PublishMessageRequest, SyncDeviceCredentialsRequest};

use crate::error::Result;
use crate::grpc::{InternalChannel, InternalToken, call_error, internal_channel};

/// mqtt-gateway: how commands and OTA notifications reach devices, and how
/// an external broker learns device credentials.
#[derive(Clone)]
pub struct GatewayClient {
    client: MqttGatewayClient<InternalChannel>,
}

impl GatewayClient {
    /// mqtt-gateway's gRPC `url`, connected on first use.
    pub fn new(url: &str, token: &InternalToken) -> Result<Self> {
        Ok(Self {
            client: MqttGatewayClient::new(internal_channel(url, token)?),
        })
    }

    /// Publishes `payload` on `topic` at `qos`, not retained.
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
