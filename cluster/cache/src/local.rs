//! The node-local [`CacheStore`]: a `moka` cache bounded in bytes (each
//! entry weighs its body and headers), with TinyLFU admission (moka's
//! default: a new entry only displaces colder ones) and a per-entry expiry
//! at the end of its usable life (fresh, then stale-usable).

use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::{CacheStore, CacheStoreProvider, Cached, VARY_SEP};

/// How long past its freshness an entry with a validator is kept, so it
/// can be revalidated with a cheap 304 instead of fetched again.
const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(600);

/// The in-memory store.
pub struct LocalStore {
    cache: moka::sync::Cache<Box<str>, Cached>,
    max_bytes: u64,
}

struct Expire;

impl moka::Expiry<Box<str>, Cached> for Expire {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        value: &Cached,
        _now: Instant,
    ) -> Option<Duration> {
        Some(keep_for(value))
    }

    fn expire_after_update(
        &self,
        _key: &Box<str>,
        value: &Cached,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(keep_for(value))
    }
}

/// How long a value is worth keeping from now: fresh life left, then the
/// longest stale use it allows.
fn keep_for(value: &Cached) -> Duration {
    match value {
        Cached::Response(r) => {
            let f = &r.freshness;
            let left = f.lifetime.saturating_sub(f.initial_age);
            let stale = f
                .stale_while_revalidate
                .max(f.stale_if_error)
                .max(if r.has_validator() {
                    KEEP_FOR_REVALIDATION.max(f.lifetime)
                } else {
                    Duration::ZERO
                });
            left.saturating_add(stale)
        }
        // The list of varying headers outlives any single variant.
        Cached::Variants(_) => Duration::from_secs(24 * 3600),
    }
}

#[expect(
    clippy::borrowed_box,
    reason = "moka's weigher takes the key type by reference"
)]
fn weigh(key: &Box<str>, value: &Cached) -> u32 {
    u32::try_from(value.weight() + key.len() as u64).unwrap_or(u32::MAX)
}

impl LocalStore {
    /// A store holding at most `max_bytes` (as weighed).
    pub fn new(max_bytes: u64) -> LocalStore {
        LocalStore {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weigh)
                .expire_after(Expire)
                .build(),
            max_bytes,
        }
    }

    /// The capacity in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The value under `key`, from memory.
    pub fn get_now(&self, key: &str) -> Option<Cached> {
        self.cache.get(key)
    }

    /// Removes `key` and its variants; returns how many entries.
    pub fn purge_counted(&self, key: &str) -> u64 {
        let had = u64::from(self.cache.remove(key).is_some());
        let mut variants = String::with_capacity(key.len() + 1);
        variants.push_str(key);
        variants.push(VARY_SEP);
        had + self.purge_prefix(&variants)
    }

    /// Applies pending evictions and expiries.
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}

#[async_trait::async_trait]
impl CacheStore for LocalStore {
    async fn get(&self, key: &str) -> Option<Cached> {
        self.get_now(key)
    }

    fn insert(&self, key: &str, value: Cached) {
        if value.weight() > self.max_bytes {
            return;
        }
        self.cache.insert(key.into(), value);
    }

    fn purge(&self, key: &str) -> u64 {
        self.purge_counted(key)
    }

    fn purge_prefix(&self, prefix: &str) -> u64 {
        // A purge is rare and operator-driven: one pass over the keys.
        let keys: Vec<_> = self
            .cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in keys {
            if self.cache.remove(k.as_ref()).is_some() {
                n += 1;
            }
        }
        n
    }

    fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

/// Opens a [`LocalStore`]: the provider of a node whose cache is its own
/// (`scope: node`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalProvider;

impl CacheStoreProvider for LocalProvider {
    fn open(&self, max_bytes: u64) -> Arc<dyn CacheStore> {
        Arc::new(LocalStore::new(max_bytes))
    }
}

/// A fresh 200 with a body of `len` bytes, for tests.
#[cfg(test)]
pub(crate) fn test_response(len: usize) -> Cached {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use crate::CachedResponse;
    use crate::policy::Freshness;

    Cached::Response(Arc::new(CachedResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'x'; len]),
        freshness: Freshness {
            lifetime: Duration::from_secs(600),
            initial_age: Duration::ZERO,
            response_time: std::time::SystemTime::now(),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            always_revalidate: false,
            no_stale: false,
        },
        vary: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderName};

    use super::*;
    use crate::variant_key;

    fn response(len: usize) -> Cached {
        test_response(len)
    }

    #[test]
    fn holds_at_most_its_bytes() {
        let store = LocalStore::new(100_000);
        for i in 0..1_000 {
            store.insert(&format!("k{i}"), response(1_000));
        }
        assert!(
            store.weighted_bytes() <= 100_000,
            "{} bytes",
            store.weighted_bytes()
        );
        assert!(store.entry_count() < 100);
        // Larger than the whole store: refused.
        store.insert("huge", response(200_000));
        assert!(store.get_now("huge").is_none());
    }

    #[test]
    fn purges_keys_with_their_variants_and_prefixes() {
        let store = LocalStore::new(10_000_000);
        let names: Arc<[HeaderName]> = vec![http::header::ACCEPT_LANGUAGE].into();
        let mut req = HeaderMap::new();
        req.insert(http::header::ACCEPT_LANGUAGE, "en".parse().unwrap());
        store.insert("GET a/x", Cached::Variants(names.clone()));
        store.insert(&variant_key("GET a/x", &names, &req), response(10));
        store.insert("GET a/xy", response(10));
        store.insert("GET a/y", response(10));
        store.insert("GET b/x", response(10));
        assert_eq!(store.purge_counted("GET a/x"), 2, "the key and its variant");
        assert!(
            store.get_now("GET a/xy").is_some(),
            "a longer key is another key"
        );
        assert_eq!(store.purge_prefix("GET a/"), 2);
        assert!(store.get_now("GET b/x").is_some());
        assert_eq!(store.entry_count(), 1);
    }
}
