//! Limiter arithmetic: fixed and sliding window counters and the token
//! bucket (as GCRA, one timestamp per key), over an explicit clock in
//! microseconds so it can be tested without waiting.

/// A window limit: `limit` requests per `window_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPolicy {
    /// Requests admitted per window.
    pub limit: u64,
    /// Window length in microseconds (> 0).
    pub window_us: u64,
    /// Sliding window counter (current + previous × overlap) instead of
    /// fixed windows.
    pub sliding: bool,
}

/// A token bucket: `rate` per second refill, `burst` capacity; in delay
/// mode, up to `burst` requests wait for their turn instead of being
/// rejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketPolicy {
    /// Microseconds between two tokens (1e6 / rate).
    pub interval_us: u64,
    /// Bucket capacity (reject mode) or queue length (delay mode), ≥ 1.
    pub burst: u64,
    /// Queue instead of rejecting.
    pub delay: bool,
}

/// The answer of a limiter for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub admitted: bool,
    /// The quota (`RateLimit-Limit`).
    pub limit: u64,
    /// What is left of it after this request (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Microseconds until the quota is whole again (`RateLimit-Reset`).
    pub reset_us: u64,
    /// For a rejection: microseconds until a retry can succeed
    /// (`Retry-After`).
    pub retry_after_us: u64,
    /// For an admission in delay mode: how long the request must wait.
    pub delay_us: u64,
}

/// One key's window counts. Windows are aligned on the key's first request,
/// so every key gets whole windows.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowSlot {
    origin: Option<u64>,
    idx: u64,
    cur: u64,
    prev: u64,
}

impl WindowSlot {
    /// Counts a request of weight `cost` at `now` if the policy admits it.
    /// Rejected requests are not counted.
    pub fn hit(&mut self, p: &WindowPolicy, now: u64, cost: u64) -> Verdict {
        let len = p.window_us.max(1);
        let origin = *self.origin.get_or_insert(now);
        let since = now.saturating_sub(origin);
        let idx = since / len;
        if idx != self.idx {
            self.prev = if idx == self.idx + 1 { self.cur } else { 0 };
            self.cur = 0;
            self.idx = idx;
        }
        let into = since % len;
        let to_end = len - into;
        // The previous window's share still inside the sliding window.
        let carried = if p.sliding {
            (u128::from(self.prev) * u128::from(to_end)).div_ceil(u128::from(len))
        } else {
            0
        };
        let carried = u64::try_from(carried).unwrap_or(u64::MAX);
        let used = self.cur.saturating_add(carried);
        if used.saturating_add(cost) <= p.limit {
            self.cur += cost;
            let used = used + cost;
            Verdict {
                admitted: true,
                limit: p.limit,
                remaining: p.limit - used,
                reset_us: to_end,
                retry_after_us: 0,
                delay_us: 0,
            }
        } else {
            let retry_after_us = if !p.sliding || self.cur.saturating_add(cost) > p.limit {
                // Nothing frees up before this window ends (and with a
                // sliding window, this window's own count then starts
                // sliding out).
                to_end
            } else {
                // Wait until enough of the previous window has slid out:
                // prev × (len - into - t) / len ≤ limit - cur - cost.
                let room = p.limit - self.cur - cost;
                let keep = u128::from(room) * u128::from(len) / u128::from(self.prev.max(1));
                let keep = u64::try_from(keep).unwrap_or(u64::MAX);
                to_end.saturating_sub(keep).max(1)
            };
            Verdict {
                admitted: false,
                limit: p.limit,
                remaining: 0,
                reset_us: to_end,
                retry_after_us,
                delay_us: 0,
            }
        }
    }
}

/// One key's token bucket as GCRA: the theoretical arrival time of the
/// next request.
#[derive(Debug, Clone, Copy, Default)]
pub struct BucketSlot {
    tat: u64,
}

impl BucketSlot {
    /// Takes a token at `now` if the policy admits the request.
    pub fn hit(&mut self, p: &BucketPolicy, now: u64) -> Verdict {
        let t = p.interval_us.max(1);
        let burst = p.burst.max(1);
        let base = self.tat.max(now);
        if p.delay {
            // Leaky bucket: requests leave one per interval; up to `burst`
            // of them may wait for their slot.
            let wait = base - now;
            let queue_room = burst.saturating_mul(t);
            if wait > queue_room {
                return Verdict {
                    admitted: false,
                    limit: burst,
                    remaining: 0,
                    reset_us: wait,
                    retry_after_us: wait - queue_room,
                    delay_us: 0,
                };
            }
            self.tat = base + t;
            let queued = wait.div_ceil(t);
            Verdict {
                admitted: true,
                limit: burst,
                remaining: burst.saturating_sub(queued),
                reset_us: self.tat - now,
                retry_after_us: 0,
                delay_us: wait,
            }
        } else {
            // Token bucket of `burst` tokens: admitted while the schedule
            // is at most `burst - 1` intervals ahead of now.
            let tolerance = (burst - 1).saturating_mul(t);
            if base - now > tolerance {
                return Verdict {
                    admitted: false,
                    limit: burst,
                    remaining: 0,
                    reset_us: base - now,
                    retry_after_us: base - now - tolerance,
                    delay_us: 0,
                };
            }
            self.tat = base + t;
            let ahead = self.tat - now;
            let remaining = (burst.saturating_mul(t).saturating_sub(ahead)) / t;
            Verdict {
                admitted: true,
                limit: burst,
                remaining,
                reset_us: ahead,
                retry_after_us: 0,
                delay_us: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000;

    fn admitted(slot: &mut WindowSlot, p: &WindowPolicy, times: impl Iterator<Item = u64>) -> u64 {
        times.filter(|&t| slot.hit(p, t, 1).admitted).count() as u64
    }

    #[test]
    fn fixed_window_admits_limit_per_window() {
        let p = WindowPolicy {
            limit: 3,
            window_us: 10 * S,
            sliding: false,
        };
        let mut s = WindowSlot::default();
        let v: Vec<_> = (0..5).map(|i| s.hit(&p, 100 + i, 1)).collect();
        assert_eq!(
            v.iter().map(|v| v.admitted).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert_eq!(
            v.iter().map(|v| v.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0, 0]
        );
        assert_eq!(v[3].retry_after_us, 10 * S - 3);
        // The next window starts whole.
        assert!(s.hit(&p, 100 + 10 * S, 1).admitted);
        assert_eq!(s.hit(&p, 100 + 10 * S, 1).remaining, 1);
    }

    #[test]
    fn sliding_window_carries_the_previous_window() {
        let p = WindowPolicy {
            limit: 10,
            window_us: 10 * S,
            sliding: true,
        };
        let mut s = WindowSlot::default();
        assert_eq!(admitted(&mut s, &p, (0..10).map(|i| i * 100)), 10);
        // A quarter into the next window, 3/4 of the 10 still count: 2 left.
        assert_eq!(admitted(&mut s, &p, (0..5).map(|i| 12_500_000 + i)), 2);
        // Two windows on, nothing carries.
        assert_eq!(admitted(&mut s, &p, (0..12).map(|i| 30 * S + i)), 10);
    }

    #[test]
    fn sliding_retry_after_is_when_room_frees() {
        let p = WindowPolicy {
            limit: 10,
            window_us: 10 * S,
            sliding: true,
        };
        let mut s = WindowSlot::default();
        admitted(&mut s, &p, std::iter::repeat_n(0, 10));
        let v = s.hit(&p, 10 * S, 1);
        assert!(!v.admitted);
        // Needs prev × remaining/len ≤ 9: 1 s into the window.
        assert_eq!(v.retry_after_us, S);
        assert!(s.hit(&p, 11 * S, 1).admitted);
    }

    #[test]
    fn bucket_admits_burst_then_rate() {
        let p = BucketPolicy {
            interval_us: S,
            burst: 3,
            delay: false,
        };
        let mut b = BucketSlot::default();
        let v: Vec<_> = (0..5).map(|_| b.hit(&p, 50 * S)).collect();
        assert_eq!(
            v.iter().map(|v| v.admitted).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert_eq!(
            v.iter().map(|v| v.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0, 0]
        );
        assert_eq!(v[3].retry_after_us, S);
        assert!(b.hit(&p, 51 * S).admitted);
        assert!(!b.hit(&p, 51 * S).admitted);
    }

    #[test]
    fn delay_mode_queues_up_to_burst() {
        let p = BucketPolicy {
            interval_us: S,
            burst: 2,
            delay: true,
        };
        let mut b = BucketSlot::default();
        let v: Vec<_> = (0..5).map(|_| b.hit(&p, 7 * S)).collect();
        assert_eq!(
            v.iter().map(|v| v.admitted).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert_eq!(
            v.iter().map(|v| v.delay_us).collect::<Vec<_>>(),
            [0, S, 2 * S, 0, 0]
        );
    }

    proptest! {
        /// Over any span, a window limiter admits at most `limit` per
        /// window the span touches; the bucket at most burst + span × rate.
        #[test]
        fn admitted_count_is_bounded(
            gaps in proptest::collection::vec(0u64..300_000, 1..400),
            limit in 1u64..20,
            sliding in any::<bool>(),
        ) {
            let window = S;
            let p = WindowPolicy { limit, window_us: window, sliding };
            let mut s = WindowSlot::default();
            let mut t = 0;
            let mut times = Vec::new();
            for g in &gaps { t += g; times.push(t); }
            let n = admitted(&mut s, &p, times.iter().copied());
            let span = times[times.len() - 1] - times[0];
            prop_assert!(n <= limit * (span / window + 1));

            let bp = BucketPolicy { interval_us: S / 10, burst: limit, delay: false };
            let mut b = BucketSlot::default();
            let n = times.iter().filter(|&&t| b.hit(&bp, t).admitted).count() as u64;
            prop_assert!(n <= limit + span / (S / 10));
        }
    }
}
