//! Traffic machinery shared by the limiting plugins: how a request maps to
//! a limit key, the counter store behind a small trait, the limiter
//! algorithms as pure arithmetic over an explicit clock, in-flight counts,
//! and the adaptive concurrency limit.
//!
//! The plugins in `crate::plugin` are thin: they parse config, call into
//! this module and turn its answers into headers and early responses.
//!
//! Every store method answers from memory and never waits on I/O, so a
//! later cluster-wide tier can implement the same traits by answering from
//! its local view and reconciling in the background (ADR 0018).

pub mod adaptive;
pub mod conn;
pub mod counter;
pub mod key;
pub mod limiter;

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the clock the window and bucket
/// stores run on (wall clock, so a remote tier can share it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
