//! Cluster state for weir: membership by gossip, the Raft-replicated config
//! store, the QUIC mesh, global counters and the shared cache.
//!
//! Dependencies point one way (`node` → `cluster` → `storage`). The
//! replicated config store lives in [`raft`]; it replicates JSON documents
//! and knows nothing about routes.
#![forbid(unsafe_code)]

pub mod raft;
