//! Cluster state for weir: membership by gossip, the Raft-replicated config
//! store, the QUIC mesh, global counters and the shared cache.
//!
//! It knows nothing about HTTP routes: it carries keys and values that the
//! node gives their meaning. Built so far: gossip membership
//! ([`membership`]) over a sealed transport ([`gossip`]) that is UDP in
//! production and can be given link faults in tests ([`faults`]); owner
//! choice by rendezvous hashing ([`owner`]), which says which members own a
//! key; and the Raft-replicated config store ([`raft`]), which replicates
//! JSON documents.
//! Dependencies point one way (`node` → `cluster` → `storage`).
#![forbid(unsafe_code)]

pub mod faults;
pub mod gossip;
pub mod membership;
pub mod owner;
pub mod raft;
