//! firmware-service's gRPC API (`wfiot.firmware.v1.FirmwareService`), with
//! grpc.health.v1 and reflection.

use tonic::{Request, Response, Status};
use wf_proto::firmware::firmware_service_server::{FirmwareService, FirmwareServiceServer};
use wf_proto::firmware::{
    Execution, Firmware, GetFirmwareRequest, GetRolloutRequest, ListDeviceExecutionsRequest,
    ListDeviceExecutionsResponse, ListFirmwareRequest, ListFirmwareResponse, Rollout, StateCount,
};

use crate::state::AppState;
use crate::store::FirmwareRecord;

/// firmware-service's gRPC service, for the kit's runner.
pub fn service(state: AppState) -> FirmwareServiceServer<FirmwareGrpc> {
    FirmwareServiceServer::new(FirmwareGrpc { state })
}

pub struct FirmwareGrpc {
    state: AppState,
}

fn to_proto(f: FirmwareRecord) -> Firmware {
    Firmware {
        signed: f.signature.is_some(),
        id: f.id,
        name: f.name,
        device_type: f.device_type,
        version: f.version,
        size: u64::try_from(f.size).unwrap_or_default(),
        sha256: f.sha256,
        release_notes: f.release_notes,
        created_at: f.created_at,
    }
}

#[tonic::async_trait]
impl FirmwareService for FirmwareGrpc {
    async fn get_firmware(
        &self,
        request: Request<GetFirmwareRequest>,
    ) -> Result<Response<Firmware>, Status> {
        let id = request.into_inner().firmware_id;
        match self.state.store.get_firmware(&id).await? {
            Some(f) => Ok(Response::new(to_proto(f))),
            None => Err(Status::not_found(format!("no firmware with id {id:?}"))),
        }
    }

    async fn list_firmware(
        &self,
        request: Request<ListFirmwareRequest>,
    ) -> Result<Response<ListFirmwareResponse>, Status> {
        let req = request.into_inner();
        let page = wf_common::grpc::Page::parse(req.page_size, &req.page_token)?;
        let device_type = (!req.device_type.is_empty()).then_some(req.device_type);
        let (items, total) = self
            .state
            .store
            .list_firmware(device_type.as_deref(), page.limit, page.offset)
            .await?;
        Ok(Response::new(ListFirmwareResponse {
            next_page_token: page.next_token(items.len(), total),
            firmware: items.into_iter().map(to_proto).collect(),
        }))
    }

    async fn get_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let id = request.into_inner().rollout_id;
        let Some(r) = self.state.store.get_rollout(&id).await? else {
            return Err(Status::not_found(format!("no rollout with id {id:?}")));
        };
        let counts = self.state.store.counts(&id).await?;
        Ok(Response::new(Rollout {
            id: r.id,
            kind: r.kind,
            name: r.name,
            firmware_id: r.firmware_id,
            firmware_version: r.firmware_version,
            state: r.state.as_str().to_string(),
            reason: r.reason.unwrap_or_default(),
            counts: counts
                .iter()
                .map(|(s, n)| StateCount {
                    state: s.as_str().to_string(),
                    count: n,
                })
                .collect(),
            total: counts.total(),
            created_at: r.created_at,
            started_at: r.started_at.unwrap_or_default(),
            finished_at: r.finished_at.unwrap_or_default(),
        }))
    }

    async fn list_device_executions(
        &self,
        request: Request<ListDeviceExecutionsRequest>,
    ) -> Result<Response<ListDeviceExecutionsResponse>, Status> {
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 20,
            n => i64::from(n.min(100)),
        };
        let tasks = self.state.store.device_tasks(&req.device_id, limit).await?;
        let mut executions = Vec::with_capacity(tasks.len());
        for t in tasks {
            let rollout = self.state.store.get_rollout(&t.rollout_id).await?;
            let (firmware_id, firmware_version) = rollout
                .map(|r| (r.firmware_id, r.firmware_version))
                .unwrap_or_default();
            executions.push(Execution {
                id: t.id,
                rollout_id: t.rollout_id,
                device_id: t.device_id,
                firmware_id,
                firmware_version,
                state: t.state.as_str().to_string(),
                attempts: u32::try_from(t.attempts).unwrap_or_default(),
                progress: t.progress.unwrap_or_default(),
                error: t.error.unwrap_or_default(),
                updated_at: t.updated_at,
            });
        }
        Ok(Response::new(ListDeviceExecutionsResponse { executions }))
    }
}
