use wf_common::grpc::{InternalChannel, InternalToken};
use wf_proto::device::device_service_client::DeviceServiceClient;
use wf_proto::device::{AuthenticateDeviceRequest, Device, GetDeviceRequest, ListDevicesRequest};

use crate::error::{Error, Result};
use wf_common::grpc::{call_error, internal_channel};

/// Devices per page when resolving a rollout's targets.
const PAGE: u32 = 1000;
/// The most devices one rollout may target.
pub const MAX_TARGETS: usize = 100_000;

/// What firmware-service needs to know about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: String,
    pub device_type: String,
    pub firmware_version: String,
}

impl From<Device> for DeviceInfo {
    fn from(d: Device) -> Self {
        Self {
            id: d.id,
            device_type: d.device_type,
            firmware_version: d.firmware_version,
        }
    }
}

/// A ListDevices filter; empty fields match any device.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub ids: Vec<String>,
    pub tag: String,
    pub device_type: String,
    /// Only this owner's devices (device-service's visibility rule for a
    /// caller who is not an admin); `None` for every owner.
    pub owner_id: Option<String>,
}

/// device-service: the registry rollouts are resolved against, and device
/// credentials for downloads.
pub struct DeviceClient {
    client: DeviceServiceClient<InternalChannel>,
}

impl DeviceClient {
    pub fn new(url: &str, token: &InternalToken) -> Result<Self> {
        Ok(Self {
            client: DeviceServiceClient::new(internal_channel(url, token)?),
        })
    }

    pub async fn get(&self, id: &str) -> Result<Option<DeviceInfo>> {
        match self
            .client
            .clone()
            .get_device(GetDeviceRequest {
                device_id: id.to_string(),
            })
            .await
        {
            Ok(d) => Ok(Some(d.into_inner().into())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(call_error("device-service", s)),
        }
    }

    /// Every device matching `query`, following the pages.
    pub async fn list_all(&self, query: &DeviceQuery) -> Result<Vec<DeviceInfo>> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        // Explicit ids go in slices so one request stays small.
        let id_slices: Vec<Vec<String>> = if query.ids.is_empty() {
            vec![Vec::new()]
        } else {
            query
                .ids
                .chunks(PAGE as usize)
                .map(<[String]>::to_vec)
                .collect()
        };
        for ids in id_slices {
            loop {
                let page = self
                    .client
                    .clone()
                    .list_devices(ListDevicesRequest {
                        device_ids: ids.clone(),
                        tag: query.tag.clone(),
                        device_type: query.device_type.clone(),
                        owner_id: query.owner_id.clone().unwrap_or_default(),
                        page_size: PAGE,
                        page_token: std::mem::take(&mut page_token),
                    })
                    .await
                    .map_err(|s| call_error("device-service", s))?
                    .into_inner();
                out.extend(page.devices.into_iter().map(DeviceInfo::from));
                if out.len() > MAX_TARGETS {
                    return Err(Error::Validation(format!(
                        "a rollout targets at most {MAX_TARGETS} devices"
                    )));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        Ok(out)
    }

    /// Checks a device's id and secret.
    pub async fn authenticate(&self, device_id: &str, secret: &str) -> Result<bool> {
        self.client
            .clone()
            .authenticate_device(AuthenticateDeviceRequest {
                device_id: device_id.to_string(),
                secret: secret.to_string(),
            })
            .await
            .map(|r| r.into_inner().authenticated)
            .map_err(|s| call_error("device-service", s))
    }
}
