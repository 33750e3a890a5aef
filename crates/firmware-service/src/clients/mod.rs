//! firmware-service's gRPC clients of other services. The shape follows
//! device-service's clients (lazy channels, request ids forwarded).

mod device;
mod gateway;

pub use device::{DeviceClient, DeviceInfo, DeviceQuery, MAX_TARGETS};
pub use gateway::GatewayClient;
pub use wf_common::permissions::PermissionClient as AuthClient;

use wf_common::grpc::{InternalChannel, InternalToken};

use crate::error::{Error, Result};

/// A lazily connecting channel, so services can start in any order, whose
/// calls carry the internal token.
fn lazy_channel(url: &str, token: &InternalToken) -> Result<InternalChannel> {
    Ok(wf_common::grpc::internal_channel(url, token)?)
}

/// Maps a failed call to another service: unreachable → `Unavailable`.
pub(crate) fn call_error(service: &str, status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::NotFound => Error::NotFound(status.message().to_string()),
        tonic::Code::InvalidArgument => Error::Validation(status.message().to_string()),
        _ => Error::Unavailable(format!("{service}: {}", status.message())),
    }
}
