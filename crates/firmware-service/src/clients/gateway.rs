use wf_common::grpc::{InternalChannel, InternalToken};
use wf_proto::mqtt::PublishMessageRequest;
use wf_proto::mqtt::mqtt_gateway_client::MqttGatewayClient;

use super::{call_error, lazy_channel};
use crate::error::Result;

/// mqtt-gateway: how OTA notifications reach devices.
#[derive(Clone)]
pub struct GatewayClient {
    client: MqttGatewayClient<InternalChannel>,
}

impl GatewayClient {
    pub fn new(url: &str, token: &InternalToken) -> Result<Self> {
        Ok(Self {
            client: MqttGatewayClient::new(lazy_channel(url, token)?),
        })
    }

    /// Publishes at QoS 1, not retained.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<()> {
        self.client
            .clone()
            .publish_message(PublishMessageRequest {
                topic,
                payload,
                qos: 1,
                retain: false,
            })
            .await
            .map(|_| ())
            .map_err(|s| call_error("mqtt-gateway", s))
    }
}
