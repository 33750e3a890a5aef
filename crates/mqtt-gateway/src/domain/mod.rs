//! Types and rules with no I/O: device ids, topics and their access rule,
//! and the decoding of device messages into events.

pub mod message;
pub mod topic;

pub use message::{Decoded, Incoming, Malformed, Route, decode};
pub use topic::{DeviceId, TopicFilter, TopicName, may_publish, may_subscribe};
