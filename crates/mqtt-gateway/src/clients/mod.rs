//! The gateway's clients of other services.

pub mod device;

pub use device::{DeviceAuthenticator, DeviceServiceAuthenticator};
