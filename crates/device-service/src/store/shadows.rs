//! Device state: shadow documents and their history, server attributes,
//! and fleet shadow jobs with their targets.

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;
use wf_common::contract::{ShadowSection, ShadowSource};
use wf_common::db::{Listing, Param, Select, is_unique_violation, placeholders};

use super::Store;
use crate::domain::{Object, Shadow};
use crate::error::Result;

/// One change in a shadow's history.
#[derive(Debug, Clone)]
pub struct ShadowChange {
    pub version: i64,
    pub section: ShadowSection,
    pub source: ShadowSource,
    pub actor: Option<String>,
    pub changes: Value,
    pub at: i64,
}

/// Where a job is with one of its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Not applied to the device's shadow yet.
    Queued,
    /// In the device's desired state; the device was not connected.
    Applied,
    /// Published to the connected device.
    Delivered,
    /// The device reports what the job asked.
    Converged,
    /// The device's document cannot take the job's state (a limit).
    Failed,
}

impl TargetState {
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Applied,
        Self::Delivered,
        Self::Converged,
        Self::Failed,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Applied => "applied",
            Self::Delivered => "delivered",
            Self::Converged => "converged",
            Self::Failed => "failed",
        }
    }
}

/// Where a job is with one device.
#[derive(Debug, Clone)]
pub struct JobTargetRecord {
    pub device_id: String,
    pub state: TargetState,
    /// When the target last changed state (ms).
    pub updated_at: i64,
}

fn target_from_row(row: &AnyRow) -> sqlx::Result<JobTargetRecord> {
    let state: String = row.try_get("state")?;
    Ok(JobTargetRecord {
        device_id: row.try_get("device_id")?,
        state: TargetState::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown shadow job target state {state:?}").into())
        })?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// How far a job got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JobProgress {
    pub targeted: i64,
    /// Published to the connected device, or converged.
    pub delivered: i64,
    pub converged: i64,
    /// Not delivered yet.
    pub pending: i64,
    /// Refused by the device's document (it would break a limit).
    pub failed: i64,
}

#[derive(Debug, Clone)]
pub struct ShadowJobRecord {
    pub id: String,
    pub desired: Value,
    pub target: Value,
    pub rate_per_second: Option<i64>,
    pub status: String,
    pub created_by: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub progress: JobProgress,
}

/// An open target of a job, with what the job asks of the device.
#[derive(Debug, Clone)]
pub struct OpenTarget {
    pub job_id: String,
    pub desired: Object,
    pub state: String,
}

fn object(text: &str) -> Object {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Object::new(),
    }
}

const JOB_COLUMNS: &str =
    "id, desired, target, rate_per_second, status, created_by, created_at, finished_at";

fn job_from_row(row: &AnyRow) -> sqlx::Result<ShadowJobRecord> {
    let desired: String = row.try_get("desired")?;
    let target: String = row.try_get("target")?;
    Ok(ShadowJobRecord {
        id: row.try_get("id")?,
        desired: serde_json::from_str(&desired).unwrap_or_default(),
        target: serde_json::from_str(&target).unwrap_or_default(),
        rate_per_second: row.try_get("rate_per_second")?,
        status: row.try_get("status")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        progress: JobProgress::default(),
    })
}

impl Store {
    /// The device's shadow; `None` when it never had any state.
    pub async fn get_shadow(&self, device_id: &str) -> Result<Option<Shadow>> {
        let row = sqlx::query(
            "SELECT version, reported, desired, metadata, updated_at FROM device_shadows \
             WHERE device_id = ?",
        )
        .bind(device_id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let reported: String = row.try_get("reported")?;
        let desired: String = row.try_get("desired")?;
        let metadata: String = row.try_get("metadata")?;
        let metadata = object(&metadata);
        let meta = |section: &str| match metadata.get(section) {
            Some(Value::Object(m)) => m.clone(),
            _ => Object::new(),
        };
        Ok(Some(Shadow {
            version: row.try_get("version")?,
            reported: object(&reported),
            desired: object(&desired),
            reported_meta: meta("reported"),
            desired_meta: meta("desired"),
            updated_at: Some(row.try_get("updated_at")?),
        }))
    }

    /// Stores `shadow` if the stored version is still `previous` (0: none
    /// stored yet), with the change in its history. `false`: someone else
    /// changed it first; nothing was written.
    pub async fn save_shadow(
        &self,
        device_id: &str,
        shadow: &Shadow,
        previous: i64,
        change: &ShadowChange,
    ) -> Result<bool> {
        let reported = Value::Object(shadow.reported.clone()).to_string();
        let desired = Value::Object(shadow.desired.clone()).to_string();
        let metadata = shadow.metadata().to_string();
        let at = shadow.updated_at.unwrap_or(change.at);
        let mut tx = self.db.pool.begin().await?;
        let written = if previous == 0 {
            let inserted = sqlx::query(
                "INSERT INTO device_shadows (device_id, version, reported, desired, metadata, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(device_id)
            .bind(shadow.version)
            .bind(&reported)
            .bind(&desired)
            .bind(&metadata)
            .bind(at)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => true,
                Err(e) if is_unique_violation(&e) => false,
                Err(e) => return Err(e.into()),
            }
        } else {
            sqlx::query(
                "UPDATE device_shadows SET version = ?, reported = ?, desired = ?, metadata = ?, \
                 updated_at = ? WHERE device_id = ? AND version = ?",
            )
            .bind(shadow.version)
            .bind(&reported)
            .bind(&desired)
            .bind(&metadata)
            .bind(at)
            .bind(device_id)
            .bind(previous)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        };
        if !written {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO device_shadow_history (device_id, version, section, source, actor, \
             changes, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(device_id)
        .bind(change.version)
        .bind(change.section.as_str())
        .bind(change.source.as_str())
        .bind(change.actor.as_deref())
        .bind(change.changes.to_string())
        .bind(change.at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The device's shadow changes, newest first, and how many there are.
    pub async fn shadow_history(
        &self,
        device_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<ShadowChange>, i64)> {
        let mut listing = Listing::new();
        listing.filter("device_id = ?", [Param::Text(device_id.to_string())]);
        Ok(listing
            .page(
                &self.db,
                Select {
                    columns: "version, section, source, actor, changes, at",
                    table: "device_shadow_history",
                    order: "version DESC, id DESC",
                },
                limit,
                offset,
                |row| {
                    let section: String = row.try_get("section")?;
                    let source: String = row.try_get("source")?;
                    let changes: String = row.try_get("changes")?;
                    Ok(ShadowChange {
                        version: row.try_get("version")?,
                        section: ShadowSection::parse(&section).unwrap_or(ShadowSection::Reported),
                        source: ShadowSource::parse(&source).unwrap_or(ShadowSource::Device),
                        actor: row.try_get("actor")?,
                        changes: serde_json::from_str(&changes).unwrap_or_default(),
                        at: row.try_get("at")?,
                    })
                },
            )
            .await?)
    }

    /// The device's server attributes, by name.
    pub async fn attributes(&self, device_id: &str) -> Result<Object> {
        let rows = sqlx::query(
            "SELECT name, value FROM device_attributes WHERE device_id = ? ORDER BY name",
        )
        .bind(device_id)
        .fetch_all(&self.db.pool)
        .await?;
        let mut out = Object::new();
        for row in rows {
            let value: String = row.try_get("value")?;
            out.insert(
                row.try_get("name")?,
                serde_json::from_str(&value).unwrap_or(Value::String(value)),
            );
        }
        Ok(out)
    }

    /// Sets and removes server attributes in one transaction.
    pub async fn update_attributes(
        &self,
        device_id: &str,
        set: &[(String, Value)],
        remove: &[String],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.db.pool.begin().await?;
        for name in remove.iter().chain(set.iter().map(|(n, _)| n)) {
            sqlx::query("DELETE FROM device_attributes WHERE device_id = ? AND name = ?")
                .bind(device_id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        for (name, value) in set {
            sqlx::query(
                "INSERT INTO device_attributes (device_id, name, value, updated_at) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(device_id)
            .bind(name)
            .bind(value.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a running job and its targets, all queued.
    pub async fn insert_shadow_job(
        &self,
        job: &ShadowJobRecord,
        device_ids: &[String],
    ) -> Result<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO shadow_jobs (id, desired, target, rate_per_second, status, created_by, \
             created_at) VALUES (?, ?, ?, ?, 'running', ?, ?)",
        )
        .bind(&job.id)
        .bind(job.desired.to_string())
        .bind(job.target.to_string())
        .bind(job.rate_per_second)
        .bind(&job.created_by)
        .bind(job.created_at)
        .execute(&mut *tx)
        .await?;
        for chunk in device_ids.chunks(500) {
            let rows = vec!["(?, ?, 'queued', ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO shadow_job_targets (job_id, device_id, state, updated_at) VALUES {rows}"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(&job.id).bind(id).bind(job.created_at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One page of jobs, newest first, with their progress; only those
    /// `created_by` when given.
    pub async fn list_shadow_jobs(
        &self,
        created_by: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<ShadowJobRecord>, i64)> {
        let mut listing = Listing::new();
        if let Some(user) = created_by {
            listing.filter("created_by = ?", [Param::Text(user.to_string())]);
        }
        let (mut jobs, total) = listing
            .page(
                &self.db,
                Select {
                    columns: JOB_COLUMNS,
                    table: "shadow_jobs",
                    order: "created_at DESC, id DESC",
                },
                limit,
                offset,
                job_from_row,
            )
            .await?;
        self.fill_progress(&mut jobs).await?;
        Ok((jobs, total))
    }

    pub async fn get_shadow_job(&self, id: &str) -> Result<Option<ShadowJobRecord>> {
        let Some(job) = self
            .db
            .find_by_id("shadow_jobs", JOB_COLUMNS, id, job_from_row)
            .await?
        else {
            return Ok(None);
        };
        let mut jobs = vec![job];
        self.fill_progress(&mut jobs).await?;
        Ok(jobs.pop())
    }

    async fn fill_progress(&self, jobs: &mut [ShadowJobRecord]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT job_id, state, COUNT(*) AS n FROM shadow_job_targets WHERE job_id IN ({}) \
             GROUP BY job_id, state",
            placeholders(jobs.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for job in jobs.iter() {
            q = q.bind(&job.id);
        }
        for row in q.fetch_all(&self.db.pool).await? {
            let job_id: String = row.try_get("job_id")?;
            let state: String = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            if let Some(job) = jobs.iter_mut().find(|j| j.id == job_id) {
                let p = &mut job.progress;
                p.targeted += n;
                match state.as_str() {
                    "converged" => {
                        p.converged += n;
                        p.delivered += n;
                    }
                    "delivered" => p.delivered += n,
                    "failed" => p.failed += n,
                    _ => {}
                }
                p.pending = p.targeted - p.delivered - p.failed;
            }
        }
        Ok(())
    }

    /// One page of a job's devices in any of `states` (all when empty), by
    /// device id, and how many there are in all.
    pub async fn job_targets(
        &self,
        job_id: &str,
        states: &[TargetState],
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<JobTargetRecord>, i64)> {
        let mut listing = Listing::new();
        listing.filter("job_id = ?", [Param::Text(job_id.to_string())]);
        if !states.is_empty() {
            listing.filter(
                format!("state IN ({})", placeholders(states.len())),
                states.iter().map(|s| Param::Text(s.as_str().to_string())),
            );
        }
        Ok(listing
            .page(
                &self.db,
                Select {
                    columns: "device_id, state, updated_at",
                    table: "shadow_job_targets",
                    order: "device_id",
                },
                limit,
                offset,
                target_from_row,
            )
            .await?)
    }

    /// Ends a running job; `false` when it is not running.
    pub async fn finish_shadow_job(&self, id: &str, status: &str, now: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE shadow_jobs SET status = ?, finished_at = ? WHERE id = ? AND status = 'running'",
        )
        .bind(status)
        .bind(now)
        .bind(id)
        .execute(&self.db.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Marks a running job completed once every target converged (or
    /// could not take the job's state).
    pub async fn complete_shadow_job_if_done(&self, id: &str, now: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE shadow_jobs SET status = 'completed', finished_at = ? WHERE id = ? \
             AND status = 'running' AND NOT EXISTS (SELECT 1 FROM shadow_job_targets \
             WHERE job_id = ? AND state NOT IN ('converged', 'failed'))",
        )
        .bind(now)
        .bind(id)
        .bind(id)
        .execute(&self.db.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Running jobs, oldest first.
    pub async fn running_shadow_jobs(&self) -> Result<Vec<ShadowJobRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM shadow_jobs WHERE status = 'running' ORDER BY created_at"
        )))
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(job_from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Up to `limit` devices a job has not applied yet.
    pub async fn queued_targets(&self, job_id: &str, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT device_id FROM shadow_job_targets WHERE job_id = ? AND state = 'queued' \
             ORDER BY device_id LIMIT ?",
        )
        .bind(job_id)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("device_id"))
            .collect::<sqlx::Result<_>>()?)
    }

    /// Moves a target from one of `from` to `to`; `false` when it was in
    /// none of them (another replica moved it first).
    pub async fn move_target(
        &self,
        job_id: &str,
        device_id: &str,
        from: &[TargetState],
        to: TargetState,
        now: i64,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE shadow_job_targets SET state = ?, updated_at = ? WHERE job_id = ? \
             AND device_id = ? AND state IN ({})",
            placeholders(from.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(now)
            .bind(job_id)
            .bind(device_id);
        for state in from {
            q = q.bind(state.as_str());
        }
        Ok(q.execute(&self.db.pool).await?.rows_affected() == 1)
    }

    /// The device's targets that jobs applied but that have not converged,
    /// with what each job asks.
    pub async fn open_targets(&self, device_id: &str) -> Result<Vec<OpenTarget>> {
        let rows = sqlx::query(
            "SELECT t.job_id, t.state, j.desired FROM shadow_job_targets t \
             JOIN shadow_jobs j ON j.id = t.job_id \
             WHERE t.device_id = ? AND t.state IN ('applied', 'delivered')",
        )
        .bind(device_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let desired: String = r.try_get("desired")?;
                Ok(OpenTarget {
                    job_id: r.try_get("job_id")?,
                    desired: object(&desired),
                    state: r.try_get("state")?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }
}
