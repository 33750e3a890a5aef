//! device-service's gRPC clients of other services (the kit's).

pub use wf_common::clients::GatewayClient;
pub use wf_common::permissions::PermissionClient as AuthClient;
