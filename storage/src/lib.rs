//! Durable storage for weir: the Raft log and state machine on disk, and the
//! optional Redis backend for counters and cache.
//!
//! Empty for now; the Raft issue fills it.
#![forbid(unsafe_code)]
