//! Load balancers. (Being written.)

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{BalancerConfig, TargetConfig};

/// The request parts a balancer may hash on.
pub struct PickCtx<'a> {
    /// The client's IP address.
    pub client_ip: IpAddr,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// Path and query, e.g. `/a/b?x=1`.
    pub path_and_query: &'a str,
}

/// Chooses a target index for each request.
pub struct Balancer {
    n: usize,
    next: std::sync::atomic::AtomicUsize,
}

impl Balancer {
    /// Builds the balancer for an upstream's targets (same order as config).
    pub fn new(_cfg: &BalancerConfig, targets: &[TargetConfig]) -> Self {
        Balancer {
            n: targets.len(),
            next: Default::default(),
        }
    }

    /// Picks a target among those for which `eligible(i)` is true.
    pub fn pick(&self, _ctx: &PickCtx<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..self.n {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.n;
            if eligible(i) {
                return Some(i);
            }
        }
        None
    }

    /// A request to target `idx` started.
    pub fn on_start(&self, _idx: usize) {}

    /// A request to target `idx` ended after `elapsed` (always paired with
    /// `on_start`).
    pub fn on_end(&self, _idx: usize, _elapsed: Duration) {}
}
