//! The node's two millisecond clocks, each named for what it measures so
//! that one name never means both:
//!
//! - [`unix_ms`]: wall-clock time, milliseconds since the Unix epoch, for
//!   timestamps that leave the process (the store's history, gossip);
//! - [`mono_ms`]: a monotonic clock, milliseconds since the process first
//!   read it, for deadlines and health windows kept in atomics. It never
//!   goes back, and means nothing outside this process.
//!
//! Nothing else lives here; the limiters' microsecond clock is
//! `traffic::now_us`.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (wall clock; 0 before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the process started; a cheap monotonic clock that
/// fits an atomic.
pub fn mono_ms() -> u64 {
    mono_ms_at(Instant::now())
}

/// [`mono_ms`] for an instant already read, sparing a clock read.
pub fn mono_ms_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_measure_what_they_say() {
        // The wall clock is after 2020-01-01; the process clock counts
        // from this process's first reading, so it is far smaller.
        assert!(unix_ms() > 1_577_836_800_000);
        let before = mono_ms();
        assert!(before < 1_577_836_800_000);
        assert!(mono_ms() >= before);
        let later = Instant::now() + std::time::Duration::from_millis(1500);
        assert!(mono_ms_at(later) >= before + 1500);
    }
}
