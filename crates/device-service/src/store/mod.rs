//! device-service's tables: devices and tags, telemetry, status history,
//! commands, device state (shadows, attributes, shadow jobs), on SQLite or MySQL/MariaDB.

mod activity;
mod cache;
mod commands;
mod devices;
mod shadows;
mod telemetry;

use std::sync::Arc;

use sqlx::migrate::Migrator;
use wf_common::db::{Db, Migrations};

pub use activity::CommandCounts;
pub use commands::{CommandFilter, CommandRecord, NewCommand};
pub use devices::{DeviceFilter, DeviceRecord, DeviceSort, DeviceUpdate, NewDevice, StatusRecord};
pub use shadows::{
    JobProgress, JobTargetRecord, OpenTarget, ShadowChange, ShadowJobRecord, TargetState,
};
pub use telemetry::{Bucket, LatestValue, RawPoint};

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static MYSQL: Migrator = sqlx::migrate!("./migrations/mysql");

/// device-service's migrations for each supported database.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    mysql: &MYSQL,
};

#[derive(Clone)]
pub struct Store {
    db: Db,
    devices: Option<Arc<cache::DeviceCache>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.db)
            .field("cached_devices", &self.devices.is_some())
            .finish()
    }
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db, devices: None }
    }

    /// Keeps up to `capacity` devices in memory. Right only when this
    /// process is the only one writing the devices to its database: a write
    /// by another process would not be seen until the device is written
    /// here again.
    pub fn with_device_cache(mut self, capacity: usize) -> Self {
        self.devices = (capacity > 0).then(|| Arc::new(cache::DeviceCache::new(capacity)));
        self
    }

    /// Taken before a write to devices: when it is dropped, once the write
    /// has committed, the devices are forgotten. It is dropped as well when
    /// the write fails or its caller goes away mid-write, since the database
    /// may have committed either way.
    fn forget_when_done<'a>(&'a self, ids: impl IntoIterator<Item = &'a str>) -> Forget<'a> {
        Forget {
            cache: self.devices.as_deref(),
            ids: match self.devices {
                Some(_) => ids.into_iter().collect(),
                None => Vec::new(),
            },
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// See [`Store::forget_when_done`].
struct Forget<'a> {
    cache: Option<&'a cache::DeviceCache>,
    ids: Vec<&'a str>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(cache) = self.cache {
            cache.forget(self.ids.iter().copied());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use wf_common::testing::TestDatabase;

    use super::*;

    /// The cache serves reads: a change made behind the store's back (as
    /// only another process could make it) stays unseen until this store
    /// writes the device.
    #[tokio::test]
    async fn a_cached_device_is_read_from_memory_until_the_store_writes_it() {
        let test_db = TestDatabase::new("devices.db");
        let db = Db::connect_retrying(&test_db.url, 2, "the test database")
            .await
            .unwrap();
        db.migrate_up(&MIGRATIONS).await.unwrap();
        let cached = Store::new(db.clone()).with_device_cache(8);
        cached
            .insert_device(&NewDevice {
                id: "d-1".into(),
                name: "one".into(),
                device_type: "sensor".into(),
                owner_id: "u-1".into(),
                metadata: serde_json::json!({}),
                tags: vec![],
                secret_hash: String::new(),
                created_at: 1,
            })
            .await
            .unwrap();
        let name = |store: &Store| {
            let store = store.clone();
            async move { store.get_device("d-1").await.unwrap().unwrap().name }
        };
        assert_eq!(name(&cached).await, "one");
        sqlx::query("UPDATE devices SET name = 'behind' WHERE id = 'd-1'")
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(name(&cached).await, "one", "answered from memory");
        assert_eq!(name(&Store::new(db.clone())).await, "behind");
        cached.set_firmware_version("d-1", "2.0", 2).await.unwrap();
        let device = cached.get_device("d-1").await.unwrap().unwrap();
        assert_eq!(
            (device.name.as_str(), device.firmware_version.as_str()),
            ("behind", "2.0")
        );
    }
}
