//! auth-service over its real protocols: HTTP and gRPC.

// Integration tests fail loudly on purpose: `unwrap` is their assertion.
#![allow(clippy::unwrap_used)]

mod helpers;

mod access;
mod audit;
mod auth;
mod flood;
mod grpc;
mod migrations;
mod permissions;
mod roles;
mod tokens;
mod users;
