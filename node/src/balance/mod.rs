//! Load balancers: given an upstream's targets and the request, choose the
//! target index for the next attempt.
//!
//! This module owns the five algorithms of [`BalancerConfig`] (smooth
//! weighted round robin, weighted least connections, weighted random,
//! ketama consistent hashing and peak-EWMA with power-of-two-choices) and
//! the per-target load they track through [`Balancer::on_start`] and
//! [`Balancer::on_end`]. It does not own target health, retries or sticky
//! sessions: the proxy folds those into the `eligible` filter it passes to
//! [`Balancer::pick`]. Design notes: `docs/adr/0003-load-balancing.md`.
//!
//! Every pick runs on the request path of all worker threads at once, so
//! picks never allocate, never wait for a lock and make no syscall (beyond
//! seeding a thread's random generator on its first pick); shared state is
//! atomics, plus one mutex for round robin that is only ever `try_lock`ed.

mod hash;
mod least_conn;
mod peak_ewma;
mod random;
mod round_robin;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{BalancerConfig, TargetConfig};

use hash::ConsistentHash;
use least_conn::LeastConn;
use peak_ewma::{Clock, PeakEwma};
use random::WeightedRandom;
use round_robin::SmoothWrr;

/// The request parts a balancer may hash on.
pub struct PickCtx<'a> {
    /// The client's IP address.
    pub client_ip: IpAddr,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// Path and query, e.g. `/a/b?x=1`.
    pub path_and_query: &'a str,
}

/// Chooses a target index for each request. One per upstream, shared by all
/// worker threads.
pub struct Balancer {
    algo: Algo,
    rng: RngSource,
}

enum Algo {
    RoundRobin(SmoothWrr),
    LeastConn(LeastConn),
    Random(WeightedRandom),
    ConsistentHash(ConsistentHash),
    PeakEwma(PeakEwma),
}

// === impl Balancer ===

impl Balancer {
    /// Builds the balancer for an upstream's targets (same order as config).
    ///
    /// Never fails: targets with weight 0 are kept (indices stay those of
    /// the config) but never picked.
    pub fn new(cfg: &BalancerConfig, targets: &[TargetConfig]) -> Self {
        Self::build(cfg, targets, RngSource::Thread, Clock::monotonic())
    }

    /// A balancer whose random choices come from `seed` and whose clock only
    /// moves through [`Balancer::advance_clock`], so tests are reproducible.
    #[cfg(test)]
    pub(crate) fn with_seed(cfg: &BalancerConfig, targets: &[TargetConfig], seed: u64) -> Self {
        Self::build(
            cfg,
            targets,
            RngSource::Seeded(AtomicU64::new(seed)),
            Clock::manual(),
        )
    }

    /// Moves the clock of a [`Balancer::with_seed`] balancer forward.
    #[cfg(test)]
    pub(crate) fn advance_clock(&self, by: Duration) {
        if let Algo::PeakEwma(p) = &self.algo {
            p.clock().advance(by);
        }
    }

    fn build(cfg: &BalancerConfig, targets: &[TargetConfig], rng: RngSource, clock: Clock) -> Self {
        let weights: Box<[u32]> = targets.iter().map(|t| t.weight).collect();
        let algo = match cfg {
            BalancerConfig::RoundRobin => Algo::RoundRobin(SmoothWrr::new(weights)),
            BalancerConfig::LeastConn => Algo::LeastConn(LeastConn::new(weights)),
            BalancerConfig::Random => Algo::Random(WeightedRandom::new(weights)),
            BalancerConfig::ConsistentHash { hash_on } => {
                Algo::ConsistentHash(ConsistentHash::new(hash_on, targets))
            }
            BalancerConfig::PeakEwma { decay } => {
                Algo::PeakEwma(PeakEwma::new(weights, *decay, clock))
            }
        };
        Balancer { algo, rng }
    }

    /// Picks a target among those for which `eligible(i)` is true (healthy
    /// and not yet tried by this request).
    ///
    /// Returns `None` only when no eligible target has a weight above 0.
    /// `eligible` may be called several times for the same index; it should
    /// be cheap and must not block, since round robin calls it while
    /// holding its scores.
    pub fn pick(&self, ctx: &PickCtx<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let rng = Rng::new(&self.rng);
        match &self.algo {
            Algo::RoundRobin(b) => b.pick(eligible, &rng),
            Algo::LeastConn(b) => b.pick(eligible, &rng),
            Algo::Random(b) => b.pick(eligible, &rng),
            Algo::ConsistentHash(b) => b.pick(ctx, eligible),
            Algo::PeakEwma(b) => b.pick(eligible, &rng),
        }
    }

    /// A request to target `idx` started.
    pub fn on_start(&self, idx: usize) {
        match &self.algo {
            Algo::LeastConn(b) => b.on_start(idx),
            Algo::PeakEwma(b) => b.on_start(idx),
            // Round robin, random and hashing do not look at load.
            Algo::RoundRobin(_) | Algo::Random(_) | Algo::ConsistentHash(_) => {}
        }
    }

    /// A request to target `idx` ended after `elapsed` (always paired with
    /// `on_start`).
    pub fn on_end(&self, idx: usize, elapsed: Duration) {
        match &self.algo {
            Algo::LeastConn(b) => b.on_end(idx),
            Algo::PeakEwma(b) => b.on_end(idx, elapsed),
            Algo::RoundRobin(_) | Algo::Random(_) | Algo::ConsistentHash(_) => {}
        }
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, targets) = match &self.algo {
            Algo::RoundRobin(b) => ("round_robin", b.len()),
            Algo::LeastConn(b) => ("least_conn", b.len()),
            Algo::Random(b) => ("random", b.len()),
            Algo::ConsistentHash(b) => ("consistent_hash", b.len()),
            Algo::PeakEwma(b) => ("peak_ewma", b.len()),
        };
        f.debug_struct("Balancer")
            .field("kind", &kind)
            .field("targets", &targets)
            .finish_non_exhaustive()
    }
}

// === impl Rng ===

/// Where a balancer's random numbers come from.
enum RngSource {
    /// fastrand's per-thread generator: no cache line shared between
    /// worker threads.
    Thread,
    /// One shared, seeded stream, for reproducible tests.
    #[cfg(test)]
    Seeded(AtomicU64),
}

impl RngSource {
    fn fork(&self) -> fastrand::Rng {
        match self {
            RngSource::Thread => fastrand::Rng::new(),
            #[cfg(test)]
            RngSource::Seeded(state) => {
                // Stepping the state by an odd constant and letting fastrand
                // mix it gives a well-spread stream that stays lock-free.
                const STEP: u64 = 0x9e37_79b9_7f4a_7c15;
                fastrand::Rng::with_seed(state.fetch_add(STEP, Ordering::Relaxed))
            }
        }
    }
}

/// Random numbers for one pick. The generator is forked from the source on
/// first use, so a pick that draws many numbers (ties in least connections)
/// touches thread-local storage once, and one that draws none not at all.
struct Rng<'a> {
    source: &'a RngSource,
    local: Cell<Option<fastrand::Rng>>,
}

impl<'a> Rng<'a> {
    fn new(source: &'a RngSource) -> Self {
        Rng {
            source,
            local: Cell::new(None),
        }
    }

    /// A generator that goes on with one seeded stream, for tests that
    /// call an algorithm directly.
    #[cfg(test)]
    fn from_seed(seed: u64) -> Rng<'static> {
        // Never forked from: the local generator is already there.
        static THREAD_RNG: RngSource = RngSource::Thread;
        Rng {
            source: &THREAD_RNG,
            local: Cell::new(Some(fastrand::Rng::with_seed(seed))),
        }
    }

    /// A uniform integer in `0..n`; `n` must be above 0.
    fn below(&self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut rng = self.local.take().unwrap_or_else(|| self.source.fork());
        let r = rng.u64(..n);
        self.local.set(Some(rng));
        r
    }
}

// === helpers shared by the algorithms ===

/// Weighted random choice among the eligible targets with weight above 0,
/// in one pass and without allocating: the `k`-th candidate replaces the
/// choice so far with probability `w_k / (w_1 + ... + w_k)`, which leaves
/// every candidate chosen with probability `w_i / total`.
fn weighted_random(
    weights: &[u32],
    eligible: &dyn Fn(usize) -> bool,
    rng: &Rng<'_>,
) -> Option<usize> {
    let mut total = 0u64;
    let mut chosen = None;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 || !eligible(i) {
            continue;
        }
        total += u64::from(w);
        if rng.below(total) < u64::from(w) {
            chosen = Some(i);
        }
    }
    chosen
}

/// Keeps per-target counters on their own cache line, so that worker
/// threads busy with different targets do not contend.
#[repr(align(64))]
#[derive(Default)]
struct Padded<T>(T);

/// Counts requests in flight per target. Pairs of `on_start`/`on_end` come
/// from the proxy; an index out of range or an unpaired `on_end` is a bug
/// there, caught in debug builds and otherwise ignored rather than allowed
/// to wrap the counter (which would shun the target forever).
struct InFlight(Box<[Padded<AtomicU64>]>);

impl InFlight {
    fn new(n: usize) -> Self {
        InFlight((0..n).map(|_| Padded::default()).collect())
    }

    fn get(&self, idx: usize) -> u64 {
        self.0[idx].0.load(Ordering::Relaxed)
    }

    fn start(&self, idx: usize) {
        debug_assert!(idx < self.0.len(), "on_start for unknown target {idx}");
        if let Some(c) = self.0.get(idx) {
            c.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn end(&self, idx: usize) {
        debug_assert!(idx < self.0.len(), "on_end for unknown target {idx}");
        if let Some(c) = self.0.get(idx) {
            let paired =
                c.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
            debug_assert!(paired, "on_end without on_start for target {idx}");
        }
    }
}
