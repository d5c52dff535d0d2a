//! Limit state that outlives a config build: [`LimitStores`] hands every
//! limit of a snapshot its counter store or in-flight table by
//! [`LimitId`], and keeps them while the limit's config does not change.
//!
//! Each snapshot build takes a [`BuildMark`]; every entry the build asks
//! for is marked with it. Once the build's snapshot is published,
//! [`LimitStores::sweep`] drops the entries that no build since that mark
//! used and that nothing else holds any more, so limits removed or changed
//! by a write do not pile up. "Nothing else holds" matters because a build
//! may reuse a plugin from the previous snapshot without asking for its
//! entry again (an unchanged route keeps its compiled chain); the entry
//! must then stay, or the next build that does ask would start the limit
//! over. A snapshot still serving requests keeps its entries until it is
//! dropped. A failed build leaves marks that the next published build
//! sweeps.
//!
//! What an entry is (local, mesh-backed, Redis-backed) is the
//! [`CounterStoreProvider`]'s business; this module only keeps them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::conn::InFlight;
use crate::store::{CounterSpec, CounterStore, CounterStoreProvider, LimitId};

/// The number of one snapshot build, handed out by
/// [`LimitStores::begin`]; later builds have larger marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BuildMark(u64);

/// Values by [`LimitId`], each with the last build that used it.
struct Keep<V: ?Sized> {
    entries: Mutex<HashMap<LimitId, (Arc<V>, BuildMark)>>,
}

impl<V: ?Sized> Default for Keep<V> {
    fn default() -> Self {
        Keep {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: ?Sized> Keep<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LimitId, (Arc<V>, BuildMark)>> {
        // Held for a map operation only; a poisoned map is still whole.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_open(&self, id: &LimitId, mark: BuildMark, open: impl FnOnce() -> Arc<V>) -> Arc<V> {
        let mut m = self.lock();
        let (v, last) = m.entry(id.clone()).or_insert_with(|| (open(), mark));
        *last = (*last).max(mark);
        v.clone()
    }

    fn sweep(&self, mark: BuildMark) -> usize {
        let mut m = self.lock();
        let before = m.len();
        m.retain(|_, (v, last)| *last >= mark || Arc::strong_count(v) > 1);
        before - m.len()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The limit state of one node across snapshot builds.
pub struct LimitStores {
    provider: Arc<dyn CounterStoreProvider>,
    builds: AtomicU64,
    counters: Keep<dyn CounterStore>,
    in_flight: Keep<InFlight>,
}

impl LimitStores {
    /// Limit state whose counter stores `provider` opens.
    pub fn new(provider: Arc<dyn CounterStoreProvider>) -> LimitStores {
        LimitStores {
            provider,
            builds: AtomicU64::new(1),
            counters: Keep::default(),
            in_flight: Keep::default(),
        }
    }

    /// Starts a build: what it asks for is marked as used by it.
    pub fn begin(&self) -> BuildMark {
        BuildMark(self.builds.fetch_add(1, Ordering::Relaxed))
    }

    /// The counter store of limit `id`: the one it had, or a new one from
    /// the provider.
    pub fn counters(
        &self,
        mark: BuildMark,
        id: &LimitId,
        spec: &CounterSpec,
    ) -> Arc<dyn CounterStore> {
        self.counters
            .get_or_open(id, mark, || self.provider.open(id, spec))
    }

    /// The in-flight table of limit `id` (`limit-conn`). Requests admitted
    /// under the previous snapshot keep their places in it.
    pub fn in_flight(&self, mark: BuildMark, id: &LimitId) -> Arc<InFlight> {
        self.in_flight.get_or_open(id, mark, Arc::default)
    }

    /// Drops every entry that no build since `mark` asked for; call it
    /// once the snapshot built with `mark` is published. Returns how many
    /// entries went.
    pub fn sweep(&self, mark: BuildMark) -> usize {
        self.counters.sweep(mark) + self.in_flight.sweep(mark)
    }

    /// Entries held: counter stores and in-flight tables.
    pub fn len(&self) -> usize {
        self.counters.len() + self.in_flight.len()
    }

    /// Whether no limit state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::conn::Acquire;
    use crate::limiter::WindowPolicy;
    use crate::local::LocalProvider;

    fn id(owner: &str, config: u64) -> LimitId {
        LimitId {
            owner: owner.into(),
            plugin: "limit-count".into(),
            config,
        }
    }

    const SPEC: CounterSpec = CounterSpec {
        max_keys: 100,
        idle: Duration::from_secs(600),
    };

    const ONE: WindowPolicy = WindowPolicy {
        limit: 1,
        window_us: 3_600_000_000,
        sliding: false,
    };

    #[test]
    fn an_unchanged_limit_keeps_its_counts_across_builds() {
        let stores = LimitStores::new(Arc::new(LocalProvider));
        let b1 = stores.begin();
        let s = stores.counters(b1, &id("route:a", 1), &SPEC);
        assert!(s.hit_window("k", &ONE, 1, 1).admitted);
        assert_eq!(stores.sweep(b1), 0);

        // The next build: same limit, plus an unrelated one.
        let b2 = stores.begin();
        let again = stores.counters(b2, &id("route:a", 1), &SPEC);
        stores.counters(b2, &id("route:b", 1), &SPEC);
        assert_eq!(stores.sweep(b2), 0);
        assert!(
            !again.hit_window("k", &ONE, 2, 1).admitted,
            "still at its limit"
        );
        assert_eq!(stores.len(), 2);
    }

    #[test]
    fn a_changed_or_removed_limit_starts_fresh_and_its_state_goes() {
        let stores = LimitStores::new(Arc::new(LocalProvider));
        let b1 = stores.begin();
        let old = stores.counters(b1, &id("route:a", 1), &SPEC);
        stores.counters(b1, &id("route:gone", 1), &SPEC);
        assert!(old.hit_window("k", &ONE, 1, 1).admitted);

        let b2 = stores.begin();
        let changed = stores.counters(b2, &id("route:a", 2), &SPEC);
        assert!(changed.hit_window("k", &ONE, 2, 1).admitted, "a new limit");
        // The old config's store is still held (by a snapshot serving
        // requests, here the test): it stays until let go.
        assert_eq!(stores.sweep(b2), 1, "the removed route");
        drop(old);
        assert_eq!(stores.sweep(b2), 1, "the old config, once let go");
        assert_eq!(stores.len(), 1);

        // Another owner with the same config is another limit.
        let b3 = stores.begin();
        let other = stores.counters(b3, &id("route:c", 2), &SPEC);
        assert!(other.hit_window("k", &ONE, 3, 1).admitted);
    }

    #[test]
    fn a_failed_build_leaves_nothing_behind_after_the_next_publish() {
        let stores = LimitStores::new(Arc::new(LocalProvider));
        let b1 = stores.begin();
        let kept = stores.counters(b1, &id("route:a", 1), &SPEC);
        stores.sweep(b1);
        // A build that fails half-way: never published, never swept.
        let failed = stores.begin();
        stores.counters(failed, &id("route:a", 1), &SPEC);
        stores.counters(failed, &id("route:new", 9), &SPEC);
        assert_eq!(stores.len(), 2);
        let b3 = stores.begin();
        let s = stores.counters(b3, &id("route:a", 1), &SPEC);
        assert!(Arc::ptr_eq(&s, &kept));
        assert_eq!(stores.sweep(b3), 1);
        assert_eq!(stores.len(), 1);
    }

    #[test]
    fn in_flight_places_survive_too() {
        let stores = LimitStores::new(Arc::new(LocalProvider));
        let conn = LimitId {
            plugin: "limit-conn".into(),
            ..id("route:a", 5)
        };
        let b1 = stores.begin();
        let t = stores.in_flight(b1, &conn);
        let held = t.acquire("k", 1);
        assert!(matches!(held, Acquire::Admitted { .. }));
        let b2 = stores.begin();
        let t2 = stores.in_flight(b2, &conn);
        stores.sweep(b2);
        assert!(
            matches!(t2.acquire("k", 1), Acquire::Full),
            "the place is still held"
        );
        drop(held);
        assert!(matches!(t2.acquire("k", 1), Acquire::Admitted { .. }));
        let b3 = stores.begin();
        assert_eq!(stores.sweep(b3), 0, "a table still held stays");
        drop((t, t2));
        assert_eq!(stores.sweep(b3), 1, "the table goes once unused");
        assert!(stores.is_empty());
    }
}
