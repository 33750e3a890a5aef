// Dynamic SQL here is assembled from constant fragments and `?`
// placeholders only; every value is bound.
use sqlx::Row as _;
use wf_common::audit::AuditEvent;
use wf_common::db::{Listing, Param, Select};

use super::Store;
use crate::error::Result;

/// An event worth keeping: who did what to what, when, from where.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub actor_id: Option<String>,
    pub actor_username: Option<String>,
    /// e.g. `auth.login`, `auth.login_failed`, `user.create`.
    pub action: &'static str,
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: &'static str,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub actor_id: Option<String>,
    pub actor_username: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    /// Exactly this target (a device, rollout, user or role id).
    pub target: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// One row of `audit_log`, as written.
struct Row {
    event_id: Option<String>,
    at: i64,
    actor_id: Option<String>,
    actor_username: Option<String>,
    action: String,
    target: Option<String>,
    outcome: String,
    client_ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    details: Option<serde_json::Value>,
}

fn truncate(s: Option<String>, max: usize) -> Option<String> {
    s.map(|s| s.chars().take(max).collect())
}

impl Store {
    pub async fn insert_audit(&self, entry: AuditEntry, at: i64) -> Result<()> {
        let row = Row {
            event_id: None,
            at,
            actor_id: entry.actor_id,
            actor_username: entry.actor_username,
            action: entry.action.to_string(),
            target: entry.target,
            outcome: entry.outcome.to_string(),
            client_ip: entry.client_ip,
            user_agent: entry.user_agent,
            request_id: entry.request_id,
            details: entry.details,
        };
        self.insert_row(row).await?;
        Ok(())
    }

    /// Stores an entry another service published on `audit.recorded`.
    /// Idempotent: an event whose `event_id` is stored already (a
    /// redelivery) is skipped. Answers whether it was new.
    pub async fn insert_audit_event(&self, event: &AuditEvent) -> Result<bool> {
        let row = Row {
            event_id: truncate(Some(event.event_id.clone()), 36),
            at: event.at,
            actor_id: truncate(event.actor_id.clone(), 36),
            actor_username: event.actor_username.clone(),
            action: truncate(Some(event.action.clone()), 64).unwrap_or_default(),
            target: event.target.clone(),
            outcome: truncate(Some(event.outcome.clone()), 16).unwrap_or_default(),
            client_ip: event.client_ip.clone(),
            user_agent: event.user_agent.clone(),
            request_id: event.request_id.clone(),
            details: event.details.clone(),
        };
        match self.insert_row(row).await {
            Ok(()) => Ok(true),
            Err(e) if wf_common::db::is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn insert_row(&self, row: Row) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (event_id, at, actor_id, actor_username, action, target, \
             outcome, client_ip, user_agent, request_id, details) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.event_id)
        .bind(row.at)
        .bind(row.actor_id)
        .bind(truncate(row.actor_username, 254))
        .bind(row.action)
        .bind(truncate(row.target, 255))
        .bind(row.outcome)
        .bind(truncate(row.client_ip, 64))
        .bind(truncate(row.user_agent, 255))
        .bind(truncate(row.request_id, 128))
        .bind(row.details.map(|d| d.to_string()))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Audit entries matching `filter`, newest first, with the total count.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<(Vec<AuditRecord>, i64)> {
        let text = |v: &String| Param::Text(v.clone());
        let mut listing = Listing::new();
        if let Some(a) = &filter.action {
            listing.filter("action = ?", [text(a)]);
        }
        if let Some(t) = &filter.target {
            listing.filter("target = ?", [text(t)]);
        }
        if let Some(a) = &filter.actor {
            listing.filter("(actor_username = ? OR actor_id = ?)", [text(a), text(a)]);
        }
        if let Some(o) = &filter.outcome {
            listing.filter("outcome = ?", [text(o)]);
        }
        if let Some(s) = filter.since {
            listing.filter("at >= ?", [Param::Int(s)]);
        }
        if let Some(u) = filter.until {
            listing.filter("at < ?", [Param::Int(u)]);
        }
        let columns = "id, at, actor_id, actor_username, action, target, outcome, client_ip, \
                       user_agent, request_id, details";
        let (records, total) = listing
            .page(
                &self.db,
                Select {
                    columns,
                    table: "audit_log",
                    order: "id DESC",
                },
                filter.limit,
                filter.offset,
                |row| {
                    let details: Option<String> = row.try_get("details")?;
                    Ok(AuditRecord {
                        id: row.try_get("id")?,
                        at: row.try_get("at")?,
                        actor_id: row.try_get("actor_id")?,
                        actor_username: row.try_get("actor_username")?,
                        action: row.try_get("action")?,
                        target: row.try_get("target")?,
                        outcome: row.try_get("outcome")?,
                        client_ip: row.try_get("client_ip")?,
                        user_agent: row.try_get("user_agent")?,
                        request_id: row.try_get("request_id")?,
                        details: details.and_then(|d| serde_json::from_str(&d).ok()),
                    })
                },
            )
            .await?;
        Ok((records, total))
    }
}
