//! The mesh's counters and their snapshot: per peer (link state, RTT,
//! bytes and frames each way, drops by reason, refused frames,
//! reconnects) and per node (refused handshakes and frames by reason). It
//! also rate-limits the log lines refusals produce. Counting only: who
//! increments what is [`crate::mesh`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::frame::{FrameError, REFUSAL_REASONS};

/// Why an outgoing frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The peer's send queue (or in-flight limit) was full.
    QueueFull,
    /// No live connection to the peer.
    NoLink,
    /// Larger than the frame limit or the path's datagram size.
    TooLarge,
    /// No answer within the caller's timeout.
    Timeout,
    /// The connection failed while sending or receiving.
    SendFailed,
}

/// Every drop reason label, in a fixed order.
pub const DROP_REASONS: [&str; 5] = [
    "queue_full",
    "no_link",
    "too_large",
    "timeout",
    "send_failed",
];

impl DropReason {
    /// The label: one of [`DROP_REASONS`].
    pub fn reason(self) -> &'static str {
        DROP_REASONS[self as usize]
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// The certificate names a node without a pin (not a live member, or
    /// a member of another cluster, whose gossip this node cannot read).
    UnknownNode,
    /// The certificate's node or key differs from the pin.
    IdentityMismatch,
    /// The certificate does not parse or names no node.
    BadCertificate,
}

/// Every handshake refusal label, in a fixed order.
pub const HANDSHAKE_REFUSALS: [&str; 3] = ["unknown_node", "identity_mismatch", "bad_certificate"];

impl HandshakeRefusal {
    /// The label: one of [`HANDSHAKE_REFUSALS`].
    pub fn reason(self) -> &'static str {
        HANDSHAKE_REFUSALS[self as usize]
    }
}

/// At most one log line per reason per this interval; the next line says
/// how many were not logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct LogGate {
    last: BTreeMap<&'static str, (Instant, u64)>,
}

impl LogGate {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&mut self, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        match self.last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// Node-wide counters.
#[derive(Debug, Default)]
pub struct MeshCounters {
    handshakes: [AtomicU64; 3],
    frames: [AtomicU64; 6],
    log: Mutex<LogGate>,
}

impl MeshCounters {
    /// Counts a refused handshake and logs it (rate-limited).
    pub fn refuse_handshake(&self, why: HandshakeRefusal, detail: &str) {
        self.handshakes[why as usize].fetch_add(1, Ordering::Relaxed);
        let Some(suppressed) = self.gate(why.reason()) else {
            return;
        };
        if why == HandshakeRefusal::UnknownNode {
            // Also what a member sees for a few seconds while gossip has
            // told the dialler about it but not yet it about the dialler.
            tracing::info!(
                reason = why.reason(),
                suppressed,
                "mesh: refused a connection: {detail} (normal for a few seconds while gossip converges)"
            );
        } else {
            tracing::warn!(
                reason = why.reason(),
                suppressed,
                "mesh: refused a connection: {detail}"
            );
        }
    }

    /// Counts a refused frame from `peer` and logs it (rate-limited).
    pub(crate) fn refuse_frame(&self, peer: &str, e: &FrameError) {
        self.frames[e.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.gate(e.reason()) {
            tracing::warn!(
                peer,
                reason = e.reason(),
                suppressed,
                "mesh: refused a frame: {e}"
            );
        }
    }

    fn gate(&self, reason: &'static str) -> Option<u64> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(reason)
    }

    fn handshakes(&self) -> BTreeMap<&'static str, u64> {
        HANDSHAKE_REFUSALS
            .iter()
            .zip(&self.handshakes)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }

    fn frames(&self) -> BTreeMap<&'static str, u64> {
        REFUSAL_REASONS
            .iter()
            .zip(&self.frames)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Dialling, or waiting for the peer to dial.
    Connecting,
    /// A live, authenticated connection.
    Connected,
    /// The last attempt failed; waiting out the backoff.
    Backoff,
}

impl LinkState {
    /// Lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Backoff => "backoff",
        }
    }

    pub(crate) fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Connected,
            2 => LinkState::Backoff,
            _ => LinkState::Connecting,
        }
    }
}

/// One peer's counters.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) drops: [AtomicU64; 5],
    pub(crate) refused: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl PeerCounters {
    pub(crate) fn sent(&self, bytes: usize) {
        self.frames_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn drop(&self, why: DropReason) {
        self.drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One peer as [`crate::Mesh::snapshot`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerSnapshot {
    /// The peer's node id.
    pub node_id: String,
    /// Where it is dialled.
    pub addr: SocketAddr,
    /// The pinned fingerprint (hex).
    pub fingerprint: String,
    /// Link state.
    pub state: LinkState,
    /// Smoothed round-trip time of the live connection (quinn's path
    /// RTT), in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Frame bytes received.
    pub bytes_in: u64,
    /// Frame bytes sent.
    pub bytes_out: u64,
    /// Frames received and accepted.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Outgoing frames dropped, all reasons.
    pub drops: u64,
    /// Outgoing frames dropped, by reason ([`DROP_REASONS`]).
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    /// Frames from this peer refused.
    pub refused_frames: u64,
    /// Connections established after the first.
    pub reconnects: u64,
}

impl PeerSnapshot {
    pub(crate) fn new(
        node_id: &str,
        addr: SocketAddr,
        fingerprint: String,
        state: LinkState,
        rtt: Option<Duration>,
        c: &PeerCounters,
    ) -> PeerSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let drops_by_reason: BTreeMap<&'static str, u64> = DROP_REASONS
            .iter()
            .zip(&c.drops)
            .map(|(r, a)| (*r, load(a)))
            .collect();
        PeerSnapshot {
            node_id: node_id.to_string(),
            addr,
            fingerprint,
            state,
            rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
            bytes_in: load(&c.bytes_in),
            bytes_out: load(&c.bytes_out),
            frames_in: load(&c.frames_in),
            frames_out: load(&c.frames_out),
            drops: drops_by_reason.values().sum(),
            drops_by_reason,
            refused_frames: load(&c.refused),
            reconnects: load(&c.reconnects),
        }
    }
}

/// The whole mesh as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshSnapshot {
    /// This node's id.
    pub node_id: String,
    /// The bound mesh socket.
    pub listen: SocketAddr,
    /// This node's fingerprint (hex), as it publishes it.
    pub fingerprint: String,
    /// Every peer it was handed, sorted by node id.
    pub peers: Vec<PeerSnapshot>,
    /// Handshakes refused, by reason ([`HANDSHAKE_REFUSALS`]).
    pub refused_handshakes: BTreeMap<&'static str, u64>,
    /// Frames refused, by reason ([`REFUSAL_REASONS`]).
    pub refused_frames: BTreeMap<&'static str, u64>,
}

impl MeshSnapshot {
    pub(crate) fn new(
        node_id: &str,
        listen: SocketAddr,
        fingerprint: String,
        peers: Vec<PeerSnapshot>,
        c: &MeshCounters,
    ) -> MeshSnapshot {
        MeshSnapshot {
            node_id: node_id.to_string(),
            listen,
            fingerprint,
            peers,
            refused_handshakes: c.handshakes(),
            refused_frames: c.frames(),
        }
    }

    /// The peer `id`, if listed.
    pub fn peer(&self, id: &str) -> Option<&PeerSnapshot> {
        self.peers.iter().find(|p| p.node_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_gate_lets_one_line_through_per_interval() {
        let mut g = LogGate::default();
        assert_eq!(g.allow("x"), Some(0));
        assert_eq!(g.allow("x"), None);
        assert_eq!(g.allow("x"), None);
        assert_eq!(g.allow("y"), Some(0));
        if let Some((at, _)) = g.last.get_mut("x") {
            *at -= LOG_EVERY;
        }
        assert_eq!(g.allow("x"), Some(2));
    }
}
