//! mqtt-gateway over its real protocols: MQTT (TCP and WebSocket), gRPC and
//! HTTP, with events read back from the bus; with its embedded broker, and
//! against a real Mosquitto (`external_broker`).

// A failed unwrap is how a test says what went wrong.
#![allow(clippy::unwrap_used)]

mod helpers;
mod mosquitto_server;

mod connect;
mod external_broker;
mod grpc;
mod hooks;
mod shadow;
mod status;
mod uplink;
