//! Devices kept in memory, for a process that is the only writer of its
//! database (the all-in-one platform). Every request about a device reads
//! the device first; from memory that read costs no database round trip.
//!
//! Every write to a device forgets it after the write is committed. A read
//! that missed fills the cache only if no write to a device of the same
//! stripe was committed since the read began, so a value read before a
//! write can never be put back after the write forgot it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::DeviceRecord;

/// Writes are told apart per stripe: a write to one device does not keep a
/// concurrent read of an unrelated one from filling the cache.
const STRIPES: usize = 64;

pub(super) struct DeviceCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// How many writes each stripe has seen.
    generations: [u64; STRIPES],
    devices: HashMap<Box<str>, DeviceRecord>,
}

/// What a miss hands to [`DeviceCache::fill`]: the stripe's write count
/// when the read began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket(u64);

impl DeviceCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                generations: [0; STRIPES],
                devices: HashMap::new(),
            }),
        }
    }

    /// The device if it is cached; otherwise a ticket for filling it in
    /// once it has been read from the database.
    pub(super) fn get(&self, id: &str) -> Result<DeviceRecord, Ticket> {
        let inner = self.lock();
        match inner.devices.get(id) {
            Some(device) => Ok(device.clone()),
            None => Err(Ticket(inner.generations[stripe(id)])),
        }
    }

    /// Remembers a device read from the database, unless a write to its
    /// stripe was committed since `ticket` was taken.
    pub(super) fn fill(&self, ticket: Ticket, device: &DeviceRecord) {
        let mut inner = self.lock();
        if inner.generations[stripe(&device.id)] != ticket.0 {
            return;
        }
        if inner.devices.len() >= self.capacity {
            // Making room by dropping everything keeps the bookkeeping at
            // nothing per hit; the working set refills on the next reads.
            inner.devices.clear();
        }
        inner
            .devices
            .insert(device.id.as_str().into(), device.clone());
    }

    /// Forgets devices a committed write changed.
    pub(super) fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.lock();
        for id in ids {
            inner.generations[stripe(id)] += 1;
            inner.devices.remove(id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().devices.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map holds plain data; a panic elsewhere cannot leave it
        // half-written.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// FNV-1a: stable, cheap, and good enough to spread ids over the stripes.
fn stripe(id: &str) -> usize {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % STRIPES as u64) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn device(id: &str, name: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            name: name.into(),
            device_type: "sensor".into(),
            owner_id: "u-1".into(),
            metadata: serde_json::json!({}),
            tags: vec![],
            secret_hash: String::new(),
            online: false,
            last_seen_at: None,
            status_changed_at: 0,
            firmware_version: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_filled_device_is_served_until_a_write_forgets_it() {
        let cache = DeviceCache::new(10);
        let ticket = cache.get("d-1").unwrap_err();
        cache.fill(ticket, &device("d-1", "first"));
        assert_eq!(cache.get("d-1").unwrap().name, "first");
        cache.forget(["d-1"]);
        assert!(cache.get("d-1").is_err());
    }

    #[test]
    fn a_read_overtaken_by_a_write_is_not_filled_in() {
        let cache = DeviceCache::new(10);
        // A reader misses and reads the old row; a writer commits and
        // forgets before the reader fills.
        let ticket = cache.get("d-1").unwrap_err();
        cache.forget(["d-1"]);
        cache.fill(ticket, &device("d-1", "stale"));
        assert!(cache.get("d-1").is_err(), "a stale row was cached");
        // The next reader starts after the write and may fill.
        let ticket = cache.get("d-1").unwrap_err();
        cache.fill(ticket, &device("d-1", "fresh"));
        assert_eq!(cache.get("d-1").unwrap().name, "fresh");
    }

    #[test]
    fn writes_to_other_stripes_do_not_block_a_fill() {
        let cache = DeviceCache::new(10);
        let other = (0..1000)
            .map(|i| format!("d-{i}"))
            .find(|id| stripe(id) != stripe("d-1"))
            .unwrap();
        let ticket = cache.get("d-1").unwrap_err();
        cache.forget([other.as_str()]);
        cache.fill(ticket, &device("d-1", "kept"));
        assert_eq!(cache.get("d-1").unwrap().name, "kept");
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let cache = DeviceCache::new(3);
        for i in 0..10 {
            let id = format!("d-{i}");
            let ticket = cache.get(&id).unwrap_err();
            cache.fill(ticket, &device(&id, "x"));
            assert!(cache.len() <= 3);
        }
        // The last one filled is there.
        assert!(cache.get("d-9").is_ok());
    }
}
