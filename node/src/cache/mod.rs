//! The response cache's storage: the [`CacheStore`] trait with its
//! node-local implementation on `moka` ([`LocalStore`]), the node's
//! stores and purges ([`node_store`], [`purge`]), request collapsing
//! ([`Collapser`]), and the RFC 9111 rules ([`policy`]).
//!
//! The `proxy-cache` plugin (`crate::plugin`) decides what to look up and
//! store; this module knows nothing of routes. See ADR 0020.

pub mod collapse;
pub mod local;
pub mod policy;

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

pub use collapse::{Collapser, Flight};
pub use local::LocalStore;

/// Separates a key from the `Vary` part of its variants' keys, so a purge
/// of a key (or of a prefix) also removes its variants.
pub const VARY_SEP: char = '\u{1f}';

/// A stored response.
#[derive(Debug)]
pub struct CachedResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers as the upstream sent them (hop-by-hop fields removed).
    pub headers: HeaderMap,
    /// The whole body; served by reference count, never copied.
    pub body: Bytes,
    /// How it ages.
    pub freshness: policy::Freshness,
    /// The request header values it was selected by (`Vary`).
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl CachedResponse {
    /// Whether it carries a validator (`ETag` or `Last-Modified`).
    pub fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    /// Bytes it takes in a store (body, headers, and a fixed overhead).
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 256) as u64
    }
}

/// What a store holds under a key.
#[derive(Debug, Clone)]
pub enum Cached {
    /// A response.
    Response(Arc<CachedResponse>),
    /// The key's responses vary on these request headers: each variant is
    /// stored under [`variant_key`].
    Variants(Arc<[HeaderName]>),
}

impl Cached {
    /// Bytes it takes in a store.
    pub fn weight(&self) -> u64 {
        match self {
            Cached::Response(r) => r.weight(),
            Cached::Variants(names) => {
                64 + names.iter().map(|n| n.as_str().len()).sum::<usize>() as u64
            }
        }
    }
}

/// The key of one variant of `key`: the values of the `names` headers in
/// `req` (absent and present-but-empty differ).
pub fn variant_key(key: &str, names: &[HeaderName], req: &HeaderMap) -> String {
    let mut out = String::with_capacity(key.len() + 32);
    out.push_str(key);
    out.push(VARY_SEP);
    for n in names {
        out.push_str(n.as_str());
        match req.get(n).map(|v| v.to_str()) {
            Some(Ok(v)) => {
                out.push('=');
                out.push_str(v);
            }
            Some(Err(_)) => out.push_str("=\u{fffd}"),
            None => {}
        }
        out.push('\n');
    }
    out
}

/// Where responses are kept. Lookups are async so a remote tier (a peer
/// that owns the key, or Redis) can answer over the network without
/// blocking a thread; writes and purges return at once (a remote tier
/// sends them in the background). The local store answers from memory.
#[async_trait::async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// The value under `key`, if any.
    async fn get(&self, key: &str) -> Option<Cached>;

    /// Stores `value` under `key`, replacing what was there. The store
    /// may refuse it (too large, not admitted): a cache is best effort.
    fn insert(&self, key: &str, value: Cached);

    /// Removes `key` and its variants; true when something was there.
    fn purge(&self, key: &str) -> bool;

    /// Removes every key starting with `prefix`; returns how many.
    fn purge_prefix(&self, prefix: &str) -> u64;

    /// Entries held (after pending evictions are applied).
    fn entry_count(&self) -> u64;

    /// Bytes held, as the store weighs them.
    fn weighted_bytes(&self) -> u64;
}

// === the node's stores ===

/// The live stores of this process by capacity: every route of a
/// snapshot shares one, and a reload with the same capacity keeps it.
static STORES: Mutex<Vec<(u64, Weak<LocalStore>)>> = Mutex::new(Vec::new());

/// The node's store of `max_bytes` capacity, shared by every route (and
/// by the next snapshot when the capacity does not change).
pub fn node_store(max_bytes: u64) -> Arc<LocalStore> {
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.retain(|(_, w)| w.strong_count() > 0);
    if let Some(s) = stores
        .iter()
        .find(|(cap, _)| *cap == max_bytes)
        .and_then(|(_, w)| w.upgrade())
    {
        return s;
    }
    let s = Arc::new(LocalStore::new(max_bytes));
    stores.push((max_bytes, Arc::downgrade(&s)));
    s
}

fn live_stores() -> Vec<Arc<LocalStore>> {
    let stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.iter().filter_map(|(_, w)| w.upgrade()).collect()
}

/// The node's in-flight fetches, shared by every route and store.
pub fn collapser() -> &'static Arc<Collapser> {
    static C: std::sync::OnceLock<Arc<Collapser>> = std::sync::OnceLock::new();
    C.get_or_init(Arc::default)
}

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// One key (and its variants).
    Key(String),
    /// Every key starting with this.
    Prefix(String),
}

/// Purges this node's stores; returns how many entries were removed.
pub fn purge(what: &Purge) -> u64 {
    live_stores()
        .iter()
        .map(|s| match what {
            Purge::Key(k) => s.purge_counted(k),
            Purge::Prefix(p) => s.purge_prefix(p),
        })
        .sum()
}

/// Entries and bytes held by this node's stores.
pub fn stats() -> (u64, u64) {
    live_stores().iter().fold((0, 0), |(n, b), s| {
        (n + s.entry_count(), b + s.weighted_bytes())
    })
}
