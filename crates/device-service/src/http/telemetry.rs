//! Telemetry queries: the latest value of every metric, and a series of one
//! metric over a time range, raw or bucketed and aggregated.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{Path, Query};

use crate::domain::{SeriesParams, SeriesShape, SeriesSpec};
use crate::error::{Error, Result};
use crate::state::{AppState, Caller, Permission};
use crate::store::{Bucket, LatestValue, RawPoint};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Latest {
    device_id: String,
    values: Vec<LatestValue>,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry/latest", tag = "telemetry", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = Latest), (status = 404, body = ErrorEnvelope)))]
pub async fn latest(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Latest>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&access, &id).await?;
    let values = state.store.latest_values(&id).await?;
    Ok(Json(Latest {
        device_id: id,
        values,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    metric: Option<String>,
    /// RFC 3339 or milliseconds since the epoch; default one hour before `to`.
    from: Option<String>,
    /// RFC 3339 or milliseconds since the epoch; default now.
    to: Option<String>,
    /// Bucket width (`10s`, `5m`, `1h`); without it, raw values.
    interval: Option<String>,
    /// avg (default), min, max, sum or count; needs `interval`.
    agg: Option<String>,
    /// Raw values only: the most to return.
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Points {
    Raw(Vec<RawPoint>),
    Buckets(Vec<Bucket>),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Series {
    device_id: String,
    metric: String,
    from: i64,
    to: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregation: Option<&'static str>,
    points: Points,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", tag = "telemetry", security(("bearer" = [])), params(("id" = String, Path), SeriesQuery),
    responses((status = 200, body = Series), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn series(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Series>> {
    let access = caller.require(&state, Permission::DeviceRead).await?;
    let spec = SeriesSpec::parse(
        SeriesParams {
            metric: q.metric.as_deref(),
            from: q.from.as_deref(),
            to: q.to.as_deref(),
            interval: q.interval.as_deref(),
            agg: q.agg.as_deref(),
            limit: q.limit,
        },
        wf_common::now_millis(),
        state.config.max_series_points,
    )
    .map_err(Error::Validation)?;
    state.device_for(&access, &id).await?;
    let SeriesSpec {
        metric,
        from,
        to,
        shape,
    } = spec;
    let (interval_ms, aggregation, points) = match shape {
        SeriesShape::Raw { limit } => {
            let points = state
                .store
                .series_raw(&id, metric.as_str(), from, to, limit)
                .await?;
            (None, None, Points::Raw(points))
        }
        SeriesShape::Buckets {
            interval,
            aggregation,
        } => {
            let points = state
                .store
                .series_buckets(
                    &id,
                    metric.as_str(),
                    from,
                    to,
                    interval.millis(),
                    aggregation.sql(),
                )
                .await?;
            (
                Some(interval.millis()),
                Some(aggregation.as_str()),
                Points::Buckets(points),
            )
        }
    };
    Ok(Json(Series {
        device_id: id,
        metric: metric.as_str().to_string(),
        from,
        to,
        interval_ms,
        aggregation,
        points,
    }))
}
