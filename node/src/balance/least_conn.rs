//! Weighted least connections.
//!
//! The target with the fewest requests in flight per unit of weight wins,
//! compared as `in_flight_a * weight_b < in_flight_b * weight_a` so there is
//! no rounding. Ties are common (every target is at 0 when traffic is
//! light) and are broken by a weighted random choice among the tied
//! targets, so that light, sequential traffic still follows the weights and
//! equal targets share evenly. nginx's `least_conn` uses the same ratio and
//! breaks ties by weighted round robin instead.

use super::{InFlight, Rng};

pub(super) struct LeastConn {
    weights: Box<[u32]>,
    in_flight: InFlight,
}

impl LeastConn {
    pub(super) fn new(weights: Box<[u32]>) -> Self {
        let in_flight = InFlight::new(weights.len());
        LeastConn { weights, in_flight }
    }

    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    pub(super) fn pick(&self, eligible: &dyn Fn(usize) -> bool, rng: &Rng<'_>) -> Option<usize> {
        // (index, its in-flight count, its weight) of the best so far, and
        // the total weight of the targets tied with it.
        let mut best: Option<(usize, u64, u64)> = None;
        let mut tied_weight = 0u64;
        for (i, &w) in self.weights.iter().enumerate() {
            if w == 0 || !eligible(i) {
                continue;
            }
            let (n, w) = (self.in_flight.get(i), u64::from(w));
            let Some((_, bn, bw)) = best else {
                best = Some((i, n, w));
                tied_weight = w;
                continue;
            };
            match (u128::from(n) * u128::from(bw)).cmp(&(u128::from(bn) * u128::from(w))) {
                std::cmp::Ordering::Less => {
                    best = Some((i, n, w));
                    tied_weight = w;
                }
                std::cmp::Ordering::Equal => {
                    // Weighted reservoir over the tied targets: each ends up
                    // chosen with probability weight / tied weight.
                    tied_weight += w;
                    if rng.below(tied_weight) < w {
                        best = Some((i, n, w));
                    }
                }
                std::cmp::Ordering::Greater => {}
            }
        }
        best.map(|(i, _, _)| i)
    }

    pub(super) fn on_start(&self, idx: usize) {
        self.in_flight.start(idx);
    }

    pub(super) fn on_end(&self, idx: usize) {
        self.in_flight.end(idx);
    }

    #[cfg(test)]
    pub(super) fn in_flight_at(&self, idx: usize) -> u64 {
        self.in_flight.get(idx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    #[test]
    fn busy_targets_are_avoided() {
        let b = LeastConn::new([1, 1, 1].into());
        let rng = Rng::from_seed(1);
        b.on_start(0);
        b.on_start(0);
        b.on_start(1);
        // Target 2 is idle: it wins until it is as busy as target 1.
        assert_eq!(b.pick(&|_| true, &rng), Some(2));
        b.on_start(2);
        // 1 and 2 now tie at one each; 0 still has two.
        for _ in 0..50 {
            assert_ne!(b.pick(&|_| true, &rng), Some(0));
        }
        // Not eligible: the least loaded of the rest.
        assert_eq!(b.pick(&|i| i == 0, &rng), Some(0));
        b.on_end(0);
        b.on_end(0);
        assert_eq!(b.pick(&|_| true, &rng), Some(0));
    }

    #[test]
    fn in_flight_is_compared_per_unit_of_weight() {
        let b = LeastConn::new([1, 3].into());
        let rng = Rng::from_seed(1);
        // 1 in flight on weight 1 (ratio 1) vs 2 on weight 3 (ratio 2/3).
        b.on_start(0);
        b.on_start(1);
        b.on_start(1);
        assert_eq!(b.pick(&|_| true, &rng), Some(1));
        b.on_start(1);
        // Ratio 1 each: a tie.
        b.on_start(1);
        // 4/3 > 1.
        assert_eq!(b.pick(&|_| true, &rng), Some(0));
    }

    #[test]
    fn ties_are_shared_by_weight() {
        // Nothing in flight: every pick is a tie and follows the weights.
        // Binomial bound of 6 standard deviations, see the random tests.
        let b = LeastConn::new([1, 1, 2].into());
        let rng = Rng::from_seed(3);
        let n = 40_000u64;
        let mut c = [0u64; 3];
        for _ in 0..n {
            c[b.pick(&|_| true, &rng).unwrap()] += 1;
        }
        for (&count, p) in c.iter().zip([0.25, 0.25, 0.5]) {
            let mean = n as f64 * p;
            let bound = 6.0 * (n as f64 * p * (1.0 - p)).sqrt();
            assert!((count as f64 - mean).abs() <= bound, "{c:?}");
        }
    }

    #[test]
    fn steady_in_flight_follows_weights() {
        // 60 requests are always in flight and each lasts as long as 60
        // picks (oldest finishes first). Least connections keeps the
        // in-flight counts at 1:2:3, so picks split the same way.
        let b = LeastConn::new([1, 2, 3].into());
        let rng = Rng::from_seed(5);
        let mut running = VecDeque::new();
        let mut picks = [0u64; 3];
        for step in 0..60_000 {
            if running.len() == 60 {
                b.on_end(running.pop_front().unwrap());
            }
            let i = b.pick(&|_| true, &rng).unwrap();
            b.on_start(i);
            running.push_back(i);
            if step >= 60 {
                picks[i] += 1;
            }
        }
        let total: u64 = picks.iter().sum();
        for (&p, w) in picks.iter().zip([1.0, 2.0, 3.0]) {
            let share = p as f64 / total as f64;
            assert!((share - w / 6.0).abs() < 0.01, "{picks:?}");
        }
        let in_flight: Vec<u64> = (0..3).map(|i| b.in_flight.get(i)).collect();
        for (&n, want) in in_flight.iter().zip([10i64, 20, 30]) {
            assert!((n as i64 - want).abs() <= 1, "{in_flight:?}");
        }
    }
}
