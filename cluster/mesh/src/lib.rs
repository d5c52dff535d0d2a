//! weir's QUIC mesh: one authenticated connection to each peer node, over
//! which the node asks a peer something and awaits the answer (a
//! bidirectional stream per request) or tells it something where loss is
//! harmless (a datagram). What the messages mean is the caller's: it
//! registers a handler per message kind ([`Mesh::on_request`],
//! [`Mesh::on_datagram`]).
//!
//! The crate owns the transport (one quinn endpoint per node, client and
//! server), peer authentication by pinned keys ([`tls`], ADR 0032), the
//! frame format and its checks ([`frame`], [`replay`]), reconnection,
//! bounded queues and the counters ([`stats`]). It does not know where
//! peers come from: the caller hands it [`PeerSpec`] values (node id,
//! address, pinned fingerprint), which weir takes from sealed gossip. It
//! depends on neither `weir-cluster` nor `weir-node`.
#![forbid(unsafe_code)]

pub mod frame;
pub mod identity;
mod mesh;
pub mod replay;
pub mod stats;
pub mod tls;

pub use frame::{Frame, FrameError, MAX_FRAME};
pub use identity::{Fingerprint, Identity};
pub use mesh::{Inbound, KIND_HELLO, Mesh, MeshConfig, MeshError, PeerSpec, SendError};
pub use stats::{LinkState, MeshSnapshot, PeerSnapshot};
