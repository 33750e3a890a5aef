// Dynamic SQL here is assembled from constant fragments and `?`
// placeholders only; every value is bound.
use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use wf_common::contract::StatusReason;
use wf_common::db::{
    Dialect, Listing, Param, Select, flag, is_unique_violation, like_pattern, placeholders,
};

use super::Store;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct DeviceRecord {
    pub id: String,
    pub name: String,
    pub device_type: String,
    pub owner_id: String,
    pub metadata: serde_json::Value,
    pub tags: Vec<String>,
    pub secret_hash: String,
    pub online: bool,
    pub last_seen_at: Option<i64>,
    pub status_changed_at: i64,
    pub firmware_version: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, device_type, owner_id, metadata, secret_hash, online, \
    last_seen_at, status_changed_at, firmware_version, created_at, updated_at";

fn from_row(row: &AnyRow) -> sqlx::Result<DeviceRecord> {
    let metadata: String = row.try_get("metadata")?;
    Ok(DeviceRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        device_type: row.try_get("device_type")?,
        owner_id: row.try_get("owner_id")?,
        metadata: serde_json::from_str(&metadata).unwrap_or_else(|_| serde_json::json!({})),
        tags: Vec::new(),
        secret_hash: row.try_get("secret_hash")?,
        online: flag(row.try_get("online")?),
        last_seen_at: row.try_get("last_seen_at")?,
        status_changed_at: row.try_get("status_changed_at")?,
        firmware_version: row.try_get("firmware_version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub struct NewDevice {
    pub id: String,
    pub name: String,
    pub device_type: String,
    pub owner_id: String,
    pub metadata: serde_json::Value,
    pub tags: Vec<String>,
    pub secret_hash: String,
    pub created_at: i64,
}

#[derive(Default)]
pub struct DeviceUpdate {
    pub name: Option<String>,
    pub device_type: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub enum DeviceSort {
    #[default]
    CreatedAt,
    Name,
    LastSeen,
    Id,
}

#[derive(Default)]
pub struct DeviceFilter {
    pub ids: Vec<String>,
    /// Substring of the name, case-insensitive.
    pub name: Option<String>,
    pub device_type: Option<String>,
    pub tag: Option<String>,
    /// Server attributes the device has, by name and value as text.
    pub attributes: Vec<(String, String)>,
    pub online: Option<bool>,
    pub owner_id: Option<String>,
    pub sort: DeviceSort,
    pub descending: bool,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusRecord {
    pub at: i64,
    pub online: bool,
    pub reason: String,
}

impl Store {
    pub async fn insert_device(&self, d: &NewDevice) -> Result<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO devices (id, name, device_type, owner_id, metadata, secret_hash, online, \
             status_changed_at, firmware_version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 0, 0, '', ?, ?)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(&d.device_type)
        .bind(&d.owner_id)
        .bind(d.metadata.to_string())
        .bind(&d.secret_hash)
        .bind(d.created_at)
        .bind(d.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict(format!("a device with id {:?} already exists", d.id))
            } else {
                e.into()
            }
        })?;
        for tag in &d.tags {
            sqlx::query("INSERT INTO device_tags (device_id, tag) VALUES (?, ?)")
                .bind(&d.id)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One device with its tags, in one query: it is on the path of every
    /// request about a device.
    pub async fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let Some(cache) = &self.devices else {
            return self.read_device(id).await;
        };
        let ticket = match cache.get(id) {
            Ok(device) => return Ok(Some(device)),
            Err(ticket) => ticket,
        };
        let device = self.read_device(id).await?;
        if let Some(device) = &device {
            cache.fill(ticket, device);
        }
        Ok(device)
    }

    async fn read_device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        // Tags never contain a comma (see `Tag`).
        let tag_list = match self.db.dialect {
            Dialect::Sqlite => "group_concat(t.tag, ',')",
            Dialect::MySql => "GROUP_CONCAT(t.tag SEPARATOR ',')",
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS}, (SELECT {tag_list} FROM device_tags t WHERE t.device_id = devices.id) \
             AS tag_list FROM devices WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut device = from_row(&row)?;
        let tags: Option<String> = row.try_get("tag_list")?;
        device.tags = tags
            .iter()
            .flat_map(|t| t.split(','))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        device.tags.sort();
        Ok(Some(device))
    }

    /// The stored secret hash of a device, for MQTT authentication.
    pub async fn secret_hash(&self, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT secret_hash FROM devices WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .map(|r| r.try_get("secret_hash"))
            .transpose()?)
    }

    async fn tags_of(&self, ids: &[String]) -> Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT device_id, tag FROM device_tags WHERE device_id IN ({}) ORDER BY tag",
            placeholders(ids.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(id);
        }
        for row in q.fetch_all(&self.db.pool).await? {
            out.entry(row.try_get("device_id")?)
                .or_default()
                .push(row.try_get("tag")?);
        }
        Ok(out)
    }

    pub async fn list_devices(&self, f: &DeviceFilter) -> Result<(Vec<DeviceRecord>, i64)> {
        let text = |v: &String| Param::Text(v.clone());
        let mut listing = Listing::new();
        if !f.ids.is_empty() {
            listing.filter(
                format!("id IN ({})", placeholders(f.ids.len())),
                f.ids.iter().map(text),
            );
        }
        if let Some(name) = &f.name {
            listing.filter(
                "LOWER(name) LIKE ? ESCAPE '!'",
                [Param::Text(like_pattern(&name.to_lowercase()))],
            );
        }
        if let Some(t) = &f.device_type {
            listing.filter("device_type = ?", [text(t)]);
        }
        if let Some(tag) = &f.tag {
            listing.filter(
                "id IN (SELECT device_id FROM device_tags WHERE tag = ?)",
                [text(tag)],
            );
        }
        for (name, value) in &f.attributes {
            let [quoted, raw] = crate::domain::attribute_filter_forms(value);
            listing.filter(
                "id IN (SELECT device_id FROM device_attributes WHERE name = ? AND value IN (?, ?))",
                [text(name), Param::Text(quoted), Param::Text(raw)],
            );
        }
        if let Some(owner) = &f.owner_id {
            listing.filter("owner_id = ?", [text(owner)]);
        }
        if let Some(online) = f.online {
            listing.filter(if online { "online = 1" } else { "online = 0" }, []);
        }
        let order = match f.sort {
            DeviceSort::CreatedAt => "created_at",
            DeviceSort::Name => "name",
            DeviceSort::LastSeen => "last_seen_at",
            DeviceSort::Id => "id",
        };
        let dir = if f.descending { "DESC" } else { "ASC" };
        let order = format!("{order} {dir}, id {dir}");
        let (mut devices, total): (Vec<DeviceRecord>, i64) = listing
            .page(
                &self.db,
                Select {
                    columns: COLUMNS,
                    table: "devices",
                    order: &order,
                },
                f.limit,
                f.offset,
                from_row,
            )
            .await?;
        let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
        let mut tags = self.tags_of(&ids).await?;
        for d in &mut devices {
            d.tags = tags.remove(&d.id).unwrap_or_default();
        }
        Ok((devices, total))
    }

    pub async fn update_device(&self, id: &str, u: &DeviceUpdate, now: i64) -> Result<bool> {
        let _forget = self.forget_when_done([id]);
        let mut tx = self.db.pool.begin().await?;
        let result = sqlx::query(
            "UPDATE devices SET name = COALESCE(?, name), device_type = COALESCE(?, device_type), \
             metadata = COALESCE(?, metadata), updated_at = ? WHERE id = ?",
        )
        .bind(u.name.clone())
        .bind(u.device_type.clone())
        .bind(u.metadata.as_ref().map(|m| m.to_string()))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(tags) = &u.tags {
            sqlx::query("DELETE FROM device_tags WHERE device_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for tag in tags {
                sqlx::query("INSERT INTO device_tags (device_id, tag) VALUES (?, ?)")
                    .bind(id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Hands a device to another owner; `false` when the device is unknown.
    pub async fn set_owner(&self, id: &str, owner_id: &str, now: i64) -> Result<bool> {
        let _forget = self.forget_when_done([id]);
        let result = sqlx::query("UPDATE devices SET owner_id = ?, updated_at = ? WHERE id = ?")
            .bind(owner_id)
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    pub async fn set_secret_hash(&self, id: &str, hash: &str, now: i64) -> Result<bool> {
        let _forget = self.forget_when_done([id]);
        let result = sqlx::query("UPDATE devices SET secret_hash = ?, updated_at = ? WHERE id = ?")
            .bind(hash)
            .bind(now)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Records the firmware version a device reports running; `false` when
    /// the device is unknown or already on that version.
    pub async fn set_firmware_version(&self, id: &str, version: &str, now: i64) -> Result<bool> {
        let _forget = self.forget_when_done([id]);
        let result = sqlx::query(
            "UPDATE devices SET firmware_version = ?, updated_at = ? \
             WHERE id = ? AND firmware_version <> ?",
        )
        .bind(version)
        .bind(now)
        .bind(id)
        .bind(version)
        .execute(&self.db.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Deletes a device with its telemetry, history and commands.
    pub async fn delete_device(&self, id: &str) -> Result<bool> {
        let _forget = self.forget_when_done([id]);
        let mut tx = self.db.pool.begin().await?;
        let result = sqlx::query("DELETE FROM devices WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() == 0 {
            return Ok(false);
        }
        for table in [
            "device_tags",
            "device_data",
            "device_latest",
            "device_status_history",
            "device_commands",
            "device_activity",
            "device_shadows",
            "device_shadow_history",
            "device_attributes",
            "shadow_job_targets",
        ] {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE device_id = ?"
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Applies a status change unless a later one was applied already
    /// (events can arrive out of order or twice). An online device records
    /// the embedded broker instance holding its connection (`broker`).
    pub async fn apply_status(
        &self,
        id: &str,
        online: bool,
        at: i64,
        reason: &str,
        broker: Option<&str>,
    ) -> Result<bool> {
        self.change_status(id, online, at, reason, broker, None)
            .await
    }

    /// Takes a device offline if it is still online through `broker`
    /// (and not back through another instance meanwhile).
    pub async fn mark_offline_on(
        &self,
        id: &str,
        broker: &str,
        at: i64,
        reason: &str,
    ) -> Result<bool> {
        self.change_status(id, false, at, reason, None, Some(broker))
            .await
    }

    async fn change_status(
        &self,
        id: &str,
        online: bool,
        at: i64,
        reason: &str,
        broker: Option<&str>,
        only_on: Option<&str>,
    ) -> Result<bool> {
        let _forget = self.forget_when_done([id]);
        let mut tx = self.db.pool.begin().await?;
        let sql = if only_on.is_some() {
            "UPDATE devices SET online = ?, status_changed_at = ?, broker = ?, \
             last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < ? THEN ? ELSE last_seen_at END \
             WHERE id = ? AND status_changed_at <= ? AND online = 1 AND broker = ?"
        } else {
            "UPDATE devices SET online = ?, status_changed_at = ?, broker = ?, \
             last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < ? THEN ? ELSE last_seen_at END \
             WHERE id = ? AND status_changed_at <= ?"
        };
        let mut update = sqlx::query(sql)
            .bind(i64::from(online))
            .bind(at)
            .bind(broker.filter(|_| online).map(str::to_string))
            .bind(at)
            .bind(at)
            .bind(id)
            .bind(at);
        if let Some(b) = only_on {
            update = update.bind(b.to_string());
        }
        let result = update.execute(&mut *tx).await?;
        let exists = result.rows_affected() > 0;
        if exists {
            let insert = match self.db.dialect {
                wf_common::db::Dialect::Sqlite => {
                    "INSERT OR IGNORE INTO device_status_history (device_id, at, online, reason) VALUES (?, ?, ?, ?)"
                }
                wf_common::db::Dialect::MySql => {
                    "INSERT IGNORE INTO device_status_history (device_id, at, online, reason) VALUES (?, ?, ?, ?)"
                }
            };
            sqlx::query(insert)
                .bind(id)
                .bind(at)
                .bind(i64::from(online))
                .bind(reason)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(exists)
    }

    pub async fn status_history(&self, id: &str, limit: i64) -> Result<Vec<StatusRecord>> {
        let rows = sqlx::query(
            "SELECT at, online, reason FROM device_status_history WHERE device_id = ? ORDER BY at DESC LIMIT ?",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(StatusRecord {
                    at: r.try_get("at")?,
                    online: flag(r.try_get("online")?),
                    reason: r.try_get("reason")?,
                })
            })
            .collect::<sqlx::Result<_>>()?)
    }

    /// How many devices there are and how many are online, optionally for
    /// one owner.
    pub async fn count_devices(&self, owner_id: Option<&str>) -> Result<(i64, i64)> {
        let mut counts = [0i64; 2];
        for (i, online_only) in [false, true].into_iter().enumerate() {
            let sql = match (owner_id.is_some(), online_only) {
                (false, false) => "SELECT COUNT(*) AS n FROM devices",
                (false, true) => "SELECT COUNT(*) AS n FROM devices WHERE online = 1",
                (true, false) => "SELECT COUNT(*) AS n FROM devices WHERE owner_id = ?",
                (true, true) => {
                    "SELECT COUNT(*) AS n FROM devices WHERE owner_id = ? AND online = 1"
                }
            };
            let mut q = sqlx::query(sql);
            if let Some(o) = owner_id {
                q = q.bind(o);
            }
            counts[i] = q.fetch_one(&self.db.pool).await?.try_get("n")?;
        }
        Ok((counts[0], counts[1]))
    }

    /// Marks every online device offline (with a history entry); returns how
    /// many there were.
    pub async fn mark_all_offline(&self, now: i64) -> Result<u64> {
        let ids: Vec<String> = sqlx::query("SELECT id FROM devices WHERE online = 1")
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<sqlx::Result<_>>()?;
        for id in &ids {
            self.apply_status(id, false, now, StatusReason::ServerRestart.as_str(), None)
                .await?;
        }
        Ok(ids.len() as u64)
    }

    /// Records that embedded broker instance `broker` holds its connections
    /// until `lease_until` (ms); never shortens a lease already granted.
    pub async fn renew_broker_lease(&self, broker: &str, lease_until: i64) -> Result<()> {
        let sql = match self.db.dialect {
            wf_common::db::Dialect::Sqlite => {
                "INSERT INTO mqtt_brokers (id, lease_until) VALUES (?, ?) \
                 ON CONFLICT (id) DO UPDATE SET lease_until = MAX(lease_until, excluded.lease_until)"
            }
            wf_common::db::Dialect::MySql => {
                "INSERT INTO mqtt_brokers (id, lease_until) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE lease_until = GREATEST(lease_until, VALUES(lease_until))"
            }
        };
        sqlx::query(sql)
            .bind(broker)
            .bind(lease_until)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Broker instances whose lease lapsed before `now`.
    pub async fn lapsed_brokers(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM mqtt_brokers WHERE lease_until < ?")
            .bind(now)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<sqlx::Result<_>>()?)
    }

    /// Up to `limit` devices online through `broker`.
    pub async fn devices_on_broker(&self, broker: &str, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM devices WHERE broker = ? AND online = 1 LIMIT ?")
            .bind(broker)
            .bind(limit)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<sqlx::Result<_>>()?)
    }

    /// Up to `limit` devices online through a broker instance never heard
    /// of, that came online before `before` (so its first heartbeat had
    /// the time to arrive): `(device, broker)`.
    pub async fn devices_on_unknown_brokers(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT d.id, d.broker FROM devices d LEFT JOIN mqtt_brokers b ON b.id = d.broker \
             WHERE d.broker IS NOT NULL AND d.online = 1 AND b.id IS NULL \
             AND d.status_changed_at < ? LIMIT ?",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("broker")?)))
            .collect::<sqlx::Result<_>>()?)
    }

    /// Forgets broker instances whose lease lapsed before `before` and that
    /// no online device names any more.
    pub async fn forget_lapsed_brokers(&self, before: i64) -> Result<u64> {
        let result = sqlx::query(
            "DELETE FROM mqtt_brokers WHERE lease_until < ? AND id NOT IN \
             (SELECT broker FROM devices WHERE broker IS NOT NULL AND online = 1)",
        )
        .bind(before)
        .execute(&self.db.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Moves devices' last-seen times forward (never back).
    pub async fn touch_last_seen(&self, seen: &[(String, i64)]) -> Result<()> {
        let _forget = self.forget_when_done(seen.iter().map(|(id, _)| id.as_str()));
        let mut tx = self.db.pool.begin().await?;
        for (id, at) in seen {
            sqlx::query(
                "UPDATE devices SET last_seen_at = ? WHERE id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)",
            )
            .bind(*at)
            .bind(id)
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
