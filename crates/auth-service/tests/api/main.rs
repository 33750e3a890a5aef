//! auth-service over its real protocols: HTTP and gRPC.

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
