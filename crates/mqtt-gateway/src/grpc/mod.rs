//! mqtt-gateway's gRPC API (`wfiot.mqtt.v1.MqttGateway`), with
//! grpc.health.v1 and reflection.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use wf_common::shutdown::Shutdown;
use wf_proto::mqtt::mqtt_gateway_server::{MqttGateway, MqttGatewayServer};
use wf_proto::mqtt::{
    MqttMessage, PublishMessageRequest, PublishMessageResponse, SubscribeTopicRequest,
    SyncDeviceCredentialsRequest, SyncDeviceCredentialsResponse,
};

use crate::domain::{DeviceId, TopicFilter};
use crate::error::Error;
use crate::state::AppState;
use crate::uplink::DeviceMessage;

/// Messages buffered per `SubscribeTopic` stream towards its client.
const STREAM_BUFFER: usize = 256;

/// mqtt-gateway's gRPC service, for the kit's runner; open
/// `SubscribeTopic` streams end when `stop` is triggered.
pub fn service(state: AppState, stop: Shutdown) -> MqttGatewayServer<MqttGrpc> {
    MqttGatewayServer::new(MqttGrpc { state, stop })
}

pub struct MqttGrpc {
    state: AppState,
    stop: Shutdown,
}

#[tonic::async_trait]
impl MqttGateway for MqttGrpc {
    async fn publish_message(
        &self,
        request: Request<PublishMessageRequest>,
    ) -> Result<Response<PublishMessageResponse>, Status> {
        let req = request.into_inner();
        self.state
            .publish(&req.topic, req.payload.into(), req.qos, req.retain)
            .await?;
        Ok(Response::new(PublishMessageResponse {}))
    }

    type SubscribeTopicStream = ReceiverStream<Result<MqttMessage, Status>>;

    async fn subscribe_topic(
        &self,
        request: Request<SubscribeTopicRequest>,
    ) -> Result<Response<Self::SubscribeTopicStream>, Status> {
        let filter =
            TopicFilter::parse(&request.into_inner().topic_filter).map_err(Error::BadRequest)?;
        let feed = self.state.ingest.feed();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(relay(filter, feed, tx, self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn sync_device_credentials(
        &self,
        request: Request<SyncDeviceCredentialsRequest>,
    ) -> Result<Response<SyncDeviceCredentialsResponse>, Status> {
        // Remembered authentications (embedded broker, EMQX hooks) are
        // dropped so the new secret counts at once; an external broker's
        // own credential store is updated (Mosquitto dynamic security).
        let req = request.into_inner();
        let device = DeviceId::parse(&req.device_id).map_err(Error::BadRequest)?;
        self.state.authenticator.forget(device.as_str());
        self.state
            .broker
            .sync_credentials(&device, &req.secret)
            .await?;
        Ok(Response::new(SyncDeviceCredentialsResponse {}))
    }
}

/// Copies the feed's messages matching `filter` to one stream until its
/// client goes away or the gateway stops. A stream that falls behind is
/// ended with RESOURCE_EXHAUSTED rather than silently missing messages.
async fn relay(
    filter: TopicFilter,
    mut feed: broadcast::Receiver<Arc<DeviceMessage>>,
    tx: mpsc::Sender<Result<MqttMessage, Status>>,
    stop: Shutdown,
) {
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            () = tx.closed() => return,
            () = &mut stopped => {
                let _ = tx.try_send(Err(Status::unavailable("the gateway is shutting down")));
                return;
            }
            msg = feed.recv() => match msg {
                Ok(m) if filter.matches(&m.topic) => Ok(MqttMessage {
                    topic: m.topic.clone(),
                    payload: m.payload.to_vec(),
                    qos: u32::from(m.qos),
                    received_at: m.received_at,
                }),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(skipped)) => Err(Status::resource_exhausted(
                    format!("this subscriber fell behind and {skipped} messages were skipped; subscribe again"),
                )),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let last = item.is_err();
        tokio::select! {
            sent = tx.send(item) => if sent.is_err() { return },
            () = &mut stopped => return,
        }
        if last {
            return;
        }
    }
}
