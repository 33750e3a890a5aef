//! auth-service over its real protocols: HTTP and gRPC.

mod helpers;

mod auth;
mod grpc;
mod migrations;
mod permissions;
mod roles;
mod tokens;
mod users;
