//! Generated gRPC code for the wf-iot services.

#![allow(clippy::all, clippy::unwrap_used)]

/// The encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wf_iot_descriptor.bin"));

pub mod auth {
    tonic::include_proto!("wfiot.auth.v1");
}

pub mod device {
    tonic::include_proto!("wfiot.device.v1");
}

pub mod firmware {
    tonic::include_proto!("wfiot.firmware.v1");
}

pub mod mqtt {
    tonic::include_proto!("wfiot.mqtt.v1");
}
