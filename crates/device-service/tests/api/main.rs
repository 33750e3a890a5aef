//! device-service over its real protocols: HTTP, gRPC and events.

mod helpers;

mod commands;
mod devices;
mod telemetry;
