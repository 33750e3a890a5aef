//! device-service's gRPC API (`wfiot.device.v1.DeviceService`), with
//! grpc.health.v1 and reflection.

use tonic::{Request, Response, Status};
use wf_proto::device::device_service_server::{DeviceService, DeviceServiceServer};
use wf_proto::device::{
    AuthenticateDeviceRequest, AuthenticateDeviceResponse, Device, GetDeviceRequest,
    ListDevicesRequest, ListDevicesResponse,
};

use crate::domain::secret_matches;
use crate::state::AppState;
use crate::store::{DeviceFilter, DeviceRecord, DeviceSort};

/// device-service's gRPC service, for the kit's runner.
pub fn service(state: AppState) -> DeviceServiceServer<DeviceGrpc> {
    DeviceServiceServer::new(DeviceGrpc { state })
}

pub struct DeviceGrpc {
    state: AppState,
}

fn to_proto(d: DeviceRecord) -> Device {
    Device {
        id: d.id,
        name: d.name,
        device_type: d.device_type,
        tags: d.tags,
        owner_id: d.owner_id,
        online: d.online,
        last_seen_at: d.last_seen_at.unwrap_or_default(),
        firmware_version: d.firmware_version,
        metadata_json: d.metadata.to_string(),
        created_at: d.created_at,
    }
}

#[tonic::async_trait]
impl DeviceService for DeviceGrpc {
    async fn get_device(
        &self,
        request: Request<GetDeviceRequest>,
    ) -> Result<Response<Device>, Status> {
        let id = request.into_inner().device_id;
        match self.state.store.get_device(&id).await? {
            Some(d) => Ok(Response::new(to_proto(d))),
            None => Err(Status::not_found(format!("no device with id {id:?}"))),
        }
    }

    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let req = request.into_inner();
        let page = wf_common::grpc::Page::parse(req.page_size, &req.page_token)?;
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let (devices, total) = self
            .state
            .store
            .list_devices(&DeviceFilter {
                ids: req.device_ids,
                tag: non_empty(req.tag.to_ascii_lowercase()),
                device_type: non_empty(req.device_type),
                owner_id: non_empty(req.owner_id),
                sort: DeviceSort::Id,
                limit: page.limit,
                offset: page.offset,
                ..DeviceFilter::default()
            })
            .await?;
        Ok(Response::new(ListDevicesResponse {
            next_page_token: page.next_token(devices.len(), total),
            devices: devices.into_iter().map(to_proto).collect(),
        }))
    }

    async fn authenticate_device(
        &self,
        request: Request<AuthenticateDeviceRequest>,
    ) -> Result<Response<AuthenticateDeviceResponse>, Status> {
        let req = request.into_inner();
        let authenticated = match self.state.store.secret_hash(&req.device_id).await? {
            Some(hash) => secret_matches(&req.secret, &hash),
            None => false,
        };
        metrics::counter!("wf_device_authentications_total", "result" => if authenticated { "ok" } else { "refused" })
            .increment(1);
        Ok(Response::new(AuthenticateDeviceResponse { authenticated }))
    }
}
