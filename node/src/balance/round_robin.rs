//! Smooth weighted round robin with nginx's semantics.
//!
//! Each pick adds every eligible target's weight to its score, takes the
//! highest score (the first one on a tie, as nginx does) and subtracts the
//! sum of the eligible weights from the winner. Over any `W = Σ weights`
//! consecutive picks each target is chosen exactly `weight` times, and a
//! heavy target's turns are spread out: weights 5, 1, 1 give `a a b a c a a`
//! rather than `a a a a a b c`.
//!
//! An ineligible target sits the pick out: its score is neither raised nor
//! lowered and its weight is not part of the sum subtracted from the winner.
//! The scores therefore always add up to zero and the other targets' turns
//! continue where they were.
//!
//! The scores sit behind a mutex that is only ever `try_lock`ed. The
//! critical section is one pass over the targets; a thread that finds it
//! taken does not wait but makes a weighted random pick instead. Nobody ever
//! blocks on the lock or makes a syscall for it, and proportions stay right
//! because both paths are proportional to weight; only the smoothness of the
//! sequence suffers when picks collide. (nginx keeps this state per worker
//! process, so its sequence is not globally smooth either.)

use std::sync::{Mutex, TryLockError};

use super::{Rng, weighted_random};

pub(super) struct SmoothWrr {
    weights: Box<[u32]>,
    scores: Mutex<Box<[i64]>>,
}

impl SmoothWrr {
    pub(super) fn new(weights: Box<[u32]>) -> Self {
        let scores = vec![0i64; weights.len()].into_boxed_slice();
        SmoothWrr {
            weights,
            scores: Mutex::new(scores),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    pub(super) fn pick(&self, eligible: &dyn Fn(usize) -> bool, rng: &Rng<'_>) -> Option<usize> {
        let mut scores = match self.scores.try_lock() {
            Ok(scores) => scores,
            // Scores are plain integers that are valid after any partial
            // update, so a panic elsewhere does not make them unusable.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return weighted_random(&self.weights, eligible, rng);
            }
        };
        let mut best: Option<(usize, i64)> = None;
        let mut total = 0i64;
        for (i, (&w, score)) in self.weights.iter().zip(scores.iter_mut()).enumerate() {
            if w == 0 || !eligible(i) {
                continue;
            }
            *score += i64::from(w);
            total += i64::from(w);
            if best.is_none_or(|(_, s)| *score > s) {
                best = Some((i, *score));
            }
        }
        let (i, _) = best?;
        scores[i] -= total;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(b: &SmoothWrr, n: usize, eligible: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let rng = Rng::from_seed(0);
        (0..n).map(|_| b.pick(eligible, &rng).unwrap()).collect()
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let b = SmoothWrr::new([5, 1, 1].into());
        let s = seq(&b, 21, &|_| true);
        // a a b a c a a, three times over: the state is back to zero after
        // each cycle of 7.
        let cycle = [0, 0, 1, 0, 2, 0, 0];
        assert_eq!(s, cycle.repeat(3));
    }

    #[test]
    fn exact_proportions_over_whole_cycles() {
        let weights = [3u32, 0, 7, 1, 4, 2];
        let total: u32 = weights.iter().sum();
        let b = SmoothWrr::new(weights.into());
        let cycles = 50;
        let mut counts = [0u32; 6];
        for i in seq(&b, (total * cycles) as usize, &|_| true) {
            counts[i] += 1;
        }
        let want: Vec<u32> = weights.iter().map(|w| w * cycles).collect();
        assert_eq!(counts.to_vec(), want);
    }

    #[test]
    fn equal_weights_alternate() {
        let b = SmoothWrr::new([2, 2, 2].into());
        assert_eq!(seq(&b, 6, &|_| true), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn an_ineligible_target_sits_out_without_disturbing_the_others() {
        // With c out from the start, a and b follow exactly the 5:1
        // sequence: a a a b a a.
        let b = SmoothWrr::new([5, 1, 1].into());
        let s = seq(&b, 12, &|i| i != 2);
        assert_eq!(s, [0, 0, 0, 1, 0, 0].repeat(2));

        // A retry that excludes a for one pick, then everyone is eligible
        // again: the scores still add up to zero, and over the next whole
        // cycles each target's count is within one of its exact share:
        // count - T*w/W = (score_before - score_after) / W, and every score
        // stays strictly between -W and W.
        let b = SmoothWrr::new([5, 1, 1].into());
        let _ = seq(&b, 3, &|_| true);
        assert_ne!(seq(&b, 1, &|i| i != 0), [0]);
        assert_eq!(b.scores.lock().unwrap().iter().sum::<i64>(), 0);
        let mut counts = [0i64; 3];
        for i in seq(&b, 700, &|_| true) {
            counts[i] += 1;
        }
        for (c, want) in counts.iter().zip([500, 100, 100]) {
            assert!((c - want).abs() <= 1, "{counts:?}");
        }
    }

    #[test]
    fn contended_pick_falls_back_to_weighted_random() {
        let b = SmoothWrr::new([1, 0, 1].into());
        let _held = b.scores.lock().unwrap();
        let rng = Rng::from_seed(7);
        for _ in 0..100 {
            let i = b.pick(&|i| i != 2, &rng);
            assert_eq!(i, Some(0));
        }
    }
}
