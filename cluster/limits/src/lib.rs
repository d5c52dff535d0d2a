//! weir's rate and concurrency limits, below the gateway and the cluster:
//! the limiter algorithms as pure arithmetic over an explicit clock
//! ([`limiter`]), the counter-store seams that a node-local, mesh-backed
//! or Redis-backed store implements ([`store`]), the node-local store on
//! `moka` ([`local`]), in-flight counts ([`conn`]), the adaptive
//! concurrency limit ([`adaptive`]), the registry that keeps a limit's
//! state across config builds ([`registry`]), and the two halves of a
//! cluster-wide window limit: the owner's credit book ([`ledger`]) and the
//! store that spends its credit on the request path ([`credit`]).
//!
//! It knows nothing of HTTP, requests, routes or plugins: how a request
//! maps to a limit key, and the `RateLimit-*` headers, are the gateway's
//! (`weir-node`). It depends on no other weir crate, so `weir-cluster`
//! (mesh-backed stores) and `weir-storage` (Redis-backed ones) can
//! implement its traits without depending on the gateway. ADR 0030.

pub mod adaptive;
pub mod conn;
pub mod credit;
pub mod ledger;
pub mod limiter;
pub mod local;
pub mod registry;
pub mod store;

use std::time::{SystemTime, UNIX_EPOCH};

pub use credit::{
    CreditConfig, CreditCounters, CreditProvider, CreditStats, FairShare, LedgerAuthority,
};
pub use ledger::{CreditLedger, HeldReport, LedgerConfig};
pub use limiter::{BucketPolicy, Mode, Outcome, Scale, Verdict, WindowPolicy};
pub use local::{LocalCounters, LocalProvider};
pub use registry::{BuildMark, LimitStores};
pub use store::{CounterSpec, CounterStore, CounterStoreProvider, CreditAuthority, LimitId};

/// Wall-clock microseconds since the Unix epoch: the clock the window and
/// bucket stores run on (wall clock, so stores on several nodes agree on
/// window boundaries).
pub fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
