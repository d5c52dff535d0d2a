//! Weighted random.
//!
//! The common case (the drawn target is eligible) is one random number and a
//! binary search over the cumulative weights. When the drawn target is not
//! eligible, a second draw is made among the eligible targets only. Overall
//! each eligible target `i` is still chosen with probability `w_i / E`,
//! where `E` is the eligible weight: `w_i / W` from the first draw plus
//! `(1 - E / W) * w_i / E` from the second.

use super::{Rng, weighted_random};

pub(super) struct WeightedRandom {
    weights: Box<[u32]>,
    /// `cumulative[i]` is the sum of the weights of targets `0..=i`; a
    /// target with weight 0 owns an empty range and is never drawn.
    cumulative: Box<[u64]>,
}

impl WeightedRandom {
    pub(super) fn new(weights: Box<[u32]>) -> Self {
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        WeightedRandom {
            weights,
            cumulative,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    pub(super) fn pick(&self, eligible: &dyn Fn(usize) -> bool, rng: &Rng<'_>) -> Option<usize> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return None;
        }
        let r = rng.below(total);
        let i = self.cumulative.partition_point(|&c| c <= r);
        if eligible(i) {
            return Some(i);
        }
        weighted_random(&self.weights, eligible, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts picks per target over `n` draws.
    fn counts(b: &WeightedRandom, n: u64, eligible: &dyn Fn(usize) -> bool) -> Vec<u64> {
        let rng = Rng::from_seed(42);
        let mut c = vec![0u64; b.len()];
        for _ in 0..n {
            c[b.pick(eligible, &rng).unwrap()] += 1;
        }
        c
    }

    /// Asserts each count is within 6 standard deviations of its binomial
    /// mean `n * p`: the standard deviation is `sqrt(n * p * (1 - p))`, and a
    /// correct sampler lands outside 6 of them with probability about 2e-9
    /// per count. The stream is seeded, so the test is also reproducible.
    fn assert_binomial(counts: &[u64], shares: &[f64]) {
        let n = counts.iter().sum::<u64>() as f64;
        for (&c, &p) in counts.iter().zip(shares) {
            let mean = n * p;
            let bound = 6.0 * (n * p * (1.0 - p)).sqrt();
            assert!(
                (c as f64 - mean).abs() <= bound,
                "count {c} vs mean {mean} ± {bound} ({counts:?})"
            );
        }
    }

    #[test]
    fn shares_follow_weights() {
        let b = WeightedRandom::new([1, 2, 7].into());
        let c = counts(&b, 100_000, &|_| true);
        assert_binomial(&c, &[0.1, 0.2, 0.7]);
    }

    #[test]
    fn shares_among_eligible_follow_weights() {
        // Target 1 is out: the others split in proportion 1:7, and the
        // second draw does not favour the neighbour of the missing target.
        let b = WeightedRandom::new([1, 2, 7, 0].into());
        let c = counts(&b, 100_000, &|i| i != 1);
        assert_eq!(c[1], 0);
        assert_eq!(c[3], 0);
        assert_binomial(&c, &[0.125, 0.0, 0.875, 0.0]);
    }
}
