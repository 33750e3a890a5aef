//! The audit log, newest first. Needs `audit:read`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use wf_common::error::ErrorEnvelope;
use wf_common::extract::Query;
use wf_common::format_millis;

use super::{Caller, Page, Paged};
use crate::domain::Permission;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{AuditFilter, AuditRecord};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(max_length = 256)]
    action: Option<String>,
    /// A username or user id.
    #[param(max_length = 256)]
    actor: Option<String>,
    /// `success`, `failure` or `denied`.
    #[param(max_length = 256)]
    outcome: Option<String>,
    /// Exactly this target: a device, rollout, upgrade task, firmware,
    /// user or role id (the history of one thing).
    #[param(max_length = 256)]
    target: Option<String>,
    /// RFC 3339 bounds.
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditDto {
    #[serde(flatten)]
    record: AuditRecord,
    time: String,
}

fn parse_time(name: &str, value: Option<String>) -> Result<Option<i64>> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(&v)
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    Error::Validation(format!(
                        "{name} must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"
                    ))
                })
        })
        .transpose()
}

#[utoipa::path(get, path = "/api/v1/audit-logs", tag = "audit", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = Paged<AuditDto>), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Paged<AuditDto>>> {
    caller.require(Permission::AuditRead)?;
    let page = Page::from_query(query.limit, query.offset)?;
    for (field, value) in [
        ("action", &query.action),
        ("actor", &query.actor),
        ("outcome", &query.outcome),
        ("target", &query.target),
    ] {
        wf_common::text::check_filter(field, value.as_deref()).map_err(Error::Validation)?;
    }
    let filter = AuditFilter {
        action: query.action,
        actor: query.actor,
        outcome: query.outcome,
        target: query.target,
        since: parse_time("since", query.since)?,
        until: parse_time("until", query.until)?,
        limit: page.limit,
        offset: page.offset,
    };
    let (records, total) = state.store.list_audit(&filter).await?;
    let items = records
        .into_iter()
        .map(|record| AuditDto {
            time: format_millis(record.at),
            record,
        })
        .collect();
    Ok(Json(Paged {
        items,
        total,
        limit: page.limit,
        offset: page.offset,
    }))
}
