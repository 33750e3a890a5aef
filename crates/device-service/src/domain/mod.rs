//! Device-domain types and rules, free of I/O.

mod command;
mod device;
mod series;

pub use command::{CommandName, CommandStatus};
pub use device::{DeviceId, DeviceSecret, Tag, normalize_tags, secret_matches};
pub use series::{Aggregation, Interval, MetricName, SeriesParams, SeriesShape, SeriesSpec};
