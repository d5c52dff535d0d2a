//! An adaptive concurrency limit (AIMD, after Netflix's concurrency-limits):
//! the number of requests allowed in flight grows by one per good sample
//! while the limit is in use, and is multiplied by `backoff` when a sample
//! is slow (latency past the baseline's tolerance) or failed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tuning of an [`Adaptive`] limit.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveConfig {
    /// Lowest limit; the limit never falls below it, so samples keep coming
    /// and the limit can recover.
    pub min_limit: u64,
    /// Highest limit.
    pub max_limit: u64,
    /// Limit at start.
    pub initial_limit: u64,
    /// Factor applied on a slow or failed sample (0.5–0.99).
    pub backoff: f64,
    /// A sample is slow when its latency exceeds
    /// `baseline × tolerance + slack`.
    pub tolerance: f64,
    /// Absolute slack added to the threshold (absorbs jitter on fast
    /// upstreams).
    pub slack: Duration,
    /// The baseline is the lowest latency seen; it is re-learnt from the
    /// last window's lowest every `baseline_window`, so an upstream that
    /// stays slower for good becomes the new normal.
    pub baseline_window: Duration,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: u64,
    baseline: Option<Duration>,
    window_min: Option<Duration>,
    window_start: Instant,
}

/// One adaptive limit (per route).
#[derive(Debug)]
pub struct Adaptive {
    cfg: AdaptiveConfig,
    state: Mutex<State>,
}

/// An admitted request. Report its latency with [`Permit::sample`]; the
/// place is freed when it is dropped.
pub struct Permit {
    limit: Arc<Adaptive>,
}

impl Adaptive {
    /// A limit at `cfg.initial_limit`.
    pub fn new(cfg: AdaptiveConfig) -> Adaptive {
        Adaptive {
            cfg,
            state: Mutex::new(State {
                limit: cfg.initial_limit as f64,
                in_flight: 0,
                baseline: None,
                window_min: None,
                window_start: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request if fewer than the limit are in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut s = self.lock();
        if s.in_flight as f64 >= s.limit.floor() {
            return None;
        }
        s.in_flight += 1;
        Some(Permit {
            limit: self.clone(),
        })
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> u64 {
        self.lock().limit.floor() as u64
    }

    fn sample(&self, latency: Duration, ok: bool) {
        let c = &self.cfg;
        let mut s = self.lock();
        let now = Instant::now();
        if now.duration_since(s.window_start) >= c.baseline_window {
            if let Some(m) = s.window_min {
                s.baseline = Some(m);
            }
            s.window_min = None;
            s.window_start = now;
        }
        if ok {
            s.window_min = Some(s.window_min.map_or(latency, |m| m.min(latency)));
        }
        let baseline = match s.baseline {
            Some(b) if ok && latency < b => {
                s.baseline = Some(latency);
                latency
            }
            Some(b) => b,
            None if ok => {
                s.baseline = Some(latency);
                latency
            }
            None => latency,
        };
        let threshold = baseline.mul_f64(c.tolerance) + c.slack;
        if !ok || latency > threshold {
            s.limit = (s.limit * c.backoff).max(c.min_limit as f64);
        } else if s.in_flight * 2 >= s.limit.floor() as u64 {
            s.limit = (s.limit + 1.0).min(c.max_limit as f64);
        }
    }
}

impl Permit {
    /// Reports the request's latency and whether it succeeded.
    pub fn sample(&self, latency: Duration, ok: bool) {
        self.limit.sample(latency, ok);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limit.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig {
            min_limit: 1,
            max_limit: 50,
            initial_limit: 10,
            backoff: 0.5,
            tolerance: 2.0,
            slack: Duration::from_millis(5),
            baseline_window: Duration::from_secs(3600),
        }
    }

    #[test]
    fn limit_falls_on_slow_samples_and_recovers() {
        let a = Arc::new(Adaptive::new(cfg()));
        let ms = Duration::from_millis;
        let held: Vec<_> = (0..10).map(|_| a.try_acquire().unwrap()).collect();
        assert!(a.try_acquire().is_none());
        held[0].sample(ms(10), true);
        assert_eq!(a.limit(), 11);
        for p in &held[1..5] {
            p.sample(ms(200), true);
        }
        assert_eq!(a.limit(), 1);
        drop(held);
        let p = a.try_acquire().unwrap();
        assert!(a.try_acquire().is_none());
        p.sample(ms(1), false);
        assert_eq!(a.limit(), 1);
        drop(p);
        for _ in 0..20 {
            let held: Vec<_> = std::iter::from_fn(|| a.try_acquire()).collect();
            for p in &held {
                p.sample(ms(10), true);
            }
        }
        assert_eq!(a.limit(), 50);
    }
}
