//! Limiter arithmetic: fixed and sliding window counters and the token
//! bucket (as GCRA, one timestamp per key), over an explicit clock in
//! microseconds so it can be tested without waiting; and what a limit makes
//! of a verdict before it reaches the client: the effective value of a
//! dynamic limit ([`Scale`]), the soft threshold and the mode ([`Mode`],
//! [`Outcome`]).
//!
//! The soft threshold, the mode and the scale act on the policy handed to a
//! store and on the verdict it returns, never inside a store: whatever
//! store a limit counts in (node-local, mesh, Redis), they behave the same.

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

// === soft, shadow and dynamic limits ===

/// Whether a limit's verdicts are applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Requests over the limit are rejected.
    #[default]
    Enforce,
    /// Counted and reported exactly as [`Mode::Enforce`] would, but
    /// nothing is rejected (nor delayed).
    Shadow,
}

impl Mode {
    /// The `mode` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// What a limit made of one request, once the soft threshold and the mode
/// are applied to the store's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Within the limit, and within its soft threshold if it has one.
    Admitted,
    /// Within the limit but past its soft threshold: admitted and flagged.
    OverSoft,
    /// Over the limit. In [`Mode::Shadow`] the request still goes on: the
    /// outcome says it would have been rejected.
    Rejected,
}

impl Outcome {
    /// Applies the soft threshold to a verdict: `over_soft` says whether
    /// the admitted request went past it (see [`WindowPolicy::past_soft`]
    /// and the soft bucket of [`BucketPolicy`]).
    pub fn of(v: &Verdict, over_soft: bool) -> Outcome {
        match (v.admitted, over_soft) {
            (false, _) => Outcome::Rejected,
            (true, true) => Outcome::OverSoft,
            (true, false) => Outcome::Admitted,
        }
    }

    /// Whether the request is turned away: only a rejection of an enforced
    /// limit is.
    pub fn rejects(self, mode: Mode) -> bool {
        self == Outcome::Rejected && mode == Mode::Enforce
    }

    /// The `decision` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::OverSoft => "over_soft",
            Outcome::Rejected => "rejected",
        }
    }
}

/// The share of its configured value a dynamic limit is at now, in
/// millionths (integer arithmetic, so every node computes the same value
/// from the same inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scale(u32);

/// Millionths in a whole.
const PPM: u64 = 1_000_000;

impl Scale {
    /// The configured value itself.
    pub const FULL: Scale = Scale(PPM as u32);
    /// Nothing: every request over the limit.
    pub const ZERO: Scale = Scale(0);

    /// A share in millionths, capped at a whole.
    pub fn from_ppm(ppm: u64) -> Scale {
        Scale(ppm.min(PPM) as u32)
    }

    /// A share from a fraction in 0..=1 (config values); out-of-range
    /// values are clamped, NaN reads as 0.
    pub fn from_fraction(f: f64) -> Scale {
        if f.is_nan() || f <= 0.0 {
            return Scale::ZERO;
        }
        Scale::from_ppm((f.min(1.0) * PPM as f64).round() as u64)
    }

    /// `part / whole`, never below `floor`; a whole of 0 (nothing to
    /// measure) is [`Scale::FULL`].
    pub fn share(part: u64, whole: u64, floor: Scale) -> Scale {
        if whole == 0 {
            return Scale::FULL;
        }
        let ppm = u128::from(part.min(whole)) * u128::from(PPM) / u128::from(whole);
        Scale::from_ppm(ppm as u64).max(floor)
    }

    /// The smaller of two scales (several sources scale one limit).
    pub fn min(self, other: Scale) -> Scale {
        Ord::min(self, other)
    }

    /// In millionths.
    pub fn ppm(self) -> u64 {
        u64::from(self.0)
    }

    /// `value` scaled, rounded down but never below 1 unless the scale is
    /// zero: a limit only reaches 0 when its floor allows it.
    pub fn apply(self, value: u64) -> u64 {
        match self.0 as u64 {
            PPM => value,
            0 => 0,
            ppm => {
                let v = u128::from(value) * u128::from(ppm) / u128::from(PPM);
                (v as u64).max(1).min(value)
            }
        }
    }
}

impl WindowPolicy {
    /// The policy at `scale` of its limit (the window is unchanged).
    pub fn scaled(&self, scale: Scale) -> WindowPolicy {
        WindowPolicy {
            limit: scale.apply(self.limit),
            ..*self
        }
    }

    /// The step of a shared sliding window: 1% of it. A credit store in a
    /// full sliding window asks its authority again every step, and the
    /// authority counts the previous window's share as of one step ahead
    /// of its clock: what frees before the node's next ask is granted at
    /// this one, or the room that frees in each window's last step would
    /// never be spent. The fixed count of a window still never passes the
    /// limit; the sliding estimate may, by at most one step's share of
    /// the previous window (ADR 0035).
    pub fn sliding_step_us(&self) -> u64 {
        self.window_us / 100
    }

    /// Whether an admitted request took the window's count past `soft`
    /// (the count after it is `limit - remaining`).
    pub fn past_soft(v: &Verdict, soft: u64) -> bool {
        v.admitted && v.limit.saturating_sub(v.remaining) > soft
    }
}

impl BucketPolicy {
    /// The policy at `scale`: the rate and the burst both scaled (a burst
    /// of at least 1); `None` at scale zero, where nothing is admitted (see
    /// [`Verdict::closed`]).
    pub fn scaled(&self, scale: Scale) -> Option<BucketPolicy> {
        match scale.ppm() {
            0 => None,
            PPM => Some(*self),
            ppm => Some(BucketPolicy {
                interval_us: u64::try_from(
                    (u128::from(self.interval_us) * u128::from(PPM)).div_ceil(u128::from(ppm)),
                )
                .unwrap_or(u64::MAX / 4),
                burst: scale.apply(self.burst),
                delay: self.delay,
            }),
        }
    }

    /// The bucket of a soft rate: a token every `interval_us`, with this
    /// bucket's burst, never queueing. A request the soft bucket turns
    /// away went past the soft rate.
    pub fn soft(&self, interval_us: u64) -> BucketPolicy {
        BucketPolicy {
            interval_us,
            burst: self.burst,
            delay: false,
        }
    }
}

impl Verdict {
    /// The rejection of a limit scaled to zero: nothing is counted, the
    /// quota shows 0 and a retry is worth it after `retry_after_us`.
    pub fn closed(retry_after_us: u64) -> Verdict {
        Verdict {
            admitted: false,
            limit: 0,
            remaining: 0,
            reset_us: retry_after_us,
            retry_after_us,
            delay_us: 0,
        }
    }
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
            Verdict::window_rejection(p, self.cur, self.prev, cost, to_end)
        }
    }
}

impl Verdict {
    /// The rejection of a window hit of `cost` when this window holds
    /// `cur`, the previous one `prev`, and `to_end` µs of the window are
    /// left: shared by every store that keeps window counts (the node's own
    /// and Redis), so `Retry-After` means the same wherever the count is.
    pub fn window_rejection(
        p: &WindowPolicy,
        cur: u64,
        prev: u64,
        cost: u64,
        to_end: u64,
    ) -> Verdict {
        let len = p.window_us.max(1);
        let retry_after_us = if !p.sliding || cur.saturating_add(cost) > p.limit {
            // Nothing frees up before this window ends (and with a sliding
            // window, this window's own count then starts sliding out).
            to_end
        } else {
            // Wait until enough of the previous window has slid out:
            // prev × (len - into - t) / len ≤ limit - cur - cost.
            let room = p.limit - cur - cost;
            let keep = u128::from(room) * u128::from(len) / u128::from(prev.max(1));
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

    #[test]
    fn scale_shares_round_down_keep_a_floor_and_reach_zero_only_when_allowed() {
        let none = Scale::ZERO;
        assert_eq!(Scale::share(1, 2, none).apply(10), 5);
        assert_eq!(Scale::share(1, 3, none).apply(10), 3);
        assert_eq!(Scale::share(2, 2, none), Scale::FULL);
        // Nothing to measure: the configured value.
        assert_eq!(Scale::share(0, 0, none), Scale::FULL);
        // A tiny share still admits one request...
        assert_eq!(Scale::share(1, 1000, none).apply(10), 1);
        // ...and only a zero share with a zero floor admits none.
        assert_eq!(Scale::share(0, 4, none).apply(10), 0);
        let floor = Scale::from_fraction(0.25);
        assert_eq!(Scale::share(0, 4, floor).apply(100), 25);
        assert_eq!(Scale::share(3, 4, floor).apply(100), 75);
        assert_eq!(Scale::from_fraction(f64::NAN), Scale::ZERO);
        assert_eq!(Scale::from_fraction(7.0), Scale::FULL);
        assert_eq!(Scale::FULL.apply(u64::MAX), u64::MAX);
        assert_eq!(Scale::from_fraction(0.5).apply(u64::MAX), u64::MAX / 2);
        assert_eq!(Scale::share(1, 2, none).min(floor), floor);
    }

    #[test]
    fn a_scaled_window_admits_its_share_and_a_lowered_limit_rejects_at_once() {
        let p = WindowPolicy {
            limit: 10,
            window_us: 10 * S,
            sliding: false,
        };
        let half = p.scaled(Scale::share(1, 2, Scale::ZERO));
        let mut s = WindowSlot::default();
        assert_eq!(admitted(&mut s, &half, (0..20).map(|i| i * 10)), 5);
        // Back to whole within the window: the other 5 are admitted.
        assert_eq!(admitted(&mut s, &p, (0..20).map(|i| 1000 + i)), 5);
        // Lowered below what the window holds: rejected, no underflow.
        let v = s.hit(&p.scaled(Scale::share(1, 10, Scale::ZERO)), 2000, 1);
        assert!(!v.admitted);
        assert_eq!((v.limit, v.remaining), (1, 0));
        // Scaled to nothing: every request rejected.
        let mut fresh = WindowSlot::default();
        assert!(!fresh.hit(&p.scaled(Scale::ZERO), 0, 1).admitted);
    }

    #[test]
    fn a_scaled_bucket_refills_slower_and_holds_less() {
        let p = BucketPolicy {
            interval_us: S / 10,
            burst: 4,
            delay: false,
        };
        let half = p.scaled(Scale::from_fraction(0.5)).unwrap();
        assert_eq!((half.interval_us, half.burst), (S / 5, 2));
        let tiny = p.scaled(Scale::from_ppm(1)).unwrap();
        assert_eq!(tiny.burst, 1);
        assert_eq!(tiny.interval_us, S / 10 * 1_000_000);
        assert_eq!(p.scaled(Scale::FULL), Some(p));
        assert_eq!(p.scaled(Scale::ZERO), None);
        let mut b = BucketSlot::default();
        let got: Vec<bool> = (0..3).map(|_| b.hit(&half, 9 * S).admitted).collect();
        assert_eq!(got, [true, true, false]);
        assert!(b.hit(&half, 9 * S + S / 5).admitted);
        let closed = Verdict::closed(S);
        assert!(!closed.admitted);
        assert_eq!((closed.limit, closed.retry_after_us), (0, S));
    }

    #[test]
    fn soft_thresholds_flag_admitted_requests_past_them() {
        let p = WindowPolicy {
            limit: 5,
            window_us: 10 * S,
            sliding: false,
        };
        let mut s = WindowSlot::default();
        let outcomes: Vec<Outcome> = (0..7)
            .map(|i| {
                let v = s.hit(&p, i, 1);
                Outcome::of(&v, WindowPolicy::past_soft(&v, 3))
            })
            .collect();
        use Outcome::*;
        assert_eq!(
            outcomes,
            [
                Admitted, Admitted, Admitted, OverSoft, OverSoft, Rejected, Rejected
            ]
        );
        // Only an enforced rejection turns a request away.
        assert!(Rejected.rejects(Mode::Enforce));
        assert!(!Rejected.rejects(Mode::Shadow));
        assert!(!OverSoft.rejects(Mode::Enforce));
        // A soft bucket: half the rate, same burst, never queueing.
        let hard = BucketPolicy {
            interval_us: S / 10,
            burst: 2,
            delay: true,
        };
        let soft = hard.soft(S / 5);
        assert_eq!((soft.burst, soft.delay), (2, false));
        let (mut h, mut sb) = (BucketSlot::default(), BucketSlot::default());
        // Requests every 0.1 s: at the hard rate, twice the soft one; after
        // the burst, every other one is past the soft rate.
        let flags: Vec<bool> = (0..6)
            .map(|i| {
                let t = 100 * S + i * (S / 10);
                assert!(h.hit(&hard, t).admitted);
                !sb.hit(&soft, t).admitted
            })
            .collect();
        assert_eq!(flags, [false, false, false, true, false, true]);
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
