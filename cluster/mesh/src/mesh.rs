//! The running mesh: the quinn endpoint, one link per peer, the tasks that
//! dial, accept, reconnect and serve, and the caller's API (requests,
//! datagrams, handlers, snapshot). Authentication is [`crate::tls`], the
//! byte layout [`crate::frame`].
//!
//! Links. Every node dials every peer it is handed and accepts from any
//! peer whose pin matches, so when two nodes dial each other at once both
//! connections complete. Both sides then keep the one dialled by the node
//! with the smaller id and close the other, so they agree without a
//! message. The node with the larger id also waits a moment before its
//! first dial to make that race rare. A lost link is redialled with
//! exponential backoff (jittered, capped); a peer whose pin changes (it
//! restarted with a new key) has its link closed and redialled at once.
//!
//! Limits. Requests in flight per peer are bounded
//! ([`MeshConfig::max_in_flight`], also the peer's stream limit) and
//! datagrams wait in a bounded queue per peer; what does not fit is
//! dropped and counted, never queued without bound. Every remote step has
//! a timeout: the handshake, each request (the caller's), each incoming
//! request (reading, the handler, the answer), each datagram send.
//! Keep-alives run well inside the idle timeout, so a quiet link stays up
//! and a dead one is noticed within the idle timeout.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::AbortHandle;

use crate::frame::{FLAG_ERROR, FLAG_RESPONSE, Frame, FrameError, MAX_FRAME};
use crate::identity::{Fingerprint, Identity, read_certificate};
use crate::replay::ReplayWindow;
use crate::stats::{DropReason, LinkState, MeshCounters, MeshSnapshot, PeerCounters, PeerSnapshot};
use crate::tls::{self, Pins};

/// Connection close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_REFUSED: u32 = 2;
const CLOSE_GONE: u32 = 3;
/// Stream reset codes.
const STREAM_REFUSED: u32 = 1;
const STREAM_TIMEOUT: u32 = 2;
/// The mesh's own request kind: a dialler's hello, answered empty once
/// the server has accepted the connection. In TLS 1.3 the client finishes
/// its handshake before the server has checked the client's certificate,
/// so only an answer proves the peer took us. Callers' kinds start at 1.
pub const KIND_HELLO: u16 = 0;
/// Longest remote error text sent back.
const MAX_ERROR_TEXT: usize = 1024;

/// Settings of a mesh. [`MeshConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This node's key and certificate.
    pub identity: Identity,
    /// Where the UDP socket binds; port 0 picks one.
    pub listen: SocketAddr,
    /// Keep-alive interval on every connection (must be below
    /// `idle_timeout`).
    pub keep_alive: Duration,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Bound on one dial or accept, handshake included.
    pub connect_timeout: Duration,
    /// Bound on serving one incoming request (reading it, the handler,
    /// writing the answer) and on sending one datagram.
    pub serve_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Datagrams queued per peer before new ones are dropped.
    pub datagram_queue: usize,
    /// Requests in flight per peer, each way.
    pub max_in_flight: usize,
}

impl MeshConfig {
    /// Defaults: keep-alive 2 s, idle timeout 10 s, connect 5 s, serve
    /// 5 s, backoff 100 ms to 5 s, 1024 queued datagrams, 256 requests in
    /// flight.
    pub fn new(identity: Identity, listen: SocketAddr) -> MeshConfig {
        MeshConfig {
            identity,
            listen,
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            serve_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            datagram_queue: 1024,
            max_in_flight: 256,
        }
    }
}

/// A peer as the caller hands it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its node id (as its certificate names it).
    pub node_id: String,
    /// Its mesh address.
    pub addr: SocketAddr,
    /// The fingerprint it published (sealed gossip, in weir).
    pub fingerprint: Fingerprint,
}

/// A request or datagram as a handler receives it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The authenticated sender.
    pub from: String,
    /// The message kind.
    pub kind: u16,
    /// The payload.
    pub body: Bytes,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type RequestHandler = Arc<dyn Fn(Inbound) -> BoxFuture<Result<Bytes, String>> + Send + Sync>;
type DatagramHandler = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Errors starting a mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the mesh socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range; the text names it.
    #[error("mesh settings: {0}")]
    Config(String),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Why a request or datagram was not delivered (or not answered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not among the peers last handed to [`Mesh::set_peers`].
    #[error("`{0}` is not a mesh peer")]
    UnknownPeer(String),
    /// No live connection to the peer right now.
    #[error("no live mesh connection to `{0}`")]
    NotConnected(String),
    /// The peer's queue or in-flight limit is full; counted as a drop.
    #[error("the mesh queue to `{0}` is full")]
    QueueFull(String),
    /// Larger than a frame (or, for a datagram, the path) allows.
    #[error("{0}")]
    TooLarge(String),
    /// No answer within the timeout.
    #[error("no answer from `{peer}` within {timeout:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The connection or stream failed.
    #[error("mesh connection to `{peer}` failed: {reason}")]
    Connection {
        /// The peer.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// The peer answered with an error (its handler failed, or it knows
    /// no handler for the kind).
    #[error("`{peer}` answered with an error: {reason}")]
    Remote {
        /// The peer.
        peer: String,
        /// Its error text.
        reason: String,
    },
    /// The answer was refused by this node's frame checks.
    #[error("the answer from `{peer}` was refused: {error}")]
    BadAnswer {
        /// The peer.
        peer: String,
        /// Why.
        error: FrameError,
    },
}

impl SendError {
    /// Whether the same message may succeed if sent again later (the link
    /// or the queue may recover); `false` when it would fail the same way.
    /// A timed-out or failed request may have run on the peer, so only
    /// retry what is safe to run twice.
    pub fn is_retryable(&self) -> bool {
        match self {
            SendError::NotConnected(_)
            | SendError::QueueFull(_)
            | SendError::Timeout { .. }
            | SendError::Connection { .. } => true,
            SendError::UnknownPeer(_)
            | SendError::TooLarge(_)
            | SendError::Remote { .. }
            | SendError::BadAnswer { .. } => false,
        }
    }
}

/// A running mesh. Cheap to clone; [`Mesh::close`] stops it.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node_id", &self.inner.cfg.identity.node_id())
            .field("listen", &self.inner.listen)
            .finish_non_exhaustive()
    }
}

struct Inner {
    cfg: MeshConfig,
    endpoint: quinn::Endpoint,
    listen: SocketAddr,
    transport: Arc<quinn::TransportConfig>,
    pins: Pins,
    counters: Arc<MeshCounters>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    requests: RwLock<HashMap<u16, RequestHandler>>,
    datagrams: RwLock<HashMap<u16, DatagramHandler>>,
    accept_task: Mutex<Option<AbortHandle>>,
    closed: AtomicBool,
}

struct Peer {
    id: String,
    spec: Mutex<(SocketAddr, Fingerprint)>,
    state: AtomicU8,
    counters: PeerCounters,
    link: Mutex<Option<Arc<Link>>>,
    /// Bumped when the link or the spec changes; the dialler waits on it.
    changes: watch::Sender<u64>,
    queue: mpsc::Sender<(u16, Bytes)>,
    in_flight: Arc<Semaphore>,
    ever_linked: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// One connection and its frame bookkeeping.
struct Link {
    conn: quinn::Connection,
    dialed_by_me: bool,
    next_stream_seq: AtomicU64,
    next_dgram_seq: AtomicU64,
    seen_stream: Mutex<ReplayWindow>,
    seen_dgram: Mutex<ReplayWindow>,
}

/// Which sequence space a frame belongs to.
#[derive(Clone, Copy)]
enum Channel {
    Stream,
    Datagram,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn jitter(d: Duration) -> Duration {
    // 50–100 % of `d`, so peers that lost each other do not redial in step.
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

// === impl Link ===

impl Link {
    fn new(conn: quinn::Connection, dialed_by_me: bool) -> Link {
        Link {
            conn,
            dialed_by_me,
            next_stream_seq: AtomicU64::new(0),
            next_dgram_seq: AtomicU64::new(0),
            seen_stream: Mutex::new(ReplayWindow::default()),
            seen_dgram: Mutex::new(ReplayWindow::default()),
        }
    }

    fn is_live(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn next_seq(&self, ch: Channel) -> u64 {
        let c = match ch {
            Channel::Stream => &self.next_stream_seq,
            Channel::Datagram => &self.next_dgram_seq,
        };
        c.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn accept_seq(&self, ch: Channel, seq: u64) -> bool {
        let w = match ch {
            Channel::Stream => &self.seen_stream,
            Channel::Datagram => &self.seen_dgram,
        };
        lock(w).accept(seq)
    }
}

// === impl Peer ===

impl Peer {
    fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, s: LinkState) {
        let v = match s {
            LinkState::Connecting => 0,
            LinkState::Connected => 1,
            LinkState::Backoff => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn live_link(&self) -> Option<Arc<Link>> {
        lock(&self.link).as_ref().filter(|l| l.is_live()).cloned()
    }

    fn spec(&self) -> (SocketAddr, Fingerprint) {
        *lock(&self.spec)
    }

    /// Forgets `link` if it is still the current one.
    fn unlink(&self, link: &Arc<Link>) {
        let mut cur = lock(&self.link);
        if cur.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *cur = None;
            drop(cur);
            self.set_state(LinkState::Connecting);
            tracing::info!(
                peer = %self.id,
                reason = %link.conn.close_reason().map(|r| r.to_string()).unwrap_or_default(),
                "mesh: link down"
            );
            self.bump();
        }
    }

    fn stop(&self, why: &'static str) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        if let Some(l) = lock(&self.link).take() {
            l.conn.close(VarInt::from_u32(CLOSE_GONE), why.as_bytes());
        }
    }
}

// === impl Mesh ===

impl Mesh {
    /// Binds the endpoint and starts accepting. Peers come with
    /// [`Mesh::set_peers`]. Call inside a tokio runtime.
    ///
    /// # Errors
    /// See [`MeshError`].
    pub fn start(cfg: MeshConfig) -> Result<Mesh, MeshError> {
        if cfg.keep_alive.is_zero() || cfg.keep_alive >= cfg.idle_timeout {
            return Err(MeshError::Config(format!(
                "keep_alive ({:?}) must be above zero and below idle_timeout ({:?})",
                cfg.keep_alive, cfg.idle_timeout
            )));
        }
        let max_streams = u32::try_from(cfg.max_in_flight)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| MeshError::Config("max_in_flight must be 1 or more".into()))?;
        if cfg.datagram_queue == 0 {
            return Err(MeshError::Config("datagram_queue must be 1 or more".into()));
        }
        let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|_| MeshError::Config("idle_timeout is too long".into()))?;
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(cfg.keep_alive))
            .max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(Some(1 << 20));
        let transport = Arc::new(t);
        let pins: Pins = Arc::default();
        let counters = Arc::new(MeshCounters::default());
        let server_tls = tls::server_config(&cfg.identity, pins.clone(), counters.clone())?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        let endpoint =
            quinn::Endpoint::server(server, cfg.listen).map_err(|source| MeshError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let listen = endpoint.local_addr().map_err(|source| MeshError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let inner = Arc::new(Inner {
            cfg,
            endpoint,
            listen,
            transport,
            pins,
            counters,
            peers: Mutex::default(),
            requests: RwLock::default(),
            datagrams: RwLock::default(),
            accept_task: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let task = tokio::spawn(accept_loop(inner.clone()));
        *lock(&inner.accept_task) = Some(task.abort_handle());
        tracing::info!(
            node_id = inner.cfg.identity.node_id(),
            listen = %listen,
            fingerprint = %inner.cfg.identity.fingerprint(),
            "mesh: listening"
        );
        Ok(Mesh { inner })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.cfg.identity
    }

    /// Connections the endpoint holds, closing ones included (one per
    /// peer once duplicates are gone).
    pub fn open_connections(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// Replaces the set of peers: new ones are dialled, gone ones
    /// disconnected, and a peer whose pin changed is redialled. Only these
    /// peers may connect. This node's own id is ignored.
    pub fn set_peers(&self, peers: Vec<PeerSpec>) {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let me = inner.cfg.identity.node_id();
        let specs: HashMap<String, PeerSpec> = peers
            .into_iter()
            .filter(|p| p.node_id != me)
            .map(|p| (p.node_id.clone(), p))
            .collect();
        *inner
            .pins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = specs
            .iter()
            .map(|(id, p)| (id.clone(), p.fingerprint))
            .collect();
        let mut current = lock(&inner.peers);
        current.retain(|id, p| {
            let keep = specs.contains_key(id);
            if !keep {
                tracing::info!(peer = %id, "mesh: peer removed");
                p.stop("no longer a live member");
            }
            keep
        });
        for (id, spec) in specs {
            if let Some(p) = current.get(&id) {
                let mut s = lock(&p.spec);
                if *s == (spec.addr, spec.fingerprint) {
                    continue;
                }
                let new_key = s.1 != spec.fingerprint;
                *s = (spec.addr, spec.fingerprint);
                drop(s);
                if new_key && let Some(l) = lock(&p.link).take() {
                    l.conn
                        .close(VarInt::from_u32(CLOSE_GONE), b"peer identity changed");
                }
                p.bump();
                continue;
            }
            let (tx, rx) = mpsc::channel(inner.cfg.datagram_queue);
            let peer = Arc::new(Peer {
                id: id.clone(),
                spec: Mutex::new((spec.addr, spec.fingerprint)),
                state: AtomicU8::new(0),
                counters: PeerCounters::default(),
                link: Mutex::new(None),
                changes: watch::Sender::new(0),
                queue: tx,
                in_flight: Arc::new(Semaphore::new(inner.cfg.max_in_flight)),
                ever_linked: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            });
            let dial = tokio::spawn(run_peer(self.inner.clone(), peer.clone()));
            let send = tokio::spawn(run_datagrams(self.inner.clone(), peer.clone(), rx));
            lock(&peer.tasks).extend([dial.abort_handle(), send.abort_handle()]);
            tracing::info!(peer = %id, addr = %spec.addr, "mesh: peer added");
            current.insert(id, peer);
        }
    }

    /// Registers the handler for requests of `kind` (replacing any). It
    /// runs once per request, bounded by [`MeshConfig::serve_timeout`];
    /// `Err(text)` goes back to the requester as [`SendError::Remote`].
    pub fn on_request<F, Fut>(&self, kind: u16, handler: F)
    where
        F: Fn(Inbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
    {
        if kind == KIND_HELLO {
            tracing::error!("mesh: kind 0 is the mesh's own hello; the handler is not registered");
            return;
        }
        let h: RequestHandler = Arc::new(move |m| Box::pin(handler(m)));
        self.inner
            .requests
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kind, h);
    }

    /// Registers the handler for datagrams of `kind` (replacing any). It
    /// runs on the connection's receive task: keep it short.
    pub fn on_datagram<F>(&self, kind: u16, handler: F)
    where
        F: Fn(Inbound) + Send + Sync + 'static,
    {
        self.inner
            .datagrams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kind, Arc::new(handler));
    }

    /// Sends a request of `kind` to `peer` on a new stream and waits for
    /// the answer, all within `timeout`. Fails at once, without waiting
    /// for a connection, when the peer has none.
    ///
    /// # Errors
    /// See [`SendError`]; drops are counted in the peer's stats.
    pub async fn request(
        &self,
        peer: &str,
        kind: u16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, SendError> {
        let inner = &self.inner;
        let p = inner
            .peer(peer)
            .ok_or_else(|| SendError::UnknownPeer(peer.to_string()))?;
        let Ok(_permit) = p.in_flight.clone().try_acquire_owned() else {
            p.counters.drop(DropReason::QueueFull);
            return Err(SendError::QueueFull(peer.to_string()));
        };
        let Some(link) = p.live_link() else {
            p.counters.drop(DropReason::NoLink);
            return Err(SendError::NotConnected(peer.to_string()));
        };
        let wire = inner
            .encode(0, kind, link.next_seq(Channel::Stream), body)
            .map_err(|e| {
                p.counters.drop(DropReason::TooLarge);
                SendError::TooLarge(e.to_string())
            })?;
        let exchange = async {
            let (mut send, mut recv) =
                link.conn.open_bi().await.map_err(|e| Some(e.to_string()))?;
            send.write_all(&wire)
                .await
                .map_err(|e| Some(e.to_string()))?;
            send.finish().map_err(|e| Some(e.to_string()))?;
            p.counters.sent(wire.len());
            recv.read_to_end(MAX_FRAME).await.map_err(|e| match e {
                quinn::ReadToEndError::TooLong => None,
                e => Some(e.to_string()),
            })
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                p.counters.drop(DropReason::Timeout);
                return Err(SendError::Timeout {
                    peer: peer.to_string(),
                    timeout,
                });
            }
            Ok(Err(None)) => {
                let error = FrameError::Oversized {
                    len: MAX_FRAME + 1,
                    max: MAX_FRAME,
                };
                inner.refuse(&p, &error);
                return Err(SendError::BadAnswer {
                    peer: peer.to_string(),
                    error,
                });
            }
            Ok(Err(Some(reason))) => {
                p.counters.drop(DropReason::SendFailed);
                return Err(SendError::Connection {
                    peer: peer.to_string(),
                    reason,
                });
            }
            Ok(Ok(a)) => a,
        };
        let frame = inner
            .check(&p, &link, Bytes::from(answer), Channel::Stream, true)
            .map_err(|error| {
                inner.refuse(&p, &error);
                SendError::BadAnswer {
                    peer: peer.to_string(),
                    error,
                }
            })?;
        if frame.flags & FLAG_ERROR != 0 {
            return Err(SendError::Remote {
                peer: peer.to_string(),
                reason: String::from_utf8_lossy(&frame.body).into_owned(),
            });
        }
        Ok(frame.body)
    }

    /// Queues a datagram of `kind` to `peer`. Delivery is not confirmed:
    /// use it where loss is harmless.
    ///
    /// # Errors
    /// [`SendError::UnknownPeer`], [`SendError::NotConnected`],
    /// [`SendError::TooLarge`] (beyond what the path carries) or
    /// [`SendError::QueueFull`]; each but the first is counted as a drop.
    pub fn send_datagram(&self, peer: &str, kind: u16, body: Bytes) -> Result<(), SendError> {
        let p = self
            .inner
            .peer(peer)
            .ok_or_else(|| SendError::UnknownPeer(peer.to_string()))?;
        let Some(link) = p.live_link() else {
            p.counters.drop(DropReason::NoLink);
            return Err(SendError::NotConnected(peer.to_string()));
        };
        let len = self.datagram_len(&body);
        let max = link.conn.max_datagram_size().unwrap_or(0);
        if len > max {
            p.counters.drop(DropReason::TooLarge);
            return Err(SendError::TooLarge(format!(
                "a datagram frame of {len} bytes exceeds the {max} bytes the path to `{peer}` carries"
            )));
        }
        p.queue.try_send((kind, body)).map_err(|_| {
            p.counters.drop(DropReason::QueueFull);
            SendError::QueueFull(peer.to_string())
        })
    }

    fn datagram_len(&self, body: &Bytes) -> usize {
        Frame {
            flags: 0,
            kind: 0,
            seq: 1,
            sender: self.inner.cfg.identity.node_id().to_string(),
            body: body.clone(),
        }
        .encoded_len()
    }

    /// The peers with a live link now, sorted by id: where a request or
    /// datagram can go without failing at once.
    pub fn connected_peers(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.inner.peers)
            .values()
            .filter(|p| p.live_link().is_some())
            .map(|p| p.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Counters and link states, peers sorted by id.
    pub fn snapshot(&self) -> MeshSnapshot {
        let inner = &self.inner;
        let mut peers: Vec<PeerSnapshot> = lock(&inner.peers)
            .values()
            .map(|p| {
                let (addr, fp) = p.spec();
                let link = p.live_link();
                PeerSnapshot::new(
                    &p.id,
                    addr,
                    fp.to_string(),
                    if link.is_some() {
                        LinkState::Connected
                    } else {
                        match p.state() {
                            LinkState::Connected => LinkState::Connecting,
                            s => s,
                        }
                    },
                    link.map(|l| l.conn.rtt()),
                    &p.counters,
                )
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        MeshSnapshot::new(
            inner.cfg.identity.node_id(),
            inner.listen,
            inner.cfg.identity.fingerprint().to_string(),
            peers,
            &inner.counters,
        )
    }

    /// Closes every connection and stops every task. Further calls do
    /// nothing.
    pub fn close(&self) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(t) = lock(&inner.accept_task).take() {
            t.abort();
        }
        for (_, p) in lock(&inner.peers).drain() {
            p.stop("shutting down");
        }
        inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        tracing::info!("mesh: closed");
    }
}

// === impl Inner ===

impl Inner {
    fn peer(&self, id: &str) -> Option<Arc<Peer>> {
        lock(&self.peers).get(id).cloned()
    }

    fn encode(&self, flags: u8, kind: u16, seq: u64, body: Bytes) -> Result<Bytes, FrameError> {
        Frame {
            flags,
            kind,
            seq,
            sender: self.cfg.identity.node_id().to_string(),
            body,
        }
        .encode()
    }

    /// Every check a received frame passes: the format, the direction
    /// (`response` or request/datagram), the sender, the sequence number.
    fn check(
        &self,
        peer: &Peer,
        link: &Link,
        wire: Bytes,
        ch: Channel,
        response: bool,
    ) -> Result<Frame, FrameError> {
        let len = wire.len();
        let f = Frame::decode(wire)?;
        if (f.flags & FLAG_RESPONSE != 0) != response {
            return Err(FrameError::Malformed(if response {
                "a request where an answer was expected"
            } else {
                "an answer where a request was expected"
            }));
        }
        if !response && f.flags != 0 {
            return Err(FrameError::Malformed("flags on a request"));
        }
        if f.sender != peer.id {
            return Err(FrameError::ForgedSender {
                claimed: f.sender,
                peer: peer.id.clone(),
            });
        }
        if !link.accept_seq(ch, f.seq) {
            return Err(FrameError::Replayed(f.seq));
        }
        peer.counters.received(len);
        Ok(f)
    }

    fn refuse(&self, peer: &Peer, e: &FrameError) {
        peer.counters.refused.fetch_add(1, Ordering::Relaxed);
        self.counters.refuse_frame(&peer.id, e);
    }

    /// Dials the peer and says hello; the link once the peer answered.
    async fn dial(&self, peer: &Peer) -> Result<Arc<Link>, String> {
        let (addr, fp) = peer.spec();
        let crypto = tls::client_config(&self.cfg.identity, &peer.id, fp, self.counters.clone())
            .map_err(|e| e.to_string())?;
        let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
        cc.transport_config(self.transport.clone());
        let connecting = self
            .endpoint
            .connect_with(cc, addr, tls::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let dial = async {
            let conn = connecting.await.map_err(|e| e.to_string())?;
            let link = Arc::new(Link::new(conn, true));
            let wire = self
                .encode(0, KIND_HELLO, link.next_seq(Channel::Stream), Bytes::new())
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = link.conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&wire).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            peer.counters.sent(wire.len());
            let answer = recv
                .read_to_end(MAX_FRAME)
                .await
                .map_err(|e| format!("hello refused: {e}"))?;
            match self.check(peer, &link, Bytes::from(answer), Channel::Stream, true) {
                Ok(f) if f.flags & FLAG_ERROR == 0 => Ok(link),
                Ok(_) => Err("hello refused".to_string()),
                Err(e) => {
                    self.refuse(peer, &e);
                    Err(e.to_string())
                }
            }
        };
        match tokio::time::timeout(self.cfg.connect_timeout, dial).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no handshake within {:?}",
                self.cfg.connect_timeout
            )),
        }
    }

    /// Makes `conn` the peer's link, unless a live link that the
    /// tie-break prefers exists (then `conn` is closed).
    fn install(self: &Arc<Self>, peer: &Arc<Peer>, link: Arc<Link>) {
        let prefer_mine = self.cfg.identity.node_id() < peer.id.as_str();
        let dialed_by_me = link.dialed_by_me;
        {
            let mut cur = lock(&peer.link);
            if let Some(old) = cur.as_ref().filter(|l| l.is_live()) {
                let old_preferred = old.dialed_by_me == prefer_mine;
                let new_preferred = dialed_by_me == prefer_mine;
                if old_preferred && !new_preferred {
                    link.conn
                        .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
                    return;
                }
                old.conn.close(
                    VarInt::from_u32(CLOSE_DUPLICATE),
                    b"replaced by the preferred connection",
                );
            } else if peer.ever_linked.swap(true, Ordering::Relaxed) {
                peer.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            *cur = Some(link.clone());
        }
        peer.set_state(LinkState::Connected);
        tracing::info!(
            peer = %peer.id,
            remote = %link.conn.remote_address(),
            dialed = dialed_by_me,
            "mesh: link up"
        );
        peer.bump();
        tokio::spawn(serve_streams(self.clone(), peer.clone(), link.clone()));
        tokio::spawn(serve_datagrams(self.clone(), peer.clone(), link));
    }
}

// === tasks ===

/// Dials the peer whenever it has no live link, with backoff.
async fn run_peer(inner: Arc<Inner>, peer: Arc<Peer>) {
    let mut changes = peer.changes.subscribe();
    let mut backoff = inner.cfg.backoff_min;
    let mut fresh = true;
    loop {
        if let Some(link) = peer.live_link() {
            backoff = inner.cfg.backoff_min;
            fresh = true;
            tokio::select! {
                _ = link.conn.closed() => peer.unlink(&link),
                _ = changes.changed() => {}
            }
            continue;
        }
        if fresh && inner.cfg.identity.node_id() > peer.id.as_str() {
            // The smaller id dials first; its connection is the one both
            // keep, so give it a head start.
            fresh = false;
            peer.set_state(LinkState::Connecting);
            tokio::select! {
                () = tokio::time::sleep(jitter(inner.cfg.backoff_min * 3)) => {}
                _ = changes.changed() => {}
            }
            continue;
        }
        fresh = false;
        peer.set_state(LinkState::Connecting);
        match inner.dial(&peer).await {
            Ok(link) => inner.install(&peer, link),
            // The peer dialled in meanwhile: that link serves.
            Err(_) if peer.live_link().is_some() => {}
            Err(e) => {
                peer.set_state(LinkState::Backoff);
                tracing::debug!(peer = %peer.id, error = %e, retry_in = ?backoff, "mesh: dial failed");
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(inner.cfg.backoff_max);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = changes.changed() => {}
                }
            }
        }
    }
}

/// Drains the peer's datagram queue onto its link.
async fn run_datagrams(inner: Arc<Inner>, peer: Arc<Peer>, mut rx: mpsc::Receiver<(u16, Bytes)>) {
    while let Some((kind, body)) = rx.recv().await {
        let Some(link) = peer.live_link() else {
            peer.counters.drop(DropReason::NoLink);
            continue;
        };
        let Ok(wire) = inner.encode(0, kind, link.next_seq(Channel::Datagram), body) else {
            peer.counters.drop(DropReason::TooLarge);
            continue;
        };
        let len = wire.len();
        match tokio::time::timeout(inner.cfg.serve_timeout, link.conn.send_datagram_wait(wire))
            .await
        {
            Ok(Ok(())) => peer.counters.sent(len),
            Ok(Err(quinn::SendDatagramError::TooLarge)) => peer.counters.drop(DropReason::TooLarge),
            Ok(Err(_)) => peer.counters.drop(DropReason::SendFailed),
            Err(_) => peer.counters.drop(DropReason::Timeout),
        }
    }
}

/// Accepts connections; the TLS verifier has already checked the pin by
/// the time one completes.
async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "mesh: incoming connection failed");
                    return;
                }
            };
            let conn = match tokio::time::timeout(inner.cfg.connect_timeout, connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "mesh: incoming handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("mesh: incoming handshake timed out");
                    return;
                }
            };
            let Some(id) = peer_id(&conn) else {
                conn.close(VarInt::from_u32(CLOSE_REFUSED), b"no usable certificate");
                return;
            };
            match inner.peer(&id) {
                Some(peer) if !inner.closed.load(Ordering::Relaxed) => {
                    inner.install(&peer, Arc::new(Link::new(conn, false)));
                }
                _ => conn.close(VarInt::from_u32(CLOSE_REFUSED), b"not a peer"),
            }
        });
    }
}

/// The node id the connection's (verified) certificate names.
fn peer_id(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    let (id, _) = read_certificate(certs.first()?).ok()?;
    Some(id)
}

/// Serves the requests the peer opens on `link`.
async fn serve_streams(inner: Arc<Inner>, peer: Arc<Peer>, link: Arc<Link>) {
    while let Ok((send, recv)) = link.conn.accept_bi().await {
        tokio::spawn(serve_stream(
            inner.clone(),
            peer.clone(),
            link.clone(),
            send,
            recv,
        ));
    }
    peer.unlink(&link);
}

async fn serve_stream(
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    link: Arc<Link>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let t = inner.cfg.serve_timeout;
    let refused = VarInt::from_u32(STREAM_REFUSED);
    let wire = match tokio::time::timeout(t, recv.read_to_end(MAX_FRAME)).await {
        Ok(Ok(w)) => Bytes::from(w),
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            inner.refuse(
                &peer,
                &FrameError::Oversized {
                    len: MAX_FRAME + 1,
                    max: MAX_FRAME,
                },
            );
            let _ = recv.stop(refused);
            let _ = send.reset(refused);
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(STREAM_TIMEOUT));
            let _ = send.reset(VarInt::from_u32(STREAM_TIMEOUT));
            return;
        }
    };
    let frame = match inner.check(&peer, &link, wire, Channel::Stream, false) {
        Ok(f) => f,
        Err(e) => {
            inner.refuse(&peer, &e);
            let _ = send.reset(refused);
            return;
        }
    };
    let handler = inner
        .requests
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&frame.kind)
        .cloned();
    let (flags, body) = match handler {
        None if frame.kind == KIND_HELLO => (FLAG_RESPONSE, Bytes::new()),
        None => {
            let e = FrameError::UnknownKind(frame.kind);
            inner.refuse(&peer, &e);
            (FLAG_RESPONSE | FLAG_ERROR, Bytes::from(e.to_string()))
        }
        Some(h) => {
            let call = h(Inbound {
                from: peer.id.clone(),
                kind: frame.kind,
                body: frame.body,
            });
            match tokio::time::timeout(t, call).await {
                Ok(Ok(b)) => (FLAG_RESPONSE, b),
                Ok(Err(mut text)) => {
                    if text.len() > MAX_ERROR_TEXT {
                        let mut cut = MAX_ERROR_TEXT;
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        text.truncate(cut);
                    }
                    (FLAG_RESPONSE | FLAG_ERROR, Bytes::from(text))
                }
                Err(_) => (
                    FLAG_RESPONSE | FLAG_ERROR,
                    Bytes::from(format!(
                        "the handler for kind {} gave no answer within {t:?}",
                        frame.kind
                    )),
                ),
            }
        }
    };
    let seq = link.next_seq(Channel::Stream);
    let answer = match inner.encode(flags, frame.kind, seq, body) {
        Ok(w) => w,
        Err(e) => {
            peer.counters.drop(DropReason::TooLarge);
            let text = Bytes::from(format!("the answer is too large: {e}"));
            match inner.encode(FLAG_RESPONSE | FLAG_ERROR, frame.kind, seq, text) {
                Ok(w) => w,
                Err(_) => return,
            }
        }
    };
    let len = answer.len();
    let write = async {
        send.write_all(&answer).await.map_err(|_| ())?;
        send.finish().map_err(|_| ())
    };
    match tokio::time::timeout(t, write).await {
        Ok(Ok(())) => peer.counters.sent(len),
        Ok(Err(())) => peer.counters.drop(DropReason::SendFailed),
        Err(_) => peer.counters.drop(DropReason::Timeout),
    }
}

/// Delivers the peer's datagrams on `link` to their handlers.
async fn serve_datagrams(inner: Arc<Inner>, peer: Arc<Peer>, link: Arc<Link>) {
    while let Ok(wire) = link.conn.read_datagram().await {
        let frame = match inner.check(&peer, &link, wire, Channel::Datagram, false) {
            Ok(f) => f,
            Err(e) => {
                inner.refuse(&peer, &e);
                continue;
            }
        };
        let handler = inner
            .datagrams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&frame.kind)
            .cloned();
        match handler {
            Some(h) => h(Inbound {
                from: peer.id.clone(),
                kind: frame.kind,
                body: frame.body,
            }),
            None => inner.refuse(&peer, &FrameError::UnknownKind(frame.kind)),
        }
    }
}
