//! device-service answers with the service kit's error: one HTTP and one
//! gRPC mapping for every service ([`wf_common::error::Error`]).

pub use wf_common::error::{Error, Result};
