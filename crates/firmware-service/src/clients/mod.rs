//! firmware-service's gRPC clients of other services: the kit's, and
//! device-service's registry.

mod device;

pub use device::{DeviceClient, DeviceInfo, DeviceQuery, MAX_TARGETS};
pub use wf_common::clients::GatewayClient;
pub use wf_common::permissions::PermissionClient as AuthClient;
