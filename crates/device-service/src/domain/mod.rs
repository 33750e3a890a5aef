//! Device-domain types and rules, free of I/O.

mod activity;
mod command;
mod device;
mod reading;
mod series;
mod shadow;

pub use activity::{ActivityParams, ActivitySpec, StatusChange, online_per_bucket};
pub use command::{CommandName, CommandStatus};
pub use device::{DeviceId, DeviceSecret, Tag, normalize_tags, secret_matches};
pub use reading::Reading;
pub use series::{Aggregation, Interval, SeriesParams, SeriesShape, SeriesSpec};
pub use shadow::{
    MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES, Object, Refusal, Shadow, ShadowLimits,
    attribute_filter_forms, check_attribute_name, converged, same,
};
