use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wf_common::grpc::propagate_request_id;
use wf_proto::mqtt::PublishMessageRequest;
use wf_proto::mqtt::mqtt_gateway_client::MqttGatewayClient;

use super::{call_error, lazy_channel};
use crate::error::Result;

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// mqtt-gateway: how OTA notifications reach devices.
#[derive(Clone)]
pub struct GatewayClient {
    client: MqttGatewayClient<InterceptedService<Channel, Interceptor>>,
}

impl GatewayClient {
    pub fn new(url: &str) -> Result<Self> {
        Ok(Self {
            client: MqttGatewayClient::with_interceptor(
                lazy_channel(url)?,
                propagate_request_id as Interceptor,
            ),
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
