//! device-service's gRPC API (`wfiot.device.v1.DeviceService`), with
//! grpc.health.v1 and reflection.

use tonic::{Request, Response, Status};
use wf_common::contract::{ShadowSection, ShadowSource};
use wf_proto::device::device_service_server::{DeviceService, DeviceServiceServer};
use wf_proto::device::{
    AuthenticateDeviceRequest, AuthenticateDeviceResponse, Device, GetDeviceRequest,
    GetShadowRequest, ListDevicesRequest, ListDevicesResponse, Shadow, UpdateDesiredRequest,
};

use crate::error::Error;
use crate::shadows::{self, Author};

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

fn shadow_to_proto(device_id: String, s: &crate::domain::Shadow) -> Shadow {
    let json = |o: &crate::domain::Object| serde_json::Value::Object(o.clone()).to_string();
    Shadow {
        version: s.version,
        reported_json: json(&s.reported),
        desired_json: json(&s.desired),
        delta_json: json(&s.delta()),
        metadata_json: s.metadata().to_string(),
        updated_at: s.updated_at.unwrap_or_default(),
        device_id,
    }
}

impl DeviceGrpc {
    async fn existing(&self, device_id: &str) -> Result<(), Status> {
        match self.state.store.get_device(device_id).await? {
            Some(_) => Ok(()),
            None => Err(Status::not_found(format!(
                "no device with id {device_id:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl DeviceService for DeviceGrpc {
    async fn get_shadow(
        &self,
        request: Request<GetShadowRequest>,
    ) -> Result<Response<Shadow>, Status> {
        let id = request.into_inner().device_id;
        self.existing(&id).await?;
        let shadow = shadows::load(&self.state, &id).await?;
        Ok(Response::new(shadow_to_proto(id, &shadow)))
    }

    async fn update_desired(
        &self,
        request: Request<UpdateDesiredRequest>,
    ) -> Result<Response<Shadow>, Status> {
        let req = request.into_inner();
        self.existing(&req.device_id).await?;
        let desired: serde_json::Value = serde_json::from_str(&req.desired_json)
            .map_err(|e| Error::Validation(format!("desired_json is not JSON: {e}")))?;
        if req.actor.chars().count() > 128 {
            return Err(Error::Validation("actor is longer than 128 characters".into()).into());
        }
        let actor = (!req.actor.is_empty()).then_some(req.actor.as_str());
        let updated = shadows::update(
            &self.state,
            &req.device_id,
            ShadowSection::Desired,
            &desired,
            Author {
                source: ShadowSource::User,
                actor,
            },
            (req.expected_version != 0).then_some(req.expected_version),
        )
        .await
        .map_err(|f| f.into_error(&shadows::limits(&self.state)))?;
        Ok(Response::new(shadow_to_proto(
            req.device_id,
            &updated.shadow,
        )))
    }

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
