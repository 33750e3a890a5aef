use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wf_common::grpc::propagate_request_id;
use wf_proto::auth::CheckPermissionRequest;
use wf_proto::auth::auth_service_client::AuthServiceClient;

use super::{call_error, lazy_channel};
use crate::error::Result;

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// Above this many cached answers, expired ones are swept.
const SWEEP_ABOVE: usize = 10_000;

/// Asks auth-service whether a user holds a permission, remembering answers
/// for a short time so a hot endpoint does not pay a round trip per request.
pub struct AuthClient {
    client: AuthServiceClient<InterceptedService<Channel, Interceptor>>,
    cache: Mutex<HashMap<(String, String), (bool, Instant)>>,
    ttl: Duration,
}

impl AuthClient {
    pub fn new(url: &str, ttl: Duration) -> Result<Self> {
        let channel = lazy_channel(url)?;
        Ok(Self {
            client: AuthServiceClient::with_interceptor(
                channel,
                propagate_request_id as Interceptor,
            ),
            cache: Mutex::new(HashMap::new()),
            ttl,
        })
    }

    pub async fn check_permission(&self, user_id: &str, permission: &str) -> Result<bool> {
        let key = (user_id.to_string(), permission.to_string());
        if let Ok(cache) = self.cache.lock()
            && let Some((allowed, at)) = cache.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(*allowed);
        }
        let allowed = self
            .client
            .clone()
            .check_permission(CheckPermissionRequest {
                user_id: user_id.to_string(),
                permission: permission.to_string(),
            })
            .await
            .map(|r| r.into_inner().allowed);
        let allowed = match allowed {
            Ok(a) => a,
            // A user auth-service does not know holds nothing.
            Err(s) if s.code() == tonic::Code::NotFound => false,
            Err(s) => return Err(call_error("auth-service", s)),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > SWEEP_ABOVE {
                let ttl = self.ttl;
                cache.retain(|_, (_, at)| at.elapsed() < ttl);
            }
            cache.insert(key, (allowed, Instant::now()));
        }
        Ok(allowed)
    }
}
