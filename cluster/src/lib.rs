//! Cluster state for weir: membership by gossip, the Raft-replicated config
//! store, the QUIC mesh, global counters and the shared cache.
//!
//! Nothing lives here yet: the single-node data plane needs none of it. The
//! crate exists so the workspace has the shape `ARCHITECTURE.md` describes
//! and dependencies keep pointing one way (`node` → `cluster` → `storage`).
#![forbid(unsafe_code)]
