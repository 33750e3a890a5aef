//! Telemetry queries: the latest value of every metric, and a series of one
//! metric over a time range, raw or bucketed and aggregated.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{Path, Query};

use crate::domain::{Aggregation, Interval, MetricName};
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
    caller.require(&state, Permission::DeviceRead).await?;
    state.device_for(&caller, &id).await?;
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

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<i64>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            Error::Validation(format!(
                "{name} must be RFC 3339 or milliseconds since the epoch"
            ))
        })
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", tag = "telemetry", security(("bearer" = [])), params(("id" = String, Path), SeriesQuery),
    responses((status = 200, body = Series), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn series(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Series>> {
    caller.require(&state, Permission::DeviceRead).await?;
    let metric = q
        .metric
        .as_deref()
        .ok_or_else(|| Error::Validation("metric is required".into()))
        .and_then(|m| MetricName::parse(m).map_err(Error::Validation))?;
    let to = parse_time("to", q.to.as_deref())?.unwrap_or_else(wf_common::now_millis);
    let from = parse_time("from", q.from.as_deref())?.unwrap_or(to.saturating_sub(3_600_000));
    if from >= to {
        return Err(Error::Validation("from must be before to".into()));
    }
    state.device_for(&caller, &id).await?;
    let max_points = state.config.max_series_points;

    let Some(interval) = q.interval.as_deref().filter(|i| !i.is_empty()) else {
        if q.agg.is_some() {
            return Err(Error::Validation("agg needs an interval".into()));
        }
        let limit = q.limit.unwrap_or(1000);
        if !(1..=max_points).contains(&limit) {
            return Err(Error::Validation(format!(
                "limit must be between 1 and {max_points}"
            )));
        }
        let points = state
            .store
            .series_raw(&id, metric.as_str(), from, to, limit)
            .await?;
        return Ok(Json(Series {
            device_id: id,
            metric: metric.as_str().to_string(),
            from,
            to,
            interval_ms: None,
            aggregation: None,
            points: Points::Raw(points),
        }));
    };
    let interval = Interval::parse(interval).map_err(Error::Validation)?;
    let aggregation =
        Aggregation::parse(q.agg.as_deref().unwrap_or("avg")).map_err(Error::Validation)?;
    let buckets = interval.buckets(from, to);
    if buckets > i128::from(max_points) {
        return Err(Error::Validation(format!(
            "this range and interval make {buckets} buckets; the limit is {max_points}: \
             use a wider interval or a shorter range"
        )));
    }
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
    Ok(Json(Series {
        device_id: id,
        metric: metric.as_str().to_string(),
        from,
        to,
        interval_ms: Some(interval.millis()),
        aggregation: Some(aggregation.as_str()),
        points: Points::Buckets(points),
    }))
}
