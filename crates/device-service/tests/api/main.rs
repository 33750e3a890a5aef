//! device-service over its real protocols: HTTP, gRPC and events.

// Integration tests fail loudly on purpose: `unwrap` is their assertion.
#![allow(clippy::unwrap_used)]

mod helpers;

mod activity;
mod commands;
mod devices;
mod shadow;
mod telemetry;
