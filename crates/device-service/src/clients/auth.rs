use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wf_common::grpc::propagate_request_id;
use wf_common::permissions::PermissionCache;
use wf_proto::auth::CheckPermissionRequest;
use wf_proto::auth::auth_service_client::AuthServiceClient;

use super::{call_error, lazy_channel};
use crate::error::Result;

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// Asks auth-service whether a user holds a permission, remembering answers
/// for a short time (in the process, and in Redis when one is configured) so
/// a hot endpoint does not pay a round trip per request.
pub struct AuthClient {
    client: AuthServiceClient<InterceptedService<Channel, Interceptor>>,
    cache: PermissionCache,
}

impl AuthClient {
    /// `redis_url` empty: answers are kept in the process only.
    pub async fn new(url: &str, ttl: Duration, redis_url: &str) -> Result<Self> {
        let channel = lazy_channel(url)?;
        let mut cache = PermissionCache::new(ttl);
        if !redis_url.trim().is_empty() {
            cache = cache.with_redis(redis_url, "wf-iot:").await;
        }
        Ok(Self {
            client: AuthServiceClient::with_interceptor(
                channel,
                propagate_request_id as Interceptor,
            ),
            cache,
        })
    }

    pub async fn check_permission(&self, user_id: &str, permission: &str) -> Result<bool> {
        self.cache
            .check(user_id, permission, || async {
                let answer = self
                    .client
                    .clone()
                    .check_permission(CheckPermissionRequest {
                        user_id: user_id.to_string(),
                        permission: permission.to_string(),
                    })
                    .await;
                match answer {
                    Ok(r) => Ok(r.into_inner().allowed),
                    // A user auth-service does not know holds nothing.
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                    Err(s) => Err(call_error("auth-service", s)),
                }
            })
            .await
    }
}
