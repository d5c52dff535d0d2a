//! Rate-limited log lines: at most one line per call site (or any other
//! key a caller keeps a [`Throttle`] for) per interval, the next one
//! carrying how many were left out meanwhile.
//!
//! It owns only the decision "write this line now, or count it". What the
//! line says, and at which level, stays with the caller; the
//! [`warn_throttled!`](crate::warn_throttled) macro is the usual way to
//! write one. A flood of bad connections or failing exports then costs a
//! counter increment per event and one line per interval, not one line
//! per event.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since this module's first reading, plus one (so that 0
/// can mean "never").
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One key's budget: a line per `interval`, the rest counted.
///
/// `const`-constructible, so a call site keeps its own in a `static`.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// [`now_ms`] of the last line written (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// A throttle allowing one line per `interval`.
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// An event happened: `Some(n)` when its line is to be written now,
    /// `n` being the events left out since the last line; `None` when it
    /// is only counted.
    pub fn check(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Takes the count of events left out since the last line (for a
    /// closing line, such as "recovered").
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

/// `tracing::warn!` at most once per the given [`Throttle`]'s interval; a
/// line written after others were left out carries them as
/// `similar_suppressed = N`.
///
/// ```
/// use std::time::Duration;
/// use weir_observability::{throttle::Throttle, warn_throttled};
/// static ACCEPT: Throttle = Throttle::new(Duration::from_secs(10));
/// warn_throttled!(ACCEPT, error = "too many open files", "accept failed");
/// ```
#[macro_export]
macro_rules! warn_throttled {
    ($throttle:expr, $($rest:tt)+) => {
        if let Some(similar_suppressed) = $throttle.check() {
            ::tracing::warn!(similar_suppressed, $($rest)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_of_the_rest() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.check(), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.check(), None);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let next = loop {
            if let Some(n) = t.check() {
                break n;
            }
            assert!(Instant::now() < deadline, "the interval never ended");
            std::thread::yield_now();
        };
        // The 1000 left out, plus those counted while waiting for the
        // interval to end.
        assert!(next >= 1000, "{next}");
        assert_eq!(t.take_suppressed(), 0);
    }

    #[test]
    fn threads_share_one_budget() {
        let t = std::sync::Arc::new(Throttle::new(Duration::from_secs(60)));
        let written: u64 = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..500).filter(|_| t.check().is_some()).count() as u64)
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(written, 1);
        assert_eq!(t.take_suppressed(), 1999);
    }
}
