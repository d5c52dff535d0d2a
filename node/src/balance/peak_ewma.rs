//! Peak-EWMA latency with power-of-two-choices, after Finagle and linkerd.
//!
//! Each target keeps an estimate of its latency. A response slower than the
//! estimate replaces it at once (the peak); a faster one is blended in with
//! weight `1 - exp(-Δ/decay)`, `Δ` being the time since the previous
//! response, so the estimate comes down over about `decay`. Between
//! responses the estimate read by picks also decays toward 0 with the same
//! time constant: a target that was shunned for being slow is tried again
//! after a while instead of never, which is how it recovers.
//!
//! A pick draws two distinct eligible targets uniformly at random and takes
//! the one with the lower cost `estimate × (in_flight + 1) / weight` (a
//! weighted coin decides a tie). Comparing two random targets rather than
//! all of them keeps one briefly attractive target from drawing every
//! request at once.
//!
//! A fresh target starts at [`DEFAULT_RTT`] (1 ms), decaying from the moment
//! the balancer is built; the estimate read by a pick never drops below
//! [`MIN_RTT_NS`] (1 µs), because at 0 the in-flight factor would stop
//! counting and a target back from a long idle spell would draw every
//! request until its first response.
//!
//! Lock-free: each target's estimate is an `f64` stored as bits in an
//! `AtomicU64` next to the time of its last update, and picks only read.
//! Responses of the same target finishing together update the estimate with
//! a compare-and-swap loop so neither is lost; the timestamp is a separate
//! store, so a pick may pair a new estimate with the previous timestamp (or
//! the reverse) for a moment. That decays the estimate a little too much or
//! too little for one pick, which a load signal can afford; locking every
//! pick could not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{InFlight, Padded, Rng};

/// Latency assumed for a target that has not answered yet.
pub(super) const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// Floor of the estimate a pick uses, in nanoseconds.
const MIN_RTT_NS: f64 = 1_000.0;

pub(super) struct PeakEwma {
    weights: Box<[u32]>,
    /// Targets with weight above 0, the only ones ever drawn.
    positive: Box<[u32]>,
    estimates: Box<[Padded<Estimate>]>,
    in_flight: InFlight,
    decay_ns: f64,
    clock: Clock,
}

/// One target's latency estimate.
struct Estimate {
    /// Nanoseconds, as `f64` bits.
    rtt_ns: AtomicU64,
    /// [`Clock::now_ns`] of the last update.
    at_ns: AtomicU64,
}

impl PeakEwma {
    pub(super) fn new(weights: Box<[u32]>, decay: Duration, clock: Clock) -> Self {
        let now = clock.now_ns();
        let estimates = weights
            .iter()
            .map(|_| {
                Padded(Estimate {
                    rtt_ns: AtomicU64::new(nanos(DEFAULT_RTT).to_bits()),
                    at_ns: AtomicU64::new(now),
                })
            })
            .collect();
        let positive = (0..weights.len() as u32)
            .filter(|&i| weights[i as usize] > 0)
            .collect();
        PeakEwma {
            in_flight: InFlight::new(weights.len()),
            weights,
            positive,
            estimates,
            // Config validation rejects 0; a floor keeps the arithmetic
            // finite regardless.
            decay_ns: nanos(decay).max(1.0),
            clock,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    #[cfg(test)]
    pub(super) fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(super) fn pick(&self, eligible: &dyn Fn(usize) -> bool, rng: &Rng<'_>) -> Option<usize> {
        let m = self.positive.len() as u64;
        let (a, b) = match m {
            0 => return None,
            1 => {
                let i = self.positive[0] as usize;
                return eligible(i).then_some(i);
            }
            _ => {
                // Usually every target is eligible: draw the pair directly.
                let x = rng.below(m);
                let y = (x + 1 + rng.below(m - 1)) % m;
                let (a, b) = (
                    self.positive[x as usize] as usize,
                    self.positive[y as usize] as usize,
                );
                if eligible(a) && eligible(b) {
                    (a, b)
                } else {
                    match self.pair_among_eligible(eligible, rng) {
                        (None, _) => return None,
                        (Some(a), None) => return Some(a),
                        (Some(a), Some(b)) => (a, b),
                    }
                }
            }
        };
        let now = self.clock.now_ns();
        let (ca, cb) = (self.cost(a, now), self.cost(b, now));
        if ca < cb {
            Some(a)
        } else if cb < ca {
            Some(b)
        } else {
            let (wa, wb) = (u64::from(self.weights[a]), u64::from(self.weights[b]));
            Some(if rng.below(wa + wb) < wa { a } else { b })
        }
    }

    /// Two distinct eligible targets drawn uniformly, by reservoir sampling
    /// (the `k`-th candidate takes one of the two slots with probability
    /// `2/k`); fewer when fewer are eligible.
    fn pair_among_eligible(
        &self,
        eligible: &dyn Fn(usize) -> bool,
        rng: &Rng<'_>,
    ) -> (Option<usize>, Option<usize>) {
        let mut slots = [None, None];
        let mut k = 0u64;
        for &i in self.positive.iter() {
            let i = i as usize;
            if !eligible(i) {
                continue;
            }
            k += 1;
            if k <= 2 {
                slots[k as usize - 1] = Some(i);
            } else {
                let r = rng.below(k);
                if r < 2 {
                    slots[r as usize] = Some(i);
                }
            }
        }
        (slots[0], slots[1])
    }

    /// `estimate × (in_flight + 1) / weight` at time `now`.
    fn cost(&self, i: usize, now: u64) -> f64 {
        let e = &self.estimates[i].0;
        let rtt = f64::from_bits(e.rtt_ns.load(Ordering::Relaxed));
        let at = e.at_ns.load(Ordering::Relaxed);
        let decayed = rtt * self.decay_factor(now.saturating_sub(at));
        let pending = self.in_flight.get(i) as f64 + 1.0;
        decayed.max(MIN_RTT_NS) * pending / f64::from(self.weights[i])
    }

    fn decay_factor(&self, elapsed_ns: u64) -> f64 {
        (-(elapsed_ns as f64) / self.decay_ns).exp()
    }

    pub(super) fn on_start(&self, idx: usize) {
        self.in_flight.start(idx);
    }

    pub(super) fn on_end(&self, idx: usize, elapsed: Duration) {
        self.in_flight.end(idx);
        let Some(Padded(e)) = self.estimates.get(idx) else {
            return;
        };
        let rtt = nanos(elapsed);
        let now = self.clock.now_ns();
        let mut old = e.rtt_ns.load(Ordering::Relaxed);
        loop {
            let prev = f64::from_bits(old);
            let w = self.decay_factor(now.saturating_sub(e.at_ns.load(Ordering::Relaxed)));
            // A peak replaces the estimate; anything lower is blended in.
            // The blend is never below `rtt`, so one expression does both.
            let next = (prev * w + rtt * (1.0 - w)).max(rtt);
            match e.rtt_ns.compare_exchange_weak(
                old,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => old = current,
            }
        }
        e.at_ns.fetch_max(now, Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

// === impl Clock ===

/// Time for decaying estimates, in nanoseconds since the balancer was
/// built.
pub(super) enum Clock {
    Monotonic(Instant),
    /// Moves only when told to, for tests.
    #[cfg(test)]
    Manual(AtomicU64),
}

impl Clock {
    pub(super) fn monotonic() -> Self {
        Clock::Monotonic(Instant::now())
    }

    #[cfg(test)]
    pub(super) fn manual() -> Self {
        Clock::Manual(AtomicU64::new(0))
    }

    #[cfg(test)]
    pub(super) fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            t.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    fn now_ns(&self) -> u64 {
        match self {
            // `Instant::now` reads the vDSO clock: no syscall.
            Clock::Monotonic(base) => u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX),
            #[cfg(test)]
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    fn balancer(weights: &[u32]) -> PeakEwma {
        PeakEwma::new(weights.into(), DECAY, Clock::manual())
    }

    fn estimate_ms(b: &PeakEwma, i: usize) -> f64 {
        let e = &b.estimates[i].0;
        let rtt = f64::from_bits(e.rtt_ns.load(Ordering::Relaxed));
        let now = b.clock.now_ns();
        rtt * b.decay_factor(now - e.at_ns.load(Ordering::Relaxed)) / 1e6
    }

    /// Simulates one request: pick, then finish after the target's latency
    /// give or take 10%, since identical latencies would let differences of
    /// a few parts per thousand in the estimates decide every pick.
    fn serve(b: &PeakEwma, rng: &Rng<'_>, jitter: &mut fastrand::Rng, latency_ms: &[u64]) -> usize {
        let i = b.pick(&|_| true, rng).unwrap();
        let micros = latency_ms[i] * jitter.u64(900..=1100);
        b.on_start(i);
        b.on_end(i, Duration::from_micros(micros));
        i
    }

    #[test]
    fn estimate_jumps_to_peaks_and_decays_toward_lower_latencies() {
        let b = balancer(&[1]);
        assert!((estimate_ms(&b, 0) - 1.0).abs() < 1e-9);
        b.on_start(0);
        b.on_end(0, Duration::from_millis(200));
        assert!((estimate_ms(&b, 0) - 200.0).abs() < 1e-9);
        // A fast response one decay period later: the estimate moves most
        // of the way toward it (1 - 1/e), not all the way.
        b.clock.advance(DECAY);
        b.on_start(0);
        b.on_end(0, Duration::from_millis(10));
        let want = 200.0 * (-1f64).exp() + 10.0 * (1.0 - (-1f64).exp());
        assert!((estimate_ms(&b, 0) - want).abs() < 1e-6);
        // Right after, another fast response barely moves it.
        b.on_start(0);
        b.on_end(0, Duration::from_millis(10));
        assert!((estimate_ms(&b, 0) - want).abs() < 1e-6);
        // Idle: the estimate read by picks decays toward 0.
        b.clock.advance(DECAY * 3);
        assert!(estimate_ms(&b, 0) < want * 0.06);
    }

    #[test]
    fn cost_counts_in_flight_and_weight() {
        let b = balancer(&[1, 2]);
        let now = b.clock.now_ns();
        assert_eq!(b.cost(0, now), 1e6);
        assert_eq!(b.cost(1, now), 0.5e6);
        b.on_start(1);
        b.on_start(1);
        assert_eq!(b.cost(1, now), 1.5e6);
    }

    #[test]
    fn slow_target_gets_clearly_fewer_picks_then_recovers() {
        let b = balancer(&[1, 1, 1, 1]);
        let rng = Rng::from_seed(11);
        let mut jitter = fastrand::Rng::with_seed(11);
        let mut run = |latency: [u64; 4]| {
            let mut picks = [0u32; 4];
            for _ in 0..4_000 {
                picks[serve(&b, &rng, &mut jitter, &latency)] += 1;
                b.clock.advance(Duration::from_millis(1));
            }
            picks
        };
        // The slow target loses every pair it is drawn in until its 200 ms
        // estimate decays below the others' 5 ms, which takes ln(40) ≈ 3.7
        // decay periods: far longer than this run.
        let picks = run([5, 5, 5, 200]);
        assert!(picks[3] * 100 < picks[0], "{picks:?}");

        // After a quiet period its estimate has decayed, it is tried again
        // and, now fast, gets its share back.
        b.clock.advance(DECAY * 10);
        let picks = run([5, 5, 5, 5]);
        for &p in &picks {
            assert!(p > 800, "{picks:?}");
        }
    }

    #[test]
    fn slow_target_is_retried_as_its_estimate_decays() {
        // Without the decay toward 0 a shunned target would never get the
        // response that clears its name.
        let b = balancer(&[1, 1]);
        let rng = Rng::from_seed(2);
        let mut jitter = fastrand::Rng::with_seed(2);
        b.on_start(1);
        b.on_end(1, Duration::from_secs(2));
        let latency = [50, 50];
        assert_eq!(serve(&b, &rng, &mut jitter, &latency), 0);
        // 2 s decays below 50 ms after ln(40) ≈ 3.7 decay periods.
        let mut first_retry = None;
        for step in 0..100 {
            b.clock.advance(DECAY / 10);
            if serve(&b, &rng, &mut jitter, &latency) == 1 {
                first_retry = Some(step);
                break;
            }
        }
        let step = first_retry.expect("slow target never retried");
        assert!((30..=45).contains(&step), "retried at step {step}");
    }

    #[test]
    fn pairs_are_drawn_among_eligible_targets() {
        let b = balancer(&[1, 1, 0, 1]);
        let rng = Rng::from_seed(4);
        for _ in 0..200 {
            assert_eq!(b.pick(&|i| i == 3, &rng), Some(3));
            let i = b.pick(&|i| i != 0, &rng).unwrap();
            assert!(i == 1 || i == 3);
        }
        assert_eq!(b.pick(&|_| false, &rng), None);
        // Equal costs: the pair splits evenly (a weighted coin, weights 1:1).
        let mut c = [0u32; 4];
        for _ in 0..3_000 {
            c[b.pick(&|_| true, &rng).unwrap()] += 1;
        }
        for i in [0, 1, 3] {
            assert!(c[i] > 800, "{c:?}");
        }
    }

    #[test]
    fn concurrent_updates_do_not_lose_a_peak() {
        let b = std::sync::Arc::new(balancer(&[1]));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for k in 0..10_000u64 {
                        b.on_start(0);
                        b.on_end(0, Duration::from_micros(1 + (k + t) % 7));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        b.on_start(0);
        b.on_end(0, Duration::from_secs(1));
        assert!((estimate_ms(&b, 0) - 1000.0).abs() < 1e-6);
        assert_eq!(b.in_flight.get(0), 0);
    }
}
