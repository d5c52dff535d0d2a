//! A node's response-cache stores across config builds: every route of a
//! snapshot with the same capacity (`settings.cache_max_bytes`) shares one
//! store, and the next build with the same capacity gets the same store
//! back, entries and all. The node's [`Collapse`] lives here too, so every
//! route and store shares one view of the fetches in flight.
//!
//! A build takes a mark ([`CacheStores::begin`]); once its snapshot is
//! published, [`CacheStores::sweep`] drops the stores that no build since
//! that mark used and that nothing else holds (a route whose compiled
//! chain was reused still holds its store without asking for it again,
//! and purges must keep reaching it). Purges and stats go over the stores
//! kept here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::collapse::{Collapse, Collapser};
use crate::local::LocalProvider;
use crate::{CacheStore, CacheStoreProvider, Purge};

struct Kept {
    max_bytes: u64,
    store: Arc<dyn CacheStore>,
    last_build: u64,
}

/// The response-cache state of one node.
pub struct CacheStores {
    provider: Arc<dyn CacheStoreProvider>,
    collapse: Arc<dyn Collapse>,
    builds: AtomicU64,
    kept: Mutex<Vec<Kept>>,
}

impl Default for CacheStores {
    /// Node-local stores and collapsing.
    fn default() -> Self {
        CacheStores::new(Arc::new(LocalProvider), Arc::new(Collapser::default()))
    }
}

impl CacheStores {
    /// Stores opened by `provider`, with fetches collapsed by `collapse`.
    pub fn new(provider: Arc<dyn CacheStoreProvider>, collapse: Arc<dyn Collapse>) -> CacheStores {
        CacheStores {
            provider,
            collapse,
            builds: AtomicU64::new(1),
            kept: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a build; returns its mark (later builds have larger ones).
    pub fn begin(&self) -> u64 {
        self.builds.fetch_add(1, Ordering::Relaxed)
    }

    /// The store of `max_bytes` capacity for the build `mark`: the one
    /// kept, or a new one.
    pub fn store(&self, mark: u64, max_bytes: u64) -> Arc<dyn CacheStore> {
        let mut kept = self.lock();
        if let Some(k) = kept.iter_mut().find(|k| k.max_bytes == max_bytes) {
            k.last_build = k.last_build.max(mark);
            return k.store.clone();
        }
        let store = self.provider.open(max_bytes);
        kept.push(Kept {
            max_bytes,
            store: store.clone(),
            last_build: mark,
        });
        store
    }

    /// Drops the stores no build since `mark` used; returns how many.
    pub fn sweep(&self, mark: u64) -> usize {
        let mut kept = self.lock();
        let before = kept.len();
        kept.retain(|k| k.last_build >= mark || Arc::strong_count(&k.store) > 1);
        before - kept.len()
    }

    /// Who fetches a missing key.
    pub fn collapse(&self) -> &Arc<dyn Collapse> {
        &self.collapse
    }

    /// Purges this node's stores; returns how many entries were removed.
    pub fn purge(&self, what: &Purge) -> u64 {
        self.kept()
            .iter()
            .map(|s| match what {
                Purge::Key(k) => s.purge(k),
                Purge::Prefix(p) => s.purge_prefix(p),
            })
            .sum()
    }

    /// Entries and bytes held by this node's stores.
    pub fn stats(&self) -> (u64, u64) {
        self.kept().iter().fold((0, 0), |(n, b), s| {
            (n + s.entry_count(), b + s.weighted_bytes())
        })
    }

    fn kept(&self) -> Vec<Arc<dyn CacheStore>> {
        self.lock().iter().map(|k| k.store.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cached;

    fn response() -> Cached {
        crate::local::test_response(5)
    }

    #[tokio::test]
    async fn a_build_with_the_same_capacity_keeps_the_entries() {
        let stores = CacheStores::default();
        let b1 = stores.begin();
        stores.store(b1, 1_000_000).insert("GET a", response());
        stores.sweep(b1);
        let b2 = stores.begin();
        let again = stores.store(b2, 1_000_000);
        assert_eq!(stores.sweep(b2), 0);
        assert!(again.get("GET a").await.is_some());
        assert_eq!(stores.stats().0, 1);

        // Another capacity is another store; the old one goes once the
        // build that dropped it is published and nothing holds it.
        let b3 = stores.begin();
        let bigger = stores.store(b3, 2_000_000);
        assert!(bigger.get("GET a").await.is_none());
        assert_eq!(stores.sweep(b3), 0, "still held");
        drop(again);
        assert_eq!(stores.sweep(b3), 1);
        assert_eq!(stores.stats(), (0, 0));
    }

    #[tokio::test]
    async fn purges_reach_every_kept_store() {
        let stores = CacheStores::default();
        let b = stores.begin();
        stores.store(b, 1_000_000).insert("GET a/1", response());
        stores.store(b, 2_000_000).insert("GET a/2", response());
        stores.store(b, 2_000_000).insert("GET b/1", response());
        assert_eq!(stores.purge(&Purge::Prefix("GET a/".into())), 2);
        assert_eq!(stores.purge(&Purge::Key("GET b/1".into())), 1);
        assert_eq!(stores.stats().0, 0);
    }

    #[test]
    fn two_nodes_in_one_process_share_nothing() {
        let (a, b) = (CacheStores::default(), CacheStores::default());
        let (ma, mb) = (a.begin(), b.begin());
        assert!(!Arc::ptr_eq(&a.store(ma, 100), &b.store(mb, 100)));
        let _lead = a.collapse().try_lead("k").expect("leads on a");
        assert!(
            b.collapse().try_lead("k").is_some(),
            "b has its own flights"
        );
    }
}
