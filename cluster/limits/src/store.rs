//! The seams between a limit and where its counts live: the name of a
//! limit ([`LimitId`]), the request-path half of a store
//! ([`CounterStore`], synchronous), what opens a store for a limit
//! ([`CounterStoreProvider`]) and the background half of a store whose
//! authority is elsewhere ([`CreditAuthority`], async).
//!
//! The split follows one rule: a request decides from what the node holds,
//! at once, without awaiting anything. A store backed by the cluster mesh
//! or by Redis keeps a local credit per key, spends it on the request path
//! and settles with its authority in a background task. The node-local
//! store ([`crate::LocalCounters`]) is its own authority and implements
//! only the synchronous half.

use std::sync::Arc;
use std::time::Duration;

use crate::limiter::{BucketPolicy, Verdict, WindowPolicy};

/// Longest key the stores keep, in bytes (longer keys are cut); with
/// `max_keys` this bounds a store's memory.
pub const MAX_KEY_BYTES: usize = 1024;

/// What names one limit. Two builds of a config that give a limit the same
/// id share its counts; a changed id is a new limit that starts empty.
///
/// Every part is derived from the config alone, so every node of a cluster
/// computes the same id for the same limit: a cluster-wide store can use
/// it as the name it exchanges with its peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitId {
    /// Where the limit is configured: `global`, `service:<id>`,
    /// `route:<id>` or `consumer:<name>`.
    pub owner: Box<str>,
    /// The plugin type, e.g. `limit-count`.
    pub plugin: Box<str>,
    /// [`fingerprint`] of the plugin's own config, in a canonical form.
    pub config: u64,
}

impl std::fmt::Display for LimitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{:016x}", self.owner, self.plugin, self.config)
    }
}

/// A stable 64-bit fingerprint (FNV-1a) of a limit's canonical config.
/// Stable across processes, builds and machines, unlike `std`'s hasher.
pub fn fingerprint(canonical: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How the store of one limit is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSpec {
    /// Most keys held at once; beyond it the least useful are dropped.
    pub max_keys: u64,
    /// A key unused this long is dropped (its limit is whole again by
    /// then).
    pub idle: Duration,
}

/// The request-path half of a counter store: per-key limiter state.
///
/// Both methods check and count in one step and answer at once from what
/// this node holds; they never wait on I/O or on another task. A store
/// whose authority is remote answers from its local credit and view, and
/// settles through a [`CreditAuthority`] in the background, so a request
/// never waits for the network.
pub trait CounterStore: Send + Sync + 'static {
    /// Counts a request of `key` against a window limit (fixed or sliding)
    /// at `now_us`, if the limit admits it.
    fn hit_window(&self, key: &str, policy: &WindowPolicy, now_us: u64, cost: u64) -> Verdict;

    /// Takes a token from `key`'s bucket at `now_us`, if there is one (or
    /// a place in the queue, in delay mode).
    fn hit_bucket(&self, key: &str, policy: &BucketPolicy, now_us: u64) -> Verdict;

    /// How many keys the store holds (for tests and status pages).
    fn len(&self) -> u64;

    /// Whether the store holds no key.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens the store of a limit. The node's registry calls it once per new
/// [`LimitId`] while a snapshot is built (never on the request path) and
/// keeps the store for as long as the limit's config does not change.
///
/// It must return at once: a store that needs a connection or a credit
/// starts empty (answering from its fair share) and fills in the
/// background. The node-local provider is [`crate::LocalProvider`]; a
/// mesh-backed one lives in `weir-cluster`, a Redis-backed one in
/// `weir-storage`.
pub trait CounterStoreProvider: Send + Sync + 'static {
    /// A store for the limit `id`, sized by `spec`.
    fn open(&self, id: &LimitId, spec: &CounterSpec) -> Arc<dyn CounterStore>;
}

/// Credit handed to a node by a limit's authority for one key and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Start of the window the credit is for (µs since the Unix epoch).
    pub window_start_us: u64,
    /// Requests (cost units) this node may admit from it.
    pub units: u64,
    /// What the whole scope has consumed of the window, as the authority
    /// knows it (for truthful `RateLimit-Remaining`).
    pub consumed: u64,
}

/// What a node admitted for one key of a limit since it last settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The limit key.
    pub key: Box<str>,
    /// Start of the window the units were spent in.
    pub window_start_us: u64,
    /// Units admitted.
    pub used: u64,
}

/// Why a background settlement with an authority did not happen. The
/// store keeps deciding from what it holds (then its fair share); a
/// request never fails because of it.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The authority (owner node, Redis) cannot be reached.
    #[error("the limit's authority is unreachable: {0}")]
    Unreachable(String),
    /// It did not answer in time.
    #[error("the limit's authority did not answer within {0:?}")]
    Timeout(Duration),
    /// It answered with a refusal (e.g. unknown limit, bad frame).
    #[error("the limit's authority refused: {0}")]
    Refused(String),
}

/// The background half of a counter store whose counts are kept elsewhere
/// (an owner node over the mesh, or Redis). Only the store's own
/// background task calls it; the request path never awaits it.
///
/// The authority keeps, per limit, key and window, `consumed + outstanding
/// ≤ limit`; a node spends the credit it was granted, asks for more before
/// it runs out, and gives back what it did not spend when the window ends.
/// The node-local store is its own authority and does not implement this.
#[async_trait::async_trait]
pub trait CreditAuthority: Send + Sync + 'static {
    /// Asks for up to `want` units for `key` in the window starting at
    /// `window_start_us` of the window limit `policy`. The grant may be
    /// smaller (or zero) as the window's remainder shrinks.
    async fn acquire(
        &self,
        id: &LimitId,
        key: &str,
        policy: &WindowPolicy,
        window_start_us: u64,
        want: u64,
    ) -> Result<Grant, SettleError>;

    /// Gives back `unused` units of a grant for `key` in that window.
    async fn release(
        &self,
        id: &LimitId,
        key: &str,
        window_start_us: u64,
        unused: u64,
    ) -> Result<(), SettleError>;

    /// Reports what was admitted since the last report, for stores that
    /// settle by counting (token buckets, shadow limits) rather than by
    /// credit.
    async fn report(&self, id: &LimitId, usage: &[Usage]) -> Result<(), SettleError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_tell_configs_apart() {
        // FNV-1a test vectors: the value must not change between releases,
        // nodes of one cluster compare it.
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fingerprint(b"count: 1"), fingerprint(b"count: 2"));
        let id = LimitId {
            owner: "route:r1".into(),
            plugin: "limit-count".into(),
            config: 0xab,
        };
        assert_eq!(id.to_string(), "route:r1/limit-count/00000000000000ab");
    }
}
