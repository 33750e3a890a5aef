//! The small shared core of the wf-iot services: configuration loading,
//! telemetry (logs, metrics, request ids), the JSON error envelope, JWT
//! signing and verification, database access and graceful shutdown.

pub mod audit;
pub mod caller;
pub mod clients;
pub mod config;
pub mod contract;
pub mod db;
pub mod error;
pub mod events;
pub mod extract;
pub mod grpc;
pub mod http;
pub mod jwt;
pub mod listen;
pub mod net;
pub mod openapi;
pub mod paging;
pub mod permissions;
pub mod random;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;

pub use error::{ApiError, Error};

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats milliseconds since the Unix epoch as RFC 3339 (UTC).
pub fn format_millis(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
