//! `TestApp`: mqtt-gateway on free ports with an in-process event bus and a
//! stand-in device-service (a real gRPC server that knows a fixed set of
//! device secrets), plus MQTT device clients and event readers. With
//! `.mosquitto(&server)` the gateway runs against a real Mosquitto instead
//! of its embedded broker, and devices connect to that.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mqtt_gateway::{Application, BrokerMode, Config, MosquittoConfig};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS, SubscribeReasonCode, Transport,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use wf_common::contract::{Event as BusEvent, TelemetryBatch, TelemetryMessage};
use wf_common::events::{BusError, Delivery, EventBus, InProcessBus, Subscription};
use wf_common::shutdown::Shutdown;
use wf_proto::device::device_service_server::{DeviceService, DeviceServiceServer};
use wf_proto::device::{
    AuthenticateDeviceRequest, AuthenticateDeviceResponse, Device, GetDeviceRequest,
    GetShadowRequest, ListDevicesRequest, ListDevicesResponse, Shadow, UpdateDesiredRequest,
};
use wf_proto::mqtt::SyncDeviceCredentialsRequest;
use wf_proto::mqtt::mqtt_gateway_client::MqttGatewayClient;

use crate::mosquitto_server::{ADMIN, ADMIN_PASSWORD, MosquittoServer};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// device-service as far as the gateway uses it: `AuthenticateDevice`
/// against fixed secrets, counting the calls.
pub struct FakeDeviceService {
    secrets: HashMap<String, String>,
    auth_calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl DeviceService for FakeDeviceService {
    async fn get_device(&self, _: Request<GetDeviceRequest>) -> Result<Response<Device>, Status> {
        Err(Status::unimplemented("not needed by mqtt-gateway"))
    }

    async fn list_devices(
        &self,
        _: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        Err(Status::unimplemented("not needed by mqtt-gateway"))
    }

    async fn get_shadow(&self, _: Request<GetShadowRequest>) -> Result<Response<Shadow>, Status> {
        Err(Status::unimplemented("not needed by mqtt-gateway"))
    }

    async fn update_desired(
        &self,
        _: Request<UpdateDesiredRequest>,
    ) -> Result<Response<Shadow>, Status> {
        Err(Status::unimplemented("not needed by mqtt-gateway"))
    }

    async fn authenticate_device(
        &self,
        request: Request<AuthenticateDeviceRequest>,
    ) -> Result<Response<AuthenticateDeviceResponse>, Status> {
        self.auth_calls.fetch_add(1, Ordering::SeqCst);
        let req = request.into_inner();
        let authenticated = self.secrets.get(&req.device_id) == Some(&req.secret);
        Ok(Response::new(AuthenticateDeviceResponse { authenticated }))
    }
}

/// The EMQX hooks' shared secret in tests.
pub const HOOK_SECRET: &str = "test-hook-secret";

pub struct TestApp {
    pub mqtt_port: u16,
    pub ws_port: u16,
    pub http_port: u16,
    pub grpc_port: u16,
    pub internal_token: wf_common::grpc::InternalToken,
    pub bus: Arc<InProcessBus>,
    /// `AuthenticateDevice` calls device-service has answered.
    pub auth_calls: Arc<AtomicUsize>,
    shutdown: Shutdown,
    app: Option<JoinHandle<anyhow::Result<()>>>,
}

pub struct TestAppBuilder {
    config: Config,
    secrets: HashMap<String, String>,
    /// While set, the gateway's publishes to the event bus fail.
    bus_down: Option<Arc<AtomicBool>>,
    /// Wait for `/readyz` before handing the gateway to the test.
    wait_ready: bool,
}

impl TestAppBuilder {
    /// Uses `server` instead of the embedded broker, as its
    /// dynamic-security admin, and waits until the gateway is ready there
    /// (connected, subscribed, provisioned).
    pub fn mosquitto(self, server: &MosquittoServer) -> Self {
        let mut builder = self.mosquitto_port(server.port);
        builder.wait_ready = true;
        builder
    }

    /// Uses a Mosquitto expected on `port`, without waiting for it.
    pub fn mosquitto_port(mut self, port: u16) -> Self {
        self.config.broker = BrokerMode::Mosquitto;
        self.config.mosquitto = MosquittoConfig {
            host: "127.0.0.1".into(),
            port,
            admin_username: ADMIN.into(),
            admin_password: ADMIN_PASSWORD.into(),
            client_id: "wf-iot-gateway/test".into(),
            keep_alive_secs: 5,
            ..MosquittoConfig::default()
        };
        self
    }

    /// The gateway's own MQTT client id at the broker.
    pub fn client_id(mut self, id: &str) -> Self {
        self.config.mosquitto.client_id = id.into();
        self
    }

    /// Whether the gateway keeps Mosquitto's dynamic-security plugin in step.
    pub fn dynsec(mut self, on: bool) -> Self {
        self.config.mosquitto.dynsec = on;
        self
    }

    pub fn admin_password(mut self, password: &str) -> Self {
        self.config.mosquitto.admin_password = password.into();
        self
    }

    /// Keeps the gateway's Mosquitto session across connections, with
    /// device messages acknowledged once their events are on the bus.
    pub fn durable_session(mut self) -> Self {
        self.config.mosquitto.durable_session = true;
        self
    }

    /// The event bus refuses the gateway's publishes while `down` is set
    /// (the test still reads what does get published).
    pub fn bus_down_while(mut self, down: Arc<AtomicBool>) -> Self {
        self.bus_down = Some(down);
        self
    }

    pub fn with_device(mut self, id: &str, secret: &str) -> Self {
        self.secrets.insert(id.into(), secret.into());
        self
    }

    /// The EMQX hooks' shared secret; empty turns the hooks off.
    pub fn hook_secret(mut self, secret: &str) -> Self {
        self.config.hooks.secret = secret.into();
        self
    }

    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.config.max_payload_bytes = n;
        self
    }

    pub fn max_unanswered_connections_per_ip(mut self, n: usize) -> Self {
        self.config.max_unanswered_connections_per_ip = n;
        self
    }

    pub fn connect_timeout_secs(mut self, secs: u64) -> Self {
        self.config.connect_timeout_secs = secs;
        self
    }

    /// Telemetry messages per `device.data.received` event.
    pub fn batch_max_messages(mut self, n: usize) -> Self {
        self.config.batch_max_messages = n;
        self
    }

    pub fn durable_ack_timeout_ms(mut self, ms: u64) -> Self {
        self.config.durable_ack_timeout_ms = ms;
        self
    }

    pub fn broker_heartbeat_secs(mut self, secs: u64) -> Self {
        self.config.broker_heartbeat_secs = secs;
        self
    }

    pub async fn spawn(mut self) -> TestApp {
        wf_common::testing::init_logs();
        let auth_calls = Arc::new(AtomicUsize::new(0));
        let device_service = FakeDeviceService {
            secrets: self.secrets,
            auth_calls: auth_calls.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DeviceServiceServer::new(device_service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        self.config.device_service_url = format!("http://127.0.0.1:{port}");
        let config_broker = self.config.broker;
        let broker_port = self.config.mosquitto.port;

        let bus = Arc::new(InProcessBus::new());
        let app_bus: Arc<dyn EventBus> = match self.bus_down {
            Some(down) => Arc::new(GatedBus {
                inner: bus.clone(),
                down,
            }),
            None => bus.clone(),
        };
        let internal_token = self.config.internal_token.clone();
        let app = Application::build(Arc::new(self.config), app_bus)
            .await
            .expect("mqtt-gateway starts");
        let shutdown = Shutdown::new();
        let mqtt_port = match config_broker {
            BrokerMode::Embedded => app.mqtt_port(),
            BrokerMode::Mosquitto => broker_port,
        };
        let test_app = TestApp {
            mqtt_port,
            ws_port: app.ws_port(),
            http_port: app.http_port(),
            grpc_port: app.grpc_port(),
            internal_token,
            bus,
            auth_calls,
            shutdown: shutdown.clone(),
            app: Some(tokio::spawn(app.run_until_stopped(shutdown.wait()))),
        };
        if self.wait_ready {
            test_app.wait_until_ready().await;
        }
        test_app
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            config: Config {
                host: "127.0.0.1".parse().unwrap(),
                mqtt_port: 0,
                ws_port: 0,
                http_port: 0,
                grpc_port: 0,
                batch_linger_ms: 5,
                hooks: mqtt_gateway::HookConfig {
                    secret: HOOK_SECRET.into(),
                    ..Default::default()
                },
                ..Config::default()
            },
            secrets: HashMap::new(),
            bus_down: None,
            wait_ready: false,
        }
    }

    /// A gateway knowing devices `d1`, `d2` and `d3`, whose secrets are
    /// `s1`, `s2` and `s3`.
    pub async fn spawn() -> Self {
        Self::builder()
            .with_device("d1", "s1")
            .with_device("d2", "s2")
            .with_device("d3", "s3")
            .spawn()
            .await
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A channel to this service's gRPC API carrying the internal token,
    /// as the other services call it.
    pub fn grpc_channel(&self) -> wf_common::grpc::InternalChannel {
        wf_common::grpc::internal_channel(&self.grpc_url(), &self.internal_token).unwrap()
    }

    /// MQTT options for a device connecting over TCP as `id`/`secret`.
    pub fn options(&self, id: &str, secret: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(id, "127.0.0.1", self.mqtt_port);
        opts.set_credentials(id, secret);
        opts.set_keep_alive(Duration::from_secs(5));
        opts
    }

    /// The same over WebSocket.
    pub fn ws_options(&self, id: &str, secret: &str) -> MqttOptions {
        let url = format!("ws://127.0.0.1:{}/mqtt", self.ws_port);
        let mut opts = MqttOptions::new(id, url, self.ws_port);
        opts.set_transport(Transport::Ws);
        opts.set_credentials(id, secret);
        opts
    }

    /// Whether `/readyz` answers 200, and its body.
    pub async fn readiness(&self) -> (bool, serde_json::Value) {
        let resp = reqwest::get(self.http("/readyz")).await.unwrap();
        let ok = resp.status().is_success();
        (ok, resp.json().await.unwrap_or_default())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_until_ready(&self) {
        self.wait_for_readiness(true).await;
    }

    /// Waits until `/readyz` fails; returns what it says is failing.
    pub async fn wait_until_not_ready(&self) -> serde_json::Value {
        self.wait_for_readiness(false).await
    }

    async fn wait_for_readiness(&self, ready: bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + 2 * WAIT;
        loop {
            let (ok, body) = self.readiness().await;
            if ok == ready {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not become {} in time: {body}",
                if ready { "ready" } else { "not ready" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The gateway's gRPC client.
    pub async fn grpc(&self) -> MqttGatewayClient<wf_common::grpc::InternalChannel> {
        MqttGatewayClient::new(self.grpc_channel())
    }

    /// `SyncDeviceCredentials`, as device-service calls it.
    pub async fn sync(&self, id: &str, secret: &str) -> Result<(), Status> {
        self.grpc()
            .await
            .sync_device_credentials(SyncDeviceCredentialsRequest {
                device_id: id.into(),
                secret: secret.into(),
            })
            .await
            .map(|_| ())
    }

    /// Connects device `id` with its secret; panics unless accepted.
    pub async fn device(&self, id: &str, secret: &str) -> TestDevice {
        TestDevice::connect(self.options(id, secret))
            .await
            .unwrap_or_else(|code| panic!("{id} refused: {code:?}"))
    }

    /// Reads events of type `E` (one item per event).
    pub async fn events<E: BusEvent>(&self) -> Events<E> {
        Events::new(self.bus.as_ref(), E::TOPIC, |d| {
            vec![d.decode::<E>().unwrap()]
        })
        .await
    }

    /// Reads `device.data.received`, one item per telemetry message.
    pub async fn telemetry(&self) -> Events<TelemetryMessage> {
        Events::new(self.bus.as_ref(), TelemetryBatch::TOPIC, |d| {
            d.decode::<TelemetryBatch>().unwrap().messages
        })
        .await
    }

    /// The gateway's Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.http("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the gateway and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(app) = self.app.take() {
            tokio::time::timeout(WAIT, app)
                .await
                .expect("the gateway stops in time")
                .expect("the gateway task did not panic")
                .expect("the gateway stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The value of a Prometheus sample, 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A connected MQTT device; its event loop runs in the background.
pub struct TestDevice {
    pub client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Packet>,
    silence: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestDevice {
    /// Connects; `Err` with the CONNACK code when refused.
    pub async fn connect(opts: MqttOptions) -> Result<Self, ConnectReturnCode> {
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        loop {
            match tokio::time::timeout(WAIT, eventloop.poll())
                .await
                .expect("CONNACK in time")
            {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("connecting failed: {e}"),
            }
        }
        let (tx, incoming) = mpsc::unbounded_channel();
        let (silence, silenced) = oneshot::channel();
        let task = tokio::spawn(drive(eventloop, tx, silenced));
        Ok(Self {
            client,
            incoming,
            silence: Some(silence),
            task,
        })
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_qos(topic, payload, QoS::AtLeastOnce).await;
    }

    pub async fn publish_qos(&self, topic: &str, payload: impl Into<Vec<u8>>, qos: QoS) {
        self.client
            .publish(topic, qos, false, payload.into())
            .await
            .expect("publish queued");
    }

    /// The packet id of the next PUBACK within `wait`; other packets are
    /// skipped.
    pub async fn puback_id_within(&mut self, wait: Duration) -> Option<u16> {
        tokio::time::timeout(wait, async {
            loop {
                match self.incoming.recv().await {
                    Some(Packet::PubAck(ack)) => return Some(ack.pkid),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
        .unwrap_or(None)
    }

    /// Whether the broker acknowledges a QoS 1 message (PUBACK) within
    /// `wait`; other packets are skipped.
    pub async fn puback_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async {
            loop {
                match self.incoming.recv().await {
                    Some(Packet::PubAck(_)) => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Subscribes and returns whether the broker granted it.
    pub async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        loop {
            if let Packet::SubAck(ack) = self.next_packet().await {
                return ack
                    .return_codes
                    .iter()
                    .all(|c| !matches!(c, SubscribeReasonCode::Failure));
            }
        }
    }

    /// The next message delivered to this device.
    pub async fn next_message(&mut self) -> rumqttc::Publish {
        loop {
            if let Packet::Publish(p) = self.next_packet().await {
                return p;
            }
        }
    }

    async fn next_packet(&mut self) -> Packet {
        tokio::time::timeout(WAIT, self.incoming.recv())
            .await
            .expect("a packet in time")
            .expect("the connection is open")
    }

    /// Whether the broker closes this connection within the wait (every
    /// packet still on its way is skipped).
    pub async fn closed(&mut self) -> bool {
        tokio::time::timeout(WAIT, async {
            while self.incoming.recv().await.is_some() {}
        })
        .await
        .is_ok()
    }

    /// Sends DISCONNECT and closes the connection.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect queued");
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }

    /// Stops answering (no PINGREQ) while keeping the socket open.
    pub fn go_silent(&mut self) {
        if let Some(s) = self.silence.take() {
            let _ = s.send(());
        }
    }

    /// Drops the socket without a DISCONNECT.
    pub fn drop_connection(self) {
        self.task.abort();
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Packet>,
    mut silenced: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut silenced => {
                // Hold the socket open without reading or pinging.
                std::future::pending::<()>().await;
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(packet)) => {
                    let _ = tx.send(packet);
                }
                // A client closes its socket after DISCONNECT.
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(Event::Outgoing(_)) => {}
                Err(_) => return,
            }
        }
    }
}

/// Options for a device with a last will on its status topic.
pub fn with_will(mut opts: MqttOptions, topic: &str) -> MqttOptions {
    opts.set_last_will(LastWill::new(topic, "offline", QoS::AtLeastOnce, false));
    opts
}

/// An event bus whose publishes fail while `down` is set.
struct GatedBus {
    inner: Arc<InProcessBus>,
    down: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl EventBus for GatedBus {
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("down for the test".into()));
        }
        self.inner.publish(topic, payloads).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(topic, group, consumer).await
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }
}

/// A telemetry message's values, names as strings.
pub fn values(t: &TelemetryMessage) -> Vec<(&str, wf_common::contract::MetricValue)> {
    t.values
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect()
}

/// Reads events of one topic from the bus as one consumer group.
pub struct Events<T> {
    sub: Box<dyn Subscription>,
    /// The items one delivery holds.
    items: fn(&Delivery) -> Vec<T>,
    ready: VecDeque<T>,
}

impl<T> Events<T> {
    async fn new(bus: &dyn EventBus, topic: &str, items: fn(&Delivery) -> Vec<T>) -> Self {
        static GROUPS: AtomicUsize = AtomicUsize::new(0);
        let group = format!("test-{}", GROUPS.fetch_add(1, Ordering::Relaxed));
        Self {
            sub: bus.subscribe(topic, &group, "c").await.unwrap(),
            items,
            ready: VecDeque::new(),
        }
    }

    /// The next item; panics if none comes in time.
    pub async fn next(&mut self) -> T {
        self.next_within(WAIT).await.expect("an event in time")
    }

    /// The next item within `wait`, if any.
    pub async fn next_within(&mut self, wait: Duration) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.ready.is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let batch = self.sub.next(100, left).await.unwrap();
            let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
            for d in &batch {
                self.ready.extend((self.items)(d));
            }
            self.sub.ack(&ids).await.unwrap();
        }
        self.ready.pop_front()
    }
}
