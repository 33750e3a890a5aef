//! api-gateway over real HTTP, in front of the real auth-service and
//! device-service and a recording stand-in for firmware-service.
//!
//! Tests run on a multi-threaded runtime: dropping a MariaDB test database
//! blocks the dropping thread until the services' last transactions end,
//! and those need a thread of their own to end on.

#![allow(clippy::unwrap_used)]

mod helpers;

mod console;
mod cors;
mod limits;
mod proxy;
mod streams;
mod tokens;
