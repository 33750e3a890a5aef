//! firmware-service and its worker over their real protocols: HTTP, gRPC
//! and events, beside the real auth-service and device-service.

// Integration tests fail loudly on purpose: `unwrap` is their assertion.
#![allow(clippy::unwrap_used)]

mod helpers;

mod firmware;
mod openapi;
mod ownership;
mod permissions;
mod rollouts;
mod schema;
mod worker;
