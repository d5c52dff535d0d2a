//! The data path's cheap monotonic clock: milliseconds since the process
//! started, small enough for an atomic.
//!
//! It sits below everything that stamps progress or health (request
//! bodies, upstream targets, telemetry) so none of them imports another to
//! read the time. Wall-clock time is not kept here.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the process started; a cheap monotonic clock that
/// fits an atomic.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] for an instant already read, sparing a clock read.
pub fn ms_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
}
