//! Durable storage for weir: the Raft log, the vote and the replicated
//! config state machine, all in one redb file under the node's data dir.
//!
//! This crate owns bytes on disk and the deterministic apply of a config
//! write batch: an ordered, versioned map of JSON documents keyed by
//! `(kind, id)`, a cluster-wide revision and the revision history. It does
//! not know what a route is (the validator that does is handed in by the
//! caller) and it runs no Raft network: that is `weir-cluster`.
//!
//! Durability: the vote, log appends, truncates, purges and snapshots
//! commit with redb's `Durability::Immediate` (an fsync before `commit`
//! returns), so they are on disk before Raft is told they are done. Applied
//! batches and the committed index are rebuilt from the log after a crash
//! and commit with `Durability::None`. See `docs/raft.md` and ADR 0014.
//!
//! It also holds the Redis backend of the limits ([`redis_store`], ADR
//! 0034): settings, a connection with both timeouts set, the credit
//! authority and the per-request counter. Their request-path half (the
//! credit store and its fallback) is `weir-limits`'.
#![forbid(unsafe_code)]

mod db;
mod error;
mod log_store;
pub mod redis_store;
mod state_machine;
mod types;

pub use db::{DATA_FILE, FORMAT_VERSION, SNAPSHOT_FILE, Store};
pub use error::StoreError;
pub use log_store::LogStore;
pub use state_machine::{ConfigView, ROLLBACK_WINDOW, StateMachine, Validator};
pub use types::{
    Action, Batch, Change, DocKey, Docs, Document, Memo, NodeId, Op, Problem, RevisionRecord,
    TypeConfig, WriteOutcome,
};
