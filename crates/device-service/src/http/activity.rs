//! The fleet's activity over time, for dashboards: per time bucket, the
//! telemetry messages stored, the devices online and the commands sent and
//! how they ended, over the devices the caller may see.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use wf_common::error::ErrorEnvelope;
use wf_common::extract::Query;
use wf_common::permissions::Scope;

use crate::domain::{ActivityParams, ActivitySpec, online_per_bucket};
use crate::error::{Error, Result};
use crate::state::{AppState, Caller, Permission};
use crate::store::CommandCounts;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// RFC 3339 or milliseconds since the epoch; default one hour before
    /// `to`. At most 31 days before `to`.
    from: Option<String>,
    /// RFC 3339 or milliseconds since the epoch; default now.
    to: Option<String>,
    /// Bucket width, whole minutes (`1m`, `5m`, `1h`), the resolution at
    /// which messages are counted; default the range in 60 buckets. At most
    /// 1440 buckets.
    interval: Option<String>,
}

/// One time bucket.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActivityBucket {
    /// Start of the bucket (ms since the epoch).
    ts: i64,
    /// Telemetry messages stored with a timestamp in the bucket (one
    /// device's values at one time, however many metrics).
    messages: i64,
    /// Devices online at the end of the bucket (at `to` for the last one),
    /// from their status history.
    online: i64,
    /// Commands created in the bucket, by the status they have now.
    commands: CommandCounts,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Activity {
    from: i64,
    to: i64,
    interval_ms: i64,
    /// `fleet` when every device counts, `own` when only the caller's.
    scope: Scope,
    /// Every bucket from the one holding `from` to the one holding `to`,
    /// oldest first, empty ones included.
    buckets: Vec<ActivityBucket>,
}

/// The fleet's activity over time: per bucket, telemetry messages, devices
/// online and commands by outcome, for every device the caller may see
/// (all devices for a role of scope fleet, their own for scope own).
#[utoipa::path(get, path = "/api/v1/devices/activity", tag = "devices", security(("bearer" = [])), params(ActivityQuery),
    responses((status = 200, body = Activity),
        (status = 422, description = "A bad time or interval, from not before to, a range over 31 days, an interval that is not a whole number of minutes, or more than 1440 buckets", body = ErrorEnvelope)))]
pub async fn activity(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ActivityQuery>,
) -> Result<Json<Activity>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    let spec = ActivitySpec::parse(
        ActivityParams {
            from: q.from.as_deref(),
            to: q.to.as_deref(),
            interval: q.interval.as_deref(),
        },
        wf_common::now_millis(),
    )
    .map_err(Error::Validation)?;
    let owner = access.owner_filter();
    let (start, to, width) = (spec.start(), spec.to, spec.interval_ms);
    let store = &state.store;
    let (messages, initially, changes, commands) = tokio::try_join!(
        store.messages_per_bucket(owner, start, to, width),
        store.online_before(owner, start),
        store.status_changes(owner, start, to),
        store.commands_per_bucket(owner, start, to, width),
    )?;
    let online = online_per_bucket(spec, initially, &changes);
    let mut buckets: Vec<ActivityBucket> = spec
        .bucket_starts()
        .zip(online)
        .map(|(ts, online)| ActivityBucket {
            ts,
            messages: 0,
            online,
            commands: CommandCounts::default(),
        })
        .collect();
    for (ts, n) in messages {
        if let Some(b) = spec.bucket_of(ts).and_then(|i| buckets.get_mut(i)) {
            b.messages = n;
        }
    }
    for (ts, counts) in commands {
        if let Some(b) = spec.bucket_of(ts).and_then(|i| buckets.get_mut(i)) {
            b.commands = counts;
        }
    }
    Ok(Json(Activity {
        from: spec.from,
        to: spec.to,
        interval_ms: width,
        scope: access.scope,
        buckets,
    }))
}
