//! The node-local [`CounterStore`]: per-key limiter slots in a bounded
//! `moka` cache whose idle keys expire. It answers every request from
//! memory and needs no background work.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::limiter::{BucketPolicy, BucketSlot, Verdict, WindowPolicy, WindowSlot};
use crate::store::{CounterSpec, CounterStore, CounterStoreProvider, LimitId, MAX_KEY_BYTES};

#[derive(Debug, Default)]
struct Slot {
    window: WindowSlot,
    bucket: BucketSlot,
}

/// The node-local [`CounterStore`]: a `moka` cache of per-key slots with a
/// maximum number of keys (TinyLFU admission keeps frequent keys when a
/// flood of new ones arrives) and an idle expiry.
pub struct LocalCounters {
    slots: moka::sync::Cache<Box<str>, Arc<Mutex<Slot>>>,
}

impl LocalCounters {
    /// A store of at most `max_keys` keys; a key unused for `idle` is
    /// dropped.
    pub fn new(max_keys: u64, idle: Duration) -> LocalCounters {
        LocalCounters {
            slots: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle)
                .build(),
        }
    }

    fn with<R>(&self, key: &str, f: impl FnOnce(&mut Slot) -> R) -> R {
        let key = cut(key);
        let slot = match self.slots.get(key) {
            Some(s) => s,
            None => self
                .slots
                .get_with(key.into(), || Arc::new(Mutex::new(Slot::default()))),
        };
        // The lock only guards a few arithmetic steps; a poisoned one still
        // holds consistent integers.
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Applies pending evictions (tests call it before counting keys).
    pub fn sync(&self) {
        self.slots.run_pending_tasks();
    }
}

/// `key` cut to [`MAX_KEY_BYTES`] on a character boundary.
pub fn cut(key: &str) -> &str {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let mut end = MAX_KEY_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

impl CounterStore for LocalCounters {
    fn hit_window(&self, key: &str, policy: &WindowPolicy, now_us: u64, cost: u64) -> Verdict {
        self.with(key, |s| s.window.hit(policy, now_us, cost))
    }

    fn hit_bucket(&self, key: &str, policy: &BucketPolicy, now_us: u64) -> Verdict {
        self.with(key, |s| s.bucket.hit(policy, now_us))
    }

    fn len(&self) -> u64 {
        self.slots.entry_count()
    }
}

/// Opens a [`LocalCounters`] for every limit: the provider of a node
/// whose limits count on their own (`scope: node`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalProvider;

impl CounterStoreProvider for LocalProvider {
    fn open(&self, _id: &LimitId, spec: &CounterSpec) -> Arc<dyn CounterStore> {
        Arc::new(LocalCounters::new(spec.max_keys, spec.idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_keys_stays_bounded_and_keeps_busy_keys() {
        let store = LocalCounters::new(1_000, Duration::from_secs(600));
        let p = WindowPolicy {
            limit: 5,
            window_us: 3_600_000_000,
            sliding: false,
        };
        // A client over its limit keeps sending while spoofed keys flood in.
        for i in 0..100_000 {
            if i % 20 == 0 {
                store.hit_window("hot", &p, 1, 1);
            }
            store.hit_window(&format!("spoofed-{i}"), &p, 1, 1);
        }
        store.sync();
        assert!(store.len() <= 1_000, "{} keys kept", store.len());
        // The hot key kept its count: still over its limit.
        assert!(!store.hit_window("hot", &p, 2, 1).admitted);
    }

    #[test]
    fn idle_keys_expire() {
        let store = LocalCounters::new(100, Duration::from_millis(50));
        let p = WindowPolicy {
            limit: 1,
            window_us: 3_600_000_000,
            sliding: false,
        };
        assert!(store.hit_window("k", &p, 1, 1).admitted);
        assert!(!store.hit_window("k", &p, 1, 1).admitted);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            store.sync();
            if store.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "key never expired");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(store.hit_window("k", &p, 1, 1).admitted);
    }

    #[test]
    fn long_keys_are_cut() {
        let store = LocalCounters::new(100, Duration::from_secs(60));
        let p = WindowPolicy {
            limit: 1,
            window_us: 3_600_000_000,
            sliding: false,
        };
        let long = "é".repeat(2000);
        assert!(store.hit_window(&long, &p, 1, 1).admitted);
        assert!(!store.hit_window(&(long.clone() + "x"), &p, 1, 1).admitted);
    }
}
