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
//! chitchat fills its replies up to the largest UDP payload without knowing
//! about the seal, so a reply can come out up to [`SEAL_OVERHEAD`] bytes too
//! large (ADR 0033). Such a message goes in [parts](MAX_PARTS), each its own
//! datagram, sealed on its own (`0x03`, or `0x02` open) over
//!
//! ```text
//! message id (8 bytes) | part index (1 byte) | part count (1 byte) | bytes of the message
//! ```
//!
//! and the receiver puts the message back together once every part has
//! opened. Parts wait a bounded time, in a bounded number of messages per
//! socket; a message whose parts do not all arrive is lost like any lost
//! datagram, and counted. A node from before this format counts parts as
//! rejected, as it would have dropped the whole message anyway.
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
use std::time::Duration;

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

/// Bytes in front of each part of a message sent in parts: message id,
/// part index, part count.
pub const PART_HEADER: usize = 8 + 1 + 1;
/// Most parts a message may be sent in. chitchat's messages exceed one
/// datagram by at most a few dozen bytes, so two is all they take; a
/// message needing more than this is dropped and counted as oversized.
pub const MAX_PARTS: usize = 4;
/// Messages waiting for their remaining parts, per socket; past this the
/// oldest is dropped. Parts of one message are sent back to back, so few
/// wait at any time.
const MAX_PENDING: usize = 16;
/// How long a message waits for its remaining parts. chitchat asks again
/// every round, so a message older than this is not worth finishing.
const PART_TIMEOUT: Duration = Duration::from_secs(5);

const FORMAT_OPEN: u8 = 0x00;
const FORMAT_SEALED: u8 = 0x01;
const FORMAT_OPEN_PART: u8 = 0x02;
const FORMAT_SEALED_PART: u8 = 0x03;
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

    /// Seals `plain` into `out` (cleared first) as a whole message.
    #[cfg(test)]
    fn seal(&self, plain: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        self.seal_as(FORMAT_SEALED, plain, out)
    }

    /// Seals `plain` into `out` (cleared first) under the format byte
    /// `format`, which the tag covers.
    fn seal_as(&self, format: u8, plain: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let nonce = XNonce::try_generate().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &[format],
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a gossip datagram failed"))?;
        out.clear();
        out.push(format);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(())
    }

    /// Opens a datagram sealed as a whole message; `None` if it is not
    /// authentic or not a whole message.
    #[cfg(test)]
    fn open(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        match self.open_any(datagram)? {
            (FORMAT_SEALED, plain) => Some(plain),
            _ => None,
        }
    }

    /// Opens a sealed datagram, whole message or part; returns its format
    /// byte and contents, or `None` if it is not authentic.
    fn open_any(&self, datagram: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (&format, rest) = datagram.split_first()?;
        if !matches!(format, FORMAT_SEALED | FORMAT_SEALED_PART) || rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).ok()?;
        let plain = self
            .0
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &[format],
                },
            )
            .ok()?;
        Some((format, plain))
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
    split_messages: AtomicU64,
    incomplete_messages: AtomicU64,
}

/// A copy of [`GossipStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GossipStatsSnapshot {
    /// Datagrams sent.
    pub sent_datagrams: u64,
    /// Bytes sent (sealed size).
    pub sent_bytes: u64,
    /// Datagrams received that opened and decoded (the parts of a message
    /// count once the whole message has).
    pub received_datagrams: u64,
    /// Bytes received in those datagrams.
    pub received_bytes: u64,
    /// Datagrams dropped because they failed to open: wrong key, tampered,
    /// truncated, or sealed/open mismatch.
    pub rejected_datagrams: u64,
    /// Datagrams that opened but did not decode as chitchat messages, or
    /// as a well-formed part of one.
    pub malformed_datagrams: u64,
    /// Outgoing messages dropped because sealed they exceed
    /// [`MAX_PARTS`] datagrams.
    pub oversized_datagrams: u64,
    /// Outgoing messages sent in parts because sealed they exceed one
    /// datagram.
    pub split_messages: u64,
    /// Incoming messages dropped because not all their parts arrived in
    /// time (or too many other messages were waiting for theirs).
    pub incomplete_messages: u64,
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
            split_messages: get(&self.split_messages),
            incomplete_messages: get(&self.incomplete_messages),
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
            part: Vec::with_capacity(MAX_DATAGRAM),
            wire: Vec::with_capacity(MAX_DATAGRAM),
            recv_buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            next_message_id: fastrand::u64(..),
            pending: Reassembly::default(),
        }))
    }
}

struct SealedSocket {
    key: Option<GossipKey>,
    stats: Arc<GossipStats>,
    socket: Box<dyn DatagramSocket>,
    plain: Vec<u8>,
    part: Vec<u8>,
    wire: Vec<u8>,
    recv_buf: Box<[u8]>,
    /// Id of the next message sent in parts; starts at random so a restart
    /// does not reuse the ids a peer may still hold parts of.
    next_message_id: u64,
    pending: Reassembly,
}

/// Puts `body` in `out` as one datagram of `format` (the sealed format
/// when there is a key, else `open_format`).
fn wrap(
    key: Option<&GossipKey>,
    format: u8,
    open_format: u8,
    body: &[u8],
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    match key {
        Some(key) => key.seal_as(format, body, out),
        None => {
            out.clear();
            out.push(open_format);
            out.extend_from_slice(body);
            Ok(())
        }
    }
}

/// Sends one datagram, counting it.
async fn transmit(socket: &dyn DatagramSocket, stats: &GossipStats, wire: &[u8], to: SocketAddr) {
    match socket.send_to(wire, to).await {
        Ok(n) => {
            bump(&stats.sent_datagrams, 1);
            bump(&stats.sent_bytes, n as u64);
        }
        // A peer that went away, or a route that is down, is not a broken
        // transport: the failure detector deals with the peer.
        Err(e) => tracing::debug!(%to, error = %e, "gossip send failed"),
    }
}

/// What one incoming datagram holds once opened.
enum Opened<'a> {
    Whole(std::borrow::Cow<'a, [u8]>),
    Part(std::borrow::Cow<'a, [u8]>),
}

/// Opens one datagram, counting it as rejected if it does not open.
fn open_datagram<'a>(
    key: Option<&GossipKey>,
    stats: &GossipStats,
    datagram: &'a [u8],
    from: SocketAddr,
) -> Option<Opened<'a>> {
    use std::borrow::Cow;
    let opened = match (key, datagram.split_first()) {
        (Some(key), _) => match key.open_any(datagram) {
            Some((FORMAT_SEALED_PART, p)) => Some(Opened::Part(Cow::Owned(p))),
            Some((_, p)) => Some(Opened::Whole(Cow::Owned(p))),
            None => None,
        },
        (None, Some((&FORMAT_OPEN, rest))) => Some(Opened::Whole(Cow::Borrowed(rest))),
        (None, Some((&FORMAT_OPEN_PART, rest))) => Some(Opened::Part(Cow::Borrowed(rest))),
        (None, _) => None,
    };
    if opened.is_none() {
        bump(&stats.rejected_datagrams, 1);
        if key.is_some() {
            tracing::debug!(%from, len = datagram.len(), "gossip datagram failed to open; dropped");
        } else {
            tracing::debug!(%from, len = datagram.len(), "sealed or unknown gossip datagram on an open node; dropped");
        }
    }
    opened
}

/// Messages arriving in parts, until each is whole, expires or is pushed
/// out by newer ones. A few entries at most, in arrival order.
#[derive(Default)]
struct Reassembly {
    waiting: Vec<Partial>,
}

struct Partial {
    from: SocketAddr,
    id: u64,
    parts: Vec<Option<Vec<u8>>>,
    missing: usize,
    wire_bytes: u64,
    since: tokio::time::Instant,
}

/// A message put back together, with the datagrams and bytes it came in.
struct Assembled {
    message: Vec<u8>,
    datagrams: u64,
    wire_bytes: u64,
}

impl Reassembly {
    /// Adds one opened part of `wire_len` bytes on the wire. Returns the
    /// whole message once its last part is in; an error names what is
    /// wrong with a malformed part.
    fn add(
        &mut self,
        from: SocketAddr,
        body: &[u8],
        wire_len: usize,
        stats: &GossipStats,
    ) -> Result<Option<Assembled>, &'static str> {
        let (header, bytes) = body
            .split_at_checked(PART_HEADER)
            .ok_or("part shorter than its header")?;
        let (id, index, count) = match header {
            [i0, i1, i2, i3, i4, i5, i6, i7, index, count] => (
                u64::from_le_bytes([*i0, *i1, *i2, *i3, *i4, *i5, *i6, *i7]),
                usize::from(*index),
                usize::from(*count),
            ),
            _ => return Err("part shorter than its header"),
        };
        if !(2..=MAX_PARTS).contains(&count) {
            return Err("part count out of range");
        }
        if index >= count {
            return Err("part index beyond the part count");
        }
        if bytes.is_empty() {
            return Err("empty part");
        }
        let now = tokio::time::Instant::now();
        let at = match self
            .waiting
            .iter()
            .position(|p| p.from == from && p.id == id)
        {
            Some(at) => at,
            None => {
                self.make_room(now, stats);
                self.waiting.push(Partial {
                    from,
                    id,
                    parts: vec![None; count],
                    missing: count,
                    wire_bytes: 0,
                    since: now,
                });
                self.waiting.len() - 1
            }
        };
        let Some(partial) = self.waiting.get_mut(at) else {
            return Ok(None);
        };
        if partial.parts.len() != count {
            self.waiting.remove(at);
            return Err("part count differs between parts of one message");
        }
        let Some(slot) = partial.parts.get_mut(index) else {
            return Ok(None);
        };
        if slot.is_some() {
            // A duplicate (or replayed) part: the first one stands.
            return Ok(None);
        }
        *slot = Some(bytes.to_vec());
        partial.missing -= 1;
        partial.wire_bytes += wire_len as u64;
        if partial.missing > 0 {
            return Ok(None);
        }
        let done = self.waiting.remove(at);
        let message: Vec<u8> = done.parts.into_iter().flatten().flatten().collect();
        Ok(Some(Assembled {
            message,
            datagrams: count as u64,
            wire_bytes: done.wire_bytes,
        }))
    }

    /// Drops expired messages, then the oldest while the table is full.
    fn make_room(&mut self, now: tokio::time::Instant, stats: &GossipStats) {
        let before = self.waiting.len();
        self.waiting
            .retain(|p| now.duration_since(p.since) < PART_TIMEOUT);
        // Oldest first: entries are kept in the order they arrived.
        while self.waiting.len() >= MAX_PENDING {
            self.waiting.remove(0);
        }
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            bump(&stats.incomplete_messages, dropped as u64);
            tracing::debug!(dropped, "gossip messages missing parts; dropped");
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.plain.clear();
        msg.serialize(&mut self.plain);
        let key = self.key.as_ref();
        let overhead = if key.is_some() { SEAL_OVERHEAD } else { 1 };
        if self.plain.len() + overhead <= MAX_DATAGRAM {
            wrap(key, FORMAT_SEALED, FORMAT_OPEN, &self.plain, &mut self.wire)?;
            transmit(&*self.socket, &self.stats, &self.wire, to).await;
            return Ok(());
        }
        // Too large for one datagram once sealed: send it in parts of even
        // size, as few as fit.
        let room = MAX_DATAGRAM - overhead - PART_HEADER;
        let chunk = self.plain.len().div_ceil(self.plain.len().div_ceil(room));
        let count = self.plain.len().div_ceil(chunk);
        let Some(count_byte) = u8::try_from(count).ok().filter(|_| count <= MAX_PARTS) else {
            bump(&self.stats.oversized_datagrams, 1);
            tracing::warn!(len = self.plain.len(), %to, "gossip message too large for {MAX_PARTS} datagrams; dropped");
            return Ok(());
        };
        let id = self.next_message_id;
        self.next_message_id = id.wrapping_add(1);
        bump(&self.stats.split_messages, 1);
        for (index, bytes) in (0u8..).zip(self.plain.chunks(chunk)) {
            self.part.clear();
            self.part.extend_from_slice(&id.to_le_bytes());
            self.part.push(index);
            self.part.push(count_byte);
            self.part.extend_from_slice(bytes);
            wrap(
                key,
                FORMAT_SEALED_PART,
                FORMAT_OPEN_PART,
                &self.part,
                &mut self.wire,
            )?;
            transmit(&*self.socket, &self.stats, &self.wire, to).await;
        }
        Ok(())
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
            let Some(opened) = open_datagram(self.key.as_ref(), &self.stats, datagram, from_addr)
            else {
                continue;
            };
            let (plain, datagrams, wire_bytes) = match opened {
                Opened::Whole(plain) => (plain, 1, len as u64),
                Opened::Part(part) => match self.pending.add(from_addr, &part, len, &self.stats) {
                    Ok(None) => continue,
                    Ok(Some(whole)) => (
                        std::borrow::Cow::Owned(whole.message),
                        whole.datagrams,
                        whole.wire_bytes,
                    ),
                    Err(reason) => {
                        bump(&self.stats.malformed_datagrams, 1);
                        tracing::debug!(from = %from_addr, reason, "malformed gossip message part; dropped");
                        continue;
                    }
                },
            };
            let mut bytes: &[u8] = &plain;
            match ChitchatMessage::deserialize(&mut bytes) {
                Ok(msg) => {
                    bump(&self.stats.received_datagrams, datagrams);
                    bump(&self.stats.received_bytes, wire_bytes);
                    return Ok((from_addr, msg));
                }
                Err(e) => {
                    bump(&self.stats.malformed_datagrams, datagrams);
                    tracing::debug!(from = %from_addr, error = %e, "gossip datagram is not a chitchat message; dropped");
                }
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

    /// A SYN of `cluster_len` bytes of cluster name, built from its wire
    /// form (chitchat's digest type cannot be built outside chitchat).
    fn big_syn(cluster_len: usize) -> ChitchatMessage {
        let mut head = Vec::new();
        ChitchatMessage::BadCluster.serialize(&mut head);
        let mut wire = head.get(..3).expect("magic and version").to_vec();
        wire.push(0); // SYN
        chitchat::Serializable::serialize(&0u16, &mut wire); // no nodes in the digest
        chitchat::Serializable::serialize(&"c".repeat(cluster_len), &mut wire);
        ChitchatMessage::deserialize(&mut wire.as_slice()).expect("a SYN")
    }

    /// One part of message `id`, as a peer's socket would send it.
    fn part(id: u64, index: u8, count: u8, bytes: &[u8]) -> Vec<u8> {
        let mut body = id.to_le_bytes().to_vec();
        body.push(index);
        body.push(count);
        body.extend_from_slice(bytes);
        body
    }

    fn sealed_part(k: &GossipKey, body: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        k.seal_as(FORMAT_SEALED_PART, body, &mut wire)
            .expect("seal");
        wire
    }

    #[tokio::test]
    async fn a_message_too_large_once_sealed_goes_in_parts_and_arrives_whole() {
        let big = big_syn(65_510);
        let mut len = Vec::new();
        big.serialize(&mut len);
        assert!(len.len() + SEAL_OVERHEAD > MAX_DATAGRAM);
        for k in [Some(key("a secret shared by all")), None] {
            let (mut a, a_stats) = socket(k.clone()).await;
            let (mut b, b_stats) = socket(k).await;
            let b_addr = b.local_addr().expect("addr");
            a.send(b_addr, big_syn(65_510)).await.expect("send");
            let got = recv_within(&mut b, Duration::from_secs(5))
                .await
                .expect("delivered whole");
            assert_eq!(got.1, big);
            let (sent, received) = (a_stats.snapshot(), b_stats.snapshot());
            assert_eq!(sent.split_messages, 1);
            assert_eq!(sent.sent_datagrams, 2);
            assert_eq!(sent.oversized_datagrams, 0);
            assert_eq!(received.received_datagrams, 2);
            assert_eq!(received.received_bytes, sent.sent_bytes);
            // A message that fits still goes whole.
            a.send(b_addr, envelope()).await.expect("send");
            assert!(recv_within(&mut b, Duration::from_secs(5)).await.is_some());
            assert_eq!(a_stats.snapshot().split_messages, 1);
            assert_eq!(a_stats.snapshot().sent_datagrams, 3);
        }
    }

    /// A sealed receiver, and a raw socket that sends it hand-made
    /// datagrams.
    struct Target {
        sock: Sock,
        stats: Arc<GossipStats>,
        key: GossipKey,
        raw: tokio::net::UdpSocket,
    }

    impl Target {
        async fn new() -> Target {
            let key = key("a secret shared by all");
            let (sock, stats) = socket(Some(key.clone())).await;
            let raw = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            Target {
                sock,
                stats,
                key,
                raw,
            }
        }

        async fn send(&self, datagram: &[u8]) {
            self.raw
                .send_to(datagram, self.sock.addr)
                .await
                .expect("send");
        }

        /// Sends `body` as a part sealed with the cluster's key.
        async fn send_part(&self, body: &[u8]) {
            self.send(&sealed_part(&self.key, body)).await;
        }

        /// Receives the next message, which must be [`envelope`].
        async fn expect_envelope(&mut self, what: &str) {
            let got = recv_within(&mut self.sock, Duration::from_secs(5))
                .await
                .expect(what);
            assert_eq!(got.1, envelope());
        }
    }

    /// [`envelope`] on the wire, cut in two.
    fn envelope_halves() -> (Vec<u8>, Vec<u8>) {
        let mut good = Vec::new();
        envelope().serialize(&mut good);
        let second = good.split_off(2);
        (good, second)
    }

    #[tokio::test]
    async fn malformed_and_foreign_parts_are_refused_and_counted() {
        let mut t = Target::new().await;
        for body in [
            vec![1, 2, 3, 4, 5], // shorter than the header
            part(1, 0, 1, b"x"), // one part is not parts
            part(2, 0, 5, b"x"), // more parts than allowed
            part(3, 2, 2, b"x"), // index beyond the count
            part(4, 0, 2, b""),  // nothing in it
        ] {
            t.send_part(&body).await;
        }
        let other = key("the other secret value");
        t.send(&sealed_part(&other, &part(5, 0, 2, b"x"))).await;
        let mut open = vec![FORMAT_OPEN_PART];
        open.extend_from_slice(&part(6, 0, 2, b"x"));
        t.send(&open).await;
        // Two authentic parts that make a message chitchat cannot decode.
        t.send_part(&part(7, 0, 2, b"\xffnot")).await;
        t.send_part(&part(7, 1, 2, b" chitchat")).await;

        let (first, second) = envelope_halves();
        t.send_part(&part(8, 1, 2, &second)).await;
        t.send_part(&part(8, 0, 2, &first)).await;
        t.expect_envelope("the good parts make a message, in either order")
            .await;
        let stats = t.stats.snapshot();
        assert_eq!(stats.malformed_datagrams, 5 + 2);
        assert_eq!(stats.rejected_datagrams, 2);
        assert_eq!(stats.received_datagrams, 2);
    }

    #[tokio::test]
    async fn parts_of_one_message_must_agree_and_a_full_table_drops_the_oldest() {
        let mut t = Target::new().await;
        let (first, second) = envelope_halves();
        // First parts of more messages than may wait: the oldest goes.
        for id in 0..=MAX_PENDING as u64 {
            t.send_part(&part(id, 0, 2, &first)).await;
        }
        // A part that disagrees with its message on the count ends it.
        t.send_part(&part(1, 1, 3, &second)).await;
        // Message 0 was pushed out: its second part completes nothing.
        t.send_part(&part(0, 1, 2, &second)).await;
        // Message 2 is still waiting and completes.
        t.send_part(&part(2, 1, 2, &second)).await;
        t.expect_envelope("message 2 completes").await;
        let stats = t.stats.snapshot();
        assert_eq!(stats.incomplete_messages, 1);
        assert_eq!(stats.malformed_datagrams, 1);
        assert_eq!(stats.received_datagrams, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn parts_that_wait_too_long_expire() {
        let stats = GossipStats::default();
        let mut table = Reassembly::default();
        let from: SocketAddr = "127.0.0.1:7946".parse().expect("addr");
        let add = |t: &mut Reassembly, id, index| {
            t.add(from, &part(id, index, 2, b"x"), 50, &stats)
                .expect("well formed")
        };
        assert!(add(&mut table, 1, 0).is_none());
        tokio::time::advance(PART_TIMEOUT + Duration::from_millis(1)).await;
        assert!(add(&mut table, 2, 0).is_none());
        assert_eq!(stats.snapshot().incomplete_messages, 1);
        // The late second part of message 1 starts over instead.
        assert!(add(&mut table, 1, 1).is_none());
        let whole = add(&mut table, 2, 1).expect("message 2 completes");
        assert_eq!(whole.message, b"xx");
        assert_eq!((whole.datagrams, whole.wire_bytes), (2, 100));
    }
}
