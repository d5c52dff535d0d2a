//! The gossip transport: chitchat's messages as datagrams, each sealed with
//! XChaCha20-Poly1305 under a key derived from the cluster secret.
//!
//! What carries the datagrams is a value, [`GossipTransport`]: UDP in
//! production, anything implementing [`DatagramTransport`] in tests and
//! fault injection ([`crate::faults`]). The sealing sits above that seam,
//! so an injected transport only ever moves sealed bytes and cannot turn
//! authentication off (ADR 0029).
//!
//! Wire format of one datagram:
//!
//! ```text
//! 0x01 | nonce (24 bytes, random) | ciphertext of the chitchat message | tag (16 bytes)
//! ```
//!
//! The leading byte is authenticated as associated data. A node without a
//! secret (loopback only, see [`crate::membership`]) sends `0x00 | message`
//! instead, so a sealed node and an open one never understand each other by
//! accident: each counts the other's datagrams as rejected.
//!
//! A datagram that fails to open (wrong key, tampered, truncated, unknown
//! format) or that opens to something chitchat cannot decode is dropped and
//! counted in [`GossipStats`]; nothing from the wire is trusted before the
//! tag checks out. Replays of an authentic datagram are not detected here:
//! chitchat's state merge ignores versions it already has, so a replay can
//! at worst repeat old news.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, Generate as _, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable as _, Serializable as _};
use hkdf::Hkdf;
use serde::Serialize;
use sha2::Sha256;

/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Bytes a sealed datagram adds to the message: format byte, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + 24 + 16;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

const FORMAT_OPEN: u8 = 0x00;
const FORMAT_SEALED: u8 = 0x01;
const NONCE_LEN: usize = 24;
/// HKDF salt: fixes the key to this protocol and its version.
const KDF_SALT: &[u8] = b"weir gossip v1";

/// What carries gossip datagrams: binds sockets. It moves bytes only; the
/// bytes it is handed are already sealed (or marked open).
#[async_trait]
pub trait DatagramTransport: Send + Sync + 'static {
    /// A socket bound to `addr`; port 0 picks one, which
    /// [`DatagramSocket::local_addr`] then reports.
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>>;
}

/// One bound datagram socket, as [`tokio::net::UdpSocket`] is one.
#[async_trait]
pub trait DatagramSocket: Send + Sync + 'static {
    /// The address it is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Sends one datagram. A datagram lost on the way is not an error.
    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// Waits for one datagram; returns its length and sender.
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

/// The production transport: plain UDP sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Udp;

#[async_trait]
impl DatagramTransport for Udp {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>> {
        Ok(Box::new(tokio::net::UdpSocket::bind(addr).await?))
    }
}

#[async_trait]
impl DatagramSocket for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::send_to(self, datagram, to).await
    }
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::recv_from(self, buf).await
    }
}

/// The transport gossip runs over, as a value a caller passes in
/// ([`crate::membership::MembershipConfig::transport`]). The default is
/// [`Udp`]. Whatever it is, membership seals above it.
#[derive(Clone)]
pub struct GossipTransport(Arc<dyn DatagramTransport>);

impl GossipTransport {
    /// Gossip over `transport`.
    pub fn new(transport: impl DatagramTransport) -> GossipTransport {
        GossipTransport(Arc::new(transport))
    }

    /// Binds a socket through the transport.
    ///
    /// # Errors
    /// Whatever the transport's bind returns.
    pub async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>> {
        self.0.bind(addr).await
    }
}

impl Default for GossipTransport {
    fn default() -> Self {
        GossipTransport::new(Udp)
    }
}

impl std::fmt::Debug for GossipTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipTransport(..)")
    }
}

/// Errors building the gossip key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The secret is shorter than [`MIN_SECRET_LEN`].
    #[error("the cluster secret is {len} bytes; it must be at least {MIN_SECRET_LEN}")]
    TooShort {
        /// Its length.
        len: usize,
    },
}

/// The AEAD key of one cluster, derived from its secret.
#[derive(Clone)]
pub struct GossipKey(XChaCha20Poly1305);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    /// HKDF-SHA256 over `secret` (surrounding whitespace ignored, so a
    /// secret file may end with a newline), with the cluster name as the
    /// `info`: two clusters sharing a secret still cannot read each other.
    ///
    /// # Errors
    /// If the trimmed secret is shorter than [`MIN_SECRET_LEN`].
    pub fn derive(secret: &[u8], cluster_name: &str) -> Result<GossipKey, KeyError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort { len: secret.len() });
        }
        let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), secret);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        if hk.expand(cluster_name.as_bytes(), &mut okm).is_err() {
            unreachable!("32 bytes is a valid HKDF-SHA256 output length");
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&okm)
            .unwrap_or_else(|_| unreachable!("the key is 32 bytes"));
        Ok(GossipKey(cipher))
    }

    /// Seals `plain` into `out` (cleared first).
    fn seal(&self, plain: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let nonce = XNonce::try_generate().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &[FORMAT_SEALED],
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a gossip datagram failed"))?;
        out.clear();
        out.push(FORMAT_SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(())
    }

    /// Opens a sealed datagram; `None` if it is not authentic.
    fn open(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        let (&format, rest) = datagram.split_first()?;
        if format != FORMAT_SEALED || rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.0
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &[FORMAT_SEALED],
                },
            )
            .ok()
    }
}

/// Counters of one gossip socket; shared with whoever reports them.
#[derive(Debug, Default)]
pub struct GossipStats {
    sent_datagrams: AtomicU64,
    sent_bytes: AtomicU64,
    received_datagrams: AtomicU64,
    received_bytes: AtomicU64,
    rejected_datagrams: AtomicU64,
    malformed_datagrams: AtomicU64,
    oversized_datagrams: AtomicU64,
}

/// A copy of [`GossipStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GossipStatsSnapshot {
    /// Datagrams sent.
    pub sent_datagrams: u64,
    /// Bytes sent (sealed size).
    pub sent_bytes: u64,
    /// Datagrams received that opened and decoded.
    pub received_datagrams: u64,
    /// Bytes received in those datagrams.
    pub received_bytes: u64,
    /// Datagrams dropped because they failed to open: wrong key, tampered,
    /// truncated, or sealed/open mismatch.
    pub rejected_datagrams: u64,
    /// Datagrams that opened but did not decode as chitchat messages.
    pub malformed_datagrams: u64,
    /// Outgoing messages dropped because sealed they exceed one datagram.
    pub oversized_datagrams: u64,
}

impl GossipStats {
    /// The current values.
    pub fn snapshot(&self) -> GossipStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GossipStatsSnapshot {
            sent_datagrams: get(&self.sent_datagrams),
            sent_bytes: get(&self.sent_bytes),
            received_datagrams: get(&self.received_datagrams),
            received_bytes: get(&self.received_bytes),
            rejected_datagrams: get(&self.rejected_datagrams),
            malformed_datagrams: get(&self.malformed_datagrams),
            oversized_datagrams: get(&self.oversized_datagrams),
        }
    }
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// A chitchat [`Transport`] that seals every datagram (or marks it open
/// when there is no key). It hands out one socket: the one given to
/// [`SealedTransport::new`] or [`SealedTransport::over`], already bound, so
/// callers can bind port 0 and learn the port before chitchat starts.
pub struct SealedTransport {
    key: Option<GossipKey>,
    stats: Arc<GossipStats>,
    socket: Mutex<Option<Unopened>>,
}

/// The socket before chitchat opens it. A std UDP socket is only turned
/// into a tokio one there, inside the runtime.
enum Unopened {
    Udp(std::net::UdpSocket),
    Bound(Box<dyn DatagramSocket>),
}

impl SealedTransport {
    /// A transport over the UDP `socket` (bound, any blocking mode);
    /// `key: None` sends open datagrams.
    pub fn new(
        socket: std::net::UdpSocket,
        key: Option<GossipKey>,
        stats: Arc<GossipStats>,
    ) -> Self {
        Self::unopened(Unopened::Udp(socket), key, stats)
    }

    /// A transport over `socket`, bound by any [`DatagramTransport`];
    /// `key: None` sends open datagrams.
    pub fn over(
        socket: Box<dyn DatagramSocket>,
        key: Option<GossipKey>,
        stats: Arc<GossipStats>,
    ) -> Self {
        Self::unopened(Unopened::Bound(socket), key, stats)
    }

    fn unopened(socket: Unopened, key: Option<GossipKey>, stats: Arc<GossipStats>) -> Self {
        SealedTransport {
            key,
            stats,
            socket: Mutex::new(Some(socket)),
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let unopened = self
            .socket
            .lock()
            .map_err(|_| anyhow::anyhow!("gossip transport lock poisoned"))?
            .take()
            .context("the gossip socket was already opened")?;
        let socket: Box<dyn DatagramSocket> = match unopened {
            Unopened::Udp(std_socket) => {
                std_socket.set_nonblocking(true)?;
                Box::new(tokio::net::UdpSocket::from_std(std_socket)?)
            }
            Unopened::Bound(socket) => socket,
        };
        let bound = socket.local_addr()?;
        if bound != listen_addr {
            anyhow::bail!("gossip socket is bound to {bound}, not {listen_addr}");
        }
        Ok(Box::new(SealedSocket {
            key: self.key.clone(),
            stats: self.stats.clone(),
            socket,
            plain: Vec::with_capacity(MAX_DATAGRAM),
            wire: Vec::with_capacity(MAX_DATAGRAM),
            recv_buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    key: Option<GossipKey>,
    stats: Arc<GossipStats>,
    socket: Box<dyn DatagramSocket>,
    plain: Vec<u8>,
    wire: Vec<u8>,
    recv_buf: Box<[u8]>,
}

impl SealedSocket {
    /// Opens one datagram into a message, counting what is dropped.
    fn unwrap_datagram(&self, datagram: &[u8], from: SocketAddr) -> Option<ChitchatMessage> {
        let opened;
        let mut plain: &[u8] = match (&self.key, datagram.split_first()) {
            (Some(key), _) => match key.open(datagram) {
                Some(p) => {
                    opened = p;
                    &opened
                }
                None => {
                    bump(&self.stats.rejected_datagrams, 1);
                    tracing::debug!(%from, len = datagram.len(), "gossip datagram failed to open; dropped");
                    return None;
                }
            },
            (None, Some((&FORMAT_OPEN, rest))) => rest,
            (None, _) => {
                bump(&self.stats.rejected_datagrams, 1);
                tracing::debug!(%from, len = datagram.len(), "sealed or unknown gossip datagram on an open node; dropped");
                return None;
            }
        };
        match ChitchatMessage::deserialize(&mut plain) {
            Ok(msg) => Some(msg),
            Err(e) => {
                bump(&self.stats.malformed_datagrams, 1);
                tracing::debug!(%from, error = %e, "gossip datagram is not a chitchat message; dropped");
                None
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.plain.clear();
        msg.serialize(&mut self.plain);
        match &self.key {
            Some(key) => key.seal(&self.plain, &mut self.wire)?,
            None => {
                self.wire.clear();
                self.wire.push(FORMAT_OPEN);
                self.wire.extend_from_slice(&self.plain);
            }
        }
        if self.wire.len() > MAX_DATAGRAM {
            bump(&self.stats.oversized_datagrams, 1);
            tracing::warn!(len = self.wire.len(), %to, "gossip message too large for one datagram; dropped");
            return Ok(());
        }
        match self.socket.send_to(&self.wire, to).await {
            Ok(n) => {
                bump(&self.stats.sent_datagrams, 1);
                bump(&self.stats.sent_bytes, n as u64);
                Ok(())
            }
            // A peer that went away, or a route that is down, is not a
            // broken transport: the failure detector deals with the peer.
            Err(e) => {
                tracing::debug!(%to, error = %e, "gossip send failed");
                Ok(())
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("gossip socket receive failed"),
            };
            let Some(datagram) = self.recv_buf.get(..len) else {
                continue;
            };
            if let Some(msg) = self.unwrap_datagram(datagram, from_addr) {
                bump(&self.stats.received_datagrams, 1);
                bump(&self.stats.received_bytes, len as u64);
                return Ok((from_addr, msg));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn envelope() -> ChitchatMessage {
        ChitchatMessage::BadCluster
    }

    fn key(secret: &str) -> GossipKey {
        GossipKey::derive(secret.as_bytes(), "test-cluster").expect("long enough")
    }

    struct Sock {
        inner: Box<dyn Socket>,
        addr: SocketAddr,
    }

    impl Sock {
        async fn send(&mut self, to: SocketAddr, m: ChitchatMessage) -> anyhow::Result<()> {
            self.inner.send(to, m).await
        }
        fn local_addr(&self) -> anyhow::Result<SocketAddr> {
            Ok(self.addr)
        }
        async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
            self.inner.recv().await
        }
    }

    async fn socket(key: Option<GossipKey>) -> (Sock, Arc<GossipStats>) {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = std.local_addr().expect("addr");
        let stats = Arc::new(GossipStats::default());
        let t = SealedTransport::new(std, key, stats.clone());
        let inner = t.open(addr).await.expect("open");
        (Sock { inner, addr }, stats)
    }

    async fn recv_within(s: &mut Sock, d: Duration) -> Option<(SocketAddr, ChitchatMessage)> {
        tokio::time::timeout(d, s.recv())
            .await
            .ok()
            .map(|r| r.expect("recv"))
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            GossipKey::derive(b"  short\n", "c"),
            Err(KeyError::TooShort { len: 5 })
        ));
        assert!(GossipKey::derive(b"0123456789abcdef\n", "c").is_ok());
    }

    #[test]
    fn seal_then_open_round_trips_and_binds_the_cluster_name() {
        let k = key("a secret of some length");
        let mut wire = Vec::new();
        k.seal(b"hello", &mut wire).expect("seal");
        assert_eq!(wire.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(k.open(&wire).as_deref(), Some(&b"hello"[..]));
        let other_cluster =
            GossipKey::derive(b"a secret of some length", "other-cluster").expect("long enough");
        assert_eq!(other_cluster.open(&wire), None);
        // Nonces are random: the same message seals differently.
        let mut again = Vec::new();
        k.seal(b"hello", &mut again).expect("seal");
        assert_ne!(wire, again);
    }

    #[tokio::test]
    async fn sealed_sockets_talk() {
        let (mut a, a_stats) = socket(Some(key("same secret for both"))).await;
        let (mut b, b_stats) = socket(Some(key("same secret for both"))).await;
        let b_addr = b.local_addr().expect("addr");
        a.send(b_addr, envelope()).await.expect("send");
        let got = recv_within(&mut b, Duration::from_secs(5))
            .await
            .expect("delivered");
        assert_eq!(got.1, envelope());
        assert_eq!(got.0, a.local_addr().expect("addr"));
        assert_eq!(
            a_stats.snapshot().sent_bytes,
            b_stats.snapshot().received_bytes
        );
        assert_eq!(a_stats.snapshot().sent_datagrams, 1);
        assert_eq!(b_stats.snapshot().received_datagrams, 1);
        assert_eq!(b_stats.snapshot().rejected_datagrams, 0);
    }

    #[tokio::test]
    async fn wrong_key_is_rejected_and_counted() {
        let (mut a, _) = socket(Some(key("the first secret value"))).await;
        let (mut b, b_stats) = socket(Some(key("the other secret value"))).await;
        let b_addr = b.local_addr().expect("addr");
        a.send(b_addr, envelope()).await.expect("send");
        // A good datagram after the bad one proves the bad one was read and
        // dropped rather than still in flight.
        let (mut c, _) = socket(Some(key("the other secret value"))).await;
        c.send(b_addr, envelope()).await.expect("send");
        let got = recv_within(&mut b, Duration::from_secs(5))
            .await
            .expect("the good one arrives");
        assert_eq!(got.0, c.local_addr().expect("addr"));
        assert_eq!(b_stats.snapshot().rejected_datagrams, 1);
        assert_eq!(b_stats.snapshot().received_datagrams, 1);
    }

    #[tokio::test]
    async fn tampered_truncated_and_open_datagrams_are_rejected() {
        let k = key("a secret shared by all");
        let (mut b, b_stats) = socket(Some(k.clone())).await;
        let b_addr = b.local_addr().expect("addr");
        let raw = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut plain = Vec::new();
        envelope().serialize(&mut plain);
        let mut sealed = Vec::new();
        k.seal(&plain, &mut sealed).expect("seal");

        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut flipped_body = sealed.clone();
        flipped_body[1 + NONCE_LEN] ^= 0x80;
        let mut open = vec![FORMAT_OPEN];
        open.extend_from_slice(&plain);
        for bad in [
            &flipped[..],
            &flipped_body[..],
            &sealed[..sealed.len() - 1],
            &sealed[..10],
            &open[..],
            &[][..],
        ] {
            raw.send_to(bad, b_addr).await.expect("send");
        }
        raw.send_to(&sealed, b_addr).await.expect("send");
        let got = recv_within(&mut b, Duration::from_secs(5))
            .await
            .expect("the authentic one arrives");
        assert_eq!(got.1, envelope());
        assert_eq!(b_stats.snapshot().rejected_datagrams, 6);
        // The same authentic datagram twice is accepted twice (replays are
        // harmless to chitchat, see the module docs).
        raw.send_to(&sealed, b_addr).await.expect("send");
        assert!(recv_within(&mut b, Duration::from_secs(5)).await.is_some());
    }

    #[tokio::test]
    async fn authentic_garbage_is_counted_as_malformed() {
        let k = key("a secret shared by all");
        let (mut b, b_stats) = socket(Some(k.clone())).await;
        let b_addr = b.local_addr().expect("addr");
        let raw = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut sealed = Vec::new();
        k.seal(b"\xffnot chitchat", &mut sealed).expect("seal");
        raw.send_to(&sealed, b_addr).await.expect("send");
        let mut good = Vec::new();
        envelope().serialize(&mut good);
        let mut good_sealed = Vec::new();
        k.seal(&good, &mut good_sealed).expect("seal");
        raw.send_to(&good_sealed, b_addr).await.expect("send");
        assert!(recv_within(&mut b, Duration::from_secs(5)).await.is_some());
        assert_eq!(b_stats.snapshot().malformed_datagrams, 1);
        assert_eq!(b_stats.snapshot().rejected_datagrams, 0);
    }

    #[tokio::test]
    async fn open_node_refuses_sealed_datagrams() {
        let (mut a, _) = socket(Some(key("a secret shared by all"))).await;
        let (mut b, b_stats) = socket(None).await;
        let (mut c, _) = socket(None).await;
        let b_addr = b.local_addr().expect("addr");
        a.send(b_addr, envelope()).await.expect("send");
        c.send(b_addr, envelope()).await.expect("send");
        let got = recv_within(&mut b, Duration::from_secs(5))
            .await
            .expect("the open one arrives");
        assert_eq!(got.0, c.local_addr().expect("addr"));
        assert_eq!(b_stats.snapshot().rejected_datagrams, 1);
    }
}
