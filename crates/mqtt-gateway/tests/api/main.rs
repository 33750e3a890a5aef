//! mqtt-gateway over its real protocols: MQTT (TCP and WebSocket), gRPC and
//! HTTP, with events read back from the bus.

// A failed unwrap is how a test says what went wrong.
#![allow(clippy::unwrap_used)]

mod helpers;

mod connect;
mod grpc;
mod hooks;
mod ingest;
mod status;
