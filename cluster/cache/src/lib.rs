//! weir's response cache machinery, below the gateway and the cluster:
//! the RFC 9111 rules ([`policy`]), what a store holds ([`Cached`]), the
//! store seams ([`CacheStore`], [`CacheStoreProvider`]) with the
//! node-local store on `moka` ([`LocalStore`]), request collapsing behind
//! the [`Collapse`] seam ([`collapse`]), and a node's stores across config
//! builds ([`CacheStores`]).
//!
//! It knows nothing of routes, plugins or how a request maps to a key:
//! the `proxy-cache` plugin in `weir-node` decides what to look up and
//! store (ADR 0020). It depends on no other weir crate, so `weir-cluster`
//! (an owner node answering over the mesh) and `weir-storage` (a Redis
//! tier) can implement its traits without depending on the gateway.
//! ADR 0030.

pub mod collapse;
pub mod local;
pub mod policy;
pub mod stores;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

pub use collapse::{Collapse, Collapser, Flight, Leader};
pub use local::{LocalProvider, LocalStore};
pub use stores::CacheStores;

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

/// Where responses are kept.
///
/// A lookup is async: a remote tier (the key's owner node over the mesh,
/// or Redis) may answer it over the network, without blocking a thread;
/// an implementation bounds that wait and answers `None` rather than fail.
/// Writes and purges return at once: they act on what this node holds and
/// a remote tier forwards them in the background. The local store answers
/// everything from memory.
#[async_trait::async_trait]
pub trait CacheStore: Send + Sync + 'static {
    /// The value under `key`, if any (here, or from the tier that owns it).
    async fn get(&self, key: &str) -> Option<Cached>;

    /// Stores `value` under `key`, replacing what was there. The store
    /// may refuse it (too large, not admitted): a cache is best effort.
    fn insert(&self, key: &str, value: Cached);

    /// Removes `key` and its variants held here; returns how many entries.
    fn purge(&self, key: &str) -> u64;

    /// Removes every key starting with `prefix` held here; returns how
    /// many.
    fn purge_prefix(&self, prefix: &str) -> u64;

    /// Entries held here (after pending evictions are applied).
    fn entry_count(&self) -> u64;

    /// Bytes held here, as the store weighs them.
    fn weighted_bytes(&self) -> u64;
}

/// Opens the store of a given capacity. [`CacheStores`] calls it while a
/// snapshot is built (never on the request path) and keeps the store
/// while the capacity does not change. It must return at once: a tier
/// that connects to peers or Redis does so in the background.
pub trait CacheStoreProvider: Send + Sync + 'static {
    /// A store holding at most `max_bytes` on this node.
    fn open(&self, max_bytes: u64) -> Arc<dyn CacheStore>;
}

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// One key (and its variants).
    Key(String),
    /// Every key starting with this.
    Prefix(String),
}
