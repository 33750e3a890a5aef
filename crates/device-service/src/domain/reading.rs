//! Telemetry as device-service stores it.

use wf_common::contract::{MetricName, MetricValue};

/// The values one device reported at one time: a row of `device_data` per
/// value. A batch of readings is stored in one transaction
/// ([`crate::store::Store::insert_telemetry`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device_id: String,
    /// When the values were taken (ms since the epoch).
    pub ts: i64,
    pub values: Vec<(MetricName, MetricValue)>,
}
