//! What bounds one listener's connections: how many may be open (in all,
//! and per client IP), and how long each may stay in each state.
//!
//! A connection is in one of four states, each with its own deadline:
//!
//! - waiting for its first byte (`first_byte_timeout`);
//! - reading a request head: an HTTP/1 head, or the HTTP/2 preface and
//!   the client's first SETTINGS frame (`header_read_timeout`);
//! - idle: no request in flight, between HTTP/1 requests or with no HTTP/2
//!   stream open, whatever PING or SETTINGS frames arrive (`idle_timeout`);
//! - busy: a request in flight; its body and the upstream exchange are
//!   bounded by the upstream's `timeouts` (ADR 0038), not here, but a
//!   client that reads nothing of what is written to it for the idle
//!   timeout is closed (a slow-read attack holds a busy connection).
//!
//! [`Tracker`] holds a connection's state, updated by its socket
//! ([`TrackedIo`] notes bytes arriving) and by its requests
//! ([`RequestGuard`], moved into the response body as [`TrackedBody`]);
//! the listener's per-connection task asks it for the next deadline.
//! [`Caps`] counts open connections and refuses past the caps.
//!
//! This module owns no socket and spawns nothing: accepting, serving and
//! closing are the listener's (`server`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::clock::mono_ms;

// === Caps ===

/// Open connections of one listener, counted against its caps.
#[derive(Debug, Default)]
pub struct Caps {
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds as many connections as it may.
    Total(usize),
    /// The client's IP holds as many connections as it may.
    PerIp(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Total(n) => write!(f, "the listener holds its cap of {n} connections"),
            Refused::PerIp(n) => write!(f, "the client IP holds its cap of {n} connections"),
        }
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    caps: Arc<Caps>,
    ip: Option<IpAddr>,
}

impl Caps {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `ip` when fewer than `max` are open and,
    /// with `max_per_ip` above 0, fewer than that from `ip`.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        max_per_ip: usize,
    ) -> Result<Permit, Refused> {
        // One accept loop admits, so the check and the increment do not
        // race with another admission; closes only make room.
        if self.open.load(Ordering::Relaxed) >= max {
            return Err(Refused::Total(max));
        }
        let ip = if max_per_ip > 0 {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                return Err(Refused::PerIp(max_per_ip));
            }
            *n += 1;
            Some(ip)
        } else {
            None
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            caps: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.caps.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut by_ip = self.caps.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
    }
}

// === Timeouts ===

/// The deadlines of one listener's connections, fixed when one is
/// accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept to the first byte.
    pub first_byte: Duration,
    /// From the first byte of a head to its end.
    pub header: Duration,
    /// With no request in flight, from the last one's end.
    pub idle: Duration,
    /// Requests per connection; 0 means no limit.
    pub max_requests: u64,
}

impl Timeouts {
    /// The shortest deadline: no state can end sooner than this after a
    /// check, so the listener looks again at least this often.
    pub fn shortest(&self) -> Duration {
        self.first_byte.min(self.header).min(self.idle)
    }
}

// === Tracker ===

const WAITING: u8 = 0;
const HEAD: u8 = 1;
const IDLE: u8 = 2;

/// A connection's state, shared by its socket, its requests and the task
/// that serves it.
#[derive(Debug)]
pub struct Tracker {
    /// With no request in flight: waiting, reading a head, or idle.
    phase: AtomicU8,
    /// [`mono_ms`] when the phase began.
    since_ms: AtomicU64,
    in_flight: AtomicU64,
    requests: AtomicU64,
    h2: AtomicBool,
    /// [`mono_ms`] since when a write has been waiting for the client to
    /// read (0: none is).
    write_blocked_ms: AtomicU64,
    max_requests: u64,
    /// Signalled when an HTTP/2 connection has carried its last request.
    goaway: Notify,
}

/// The state of a connection whose client reads nothing of its response.
pub const STALLED_WRITE: &str = "writing to a client that reads nothing";
/// The state of a connection sending its request head.
pub const READING_HEAD: &str = "reading a request head";

/// What the serving task should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Look again at this [`mono_ms`] reading, unless the connection ends
    /// first.
    WaitUntil(u64),
    /// The connection stayed in `state` past its deadline.
    Expired(&'static str),
}

impl Tracker {
    /// A connection accepted just now.
    pub fn new(max_requests: u64) -> Arc<Tracker> {
        Arc::new(Tracker {
            phase: AtomicU8::new(WAITING),
            since_ms: AtomicU64::new(mono_ms()),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            write_blocked_ms: AtomicU64::new(0),
            max_requests,
            goaway: Notify::new(),
        })
    }

    /// Whether the client spoke HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Whether a request is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Resolves once an HTTP/2 connection has carried
    /// `max_requests` requests and should send GOAWAY.
    pub async fn goaway(&self) {
        self.goaway.notified().await;
    }

    fn enter(&self, phase: u8, now: u64) {
        self.since_ms.store(now, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// Bytes arrived while a head is being read (every HTTP/1 read, and
    /// HTTP/2 reads until its first SETTINGS frame is in).
    fn head_bytes(&self) {
        let phase = self.phase.load(Ordering::Acquire);
        if phase != HEAD && self.in_flight.load(Ordering::Relaxed) == 0 {
            // The time first, then the phase (as `enter` does): a check
            // that sees the new phase sees its start, never the old
            // phase's earlier one. If the exchange fails, whoever moved the
            // phase stored a time just as recent.
            self.since_ms.store(mono_ms(), Ordering::Relaxed);
            let _ = self
                .phase
                .compare_exchange(phase, HEAD, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// A request head was read: the connection is busy until the guard
    /// (and the response body it moves into) is dropped. The second value
    /// says whether this is the connection's last request.
    pub fn start_request(self: &Arc<Self>) -> (RequestGuard, bool) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.max_requests > 0 && n >= self.max_requests;
        if last && self.is_h2() {
            self.goaway.notify_one();
        }
        (RequestGuard(self.clone()), last)
    }

    /// When the current state ends, as of `now` ([`mono_ms`]).
    pub fn check(&self, t: &Timeouts, now: u64) -> Verdict {
        let recheck = now + t.shortest().as_millis() as u64;
        let blocked = self.write_blocked_ms.load(Ordering::Relaxed);
        if blocked != 0 {
            // Whatever the state, nothing moves while the client reads
            // nothing; a write that frees up pushes the deadline back.
            let due = blocked.saturating_add(t.idle.as_millis() as u64);
            if now >= due {
                return Verdict::Expired(STALLED_WRITE);
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                return Verdict::WaitUntil(due.min(recheck));
            }
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::WaitUntil(recheck);
        }
        let phase = self.phase.load(Ordering::Acquire);
        let since = self.since_ms.load(Ordering::Relaxed);
        let (limit, state) = match phase {
            WAITING => (t.first_byte, "waiting for the first byte"),
            HEAD => (t.header, READING_HEAD),
            _ => (t.idle, "idle"),
        };
        let due = since.saturating_add(limit.as_millis() as u64);
        if now >= due {
            Verdict::Expired(state)
        } else {
            // Bytes arriving can move an idle or new connection into
            // reading a head, whose deadline may come sooner.
            Verdict::WaitUntil(due.min(recheck))
        }
    }
}

/// A request in flight; dropping it ends the request.
#[derive(Debug)]
pub struct RequestGuard(Arc<Tracker>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.enter(IDLE, mono_ms());
        }
    }
}

/// A response body that ends its request when it is dropped (after the
/// last byte is written, or when the client goes away).
pub struct TrackedBody<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> TrackedBody<B> {
    /// `inner`, ending `guard`'s request when dropped.
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        TrackedBody {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === TrackedIo ===

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and a frame header.
const SNIFF_LEN: usize = H2_PREFACE.len() + 9;

/// What the first bytes said about the protocol.
#[derive(Debug)]
enum Sniff {
    /// Still reading the preface and the first frame's header.
    Start { buf: [u8; SNIFF_LEN], len: usize },
    /// HTTP/2: the head ends once this many bytes are in (the preface
    /// and the whole first frame, the client's SETTINGS).
    H2Until(u64),
    /// HTTP/2 past its first SETTINGS frame: reads are not head bytes.
    H2Open,
    /// HTTP/1: every read with no request in flight is head bytes.
    H1,
}

/// A client socket that tells its [`Tracker`] when head bytes arrive.
/// It also holds the connection's place under the caps, so a connection
/// that hyper hands on after an upgrade (a WebSocket tunnel) still counts
/// until its socket closes.
pub struct TrackedIo<T> {
    inner: T,
    tracker: Arc<Tracker>,
    sniff: Sniff,
    read: u64,
    _permit: Option<Permit>,
}

impl<T> TrackedIo<T> {
    /// Wraps `inner`, reporting to `tracker`.
    pub fn new(inner: T, tracker: Arc<Tracker>) -> Self {
        TrackedIo {
            inner,
            tracker,
            sniff: Sniff::Start {
                buf: [0; SNIFF_LEN],
                len: 0,
            },
            read: 0,
            _permit: None,
        }
    }

    /// Keeps `permit` (the connection's place under the caps) until the
    /// socket is dropped.
    pub fn holding(mut self, permit: Permit) -> Self {
        self._permit = Some(permit);
        self
    }

    /// Notes `new`, the bytes just read.
    fn saw(&mut self, new: &[u8]) {
        self.read += new.len() as u64;
        if let Sniff::Start { buf, len } = &mut self.sniff {
            let take = new.len().min(SNIFF_LEN - *len);
            buf[*len..*len + take].copy_from_slice(&new[..take]);
            *len += take;
            let check = (*len).min(H2_PREFACE.len());
            self.sniff = if buf[..check] != H2_PREFACE[..check] {
                Sniff::H1
            } else if *len == SNIFF_LEN {
                let frame_len = u64::from(u32::from_be_bytes([0, buf[24], buf[25], buf[26]]));
                self.tracker.h2.store(true, Ordering::Relaxed);
                Sniff::H2Until(SNIFF_LEN as u64 + frame_len)
            } else {
                return self.tracker.head_bytes();
            };
        }
        match self.sniff {
            Sniff::H1 => self.tracker.head_bytes(),
            Sniff::H2Until(end) if self.read >= end => {
                self.sniff = Sniff::H2Open;
                if self.tracker.in_flight.load(Ordering::Relaxed) == 0 {
                    self.tracker.enter(IDLE, mono_ms());
                }
            }
            Sniff::H2Until(_) => self.tracker.head_bytes(),
            Sniff::H2Open | Sniff::Start { .. } => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
            && !matches!(this.sniff, Sniff::H2Open)
        {
            let filled = buf.filled();
            // Only the first reads are copied (the sniffed prefix); later
            // ones only count.
            let new = &filled[before..];
            this.saw(new);
        }
        polled
    }
}

impl<T> TrackedIo<T> {
    /// Notes whether a write had to wait for the client to read.
    fn wrote<R>(&self, polled: Poll<R>) -> Poll<R> {
        let blocked = &self.tracker.write_blocked_ms;
        match polled {
            Poll::Pending => {
                if blocked.load(Ordering::Relaxed) == 0 {
                    // 0 means "not blocked", so the process's first
                    // millisecond counts as its second.
                    blocked.store(mono_ms().max(1), Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {
                if blocked.load(Ordering::Relaxed) != 0 {
                    blocked.store(0, Ordering::Relaxed);
                }
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            first_byte: Duration::from_millis(100),
            header: Duration::from_millis(200),
            idle: Duration::from_millis(1000),
            max_requests: 2,
        }
    }

    fn io(t: &Arc<Tracker>) -> TrackedIo<()> {
        TrackedIo::new((), t.clone())
    }

    #[test]
    fn each_state_has_its_deadline() {
        let t = timeouts();
        let tr = Tracker::new(t.max_requests);
        let start = tr.since_ms.load(Ordering::Relaxed);
        assert_eq!(tr.check(&t, start + 99), Verdict::WaitUntil(start + 100));
        assert_eq!(
            tr.check(&t, start + 100),
            Verdict::Expired("waiting for the first byte")
        );

        // A partial HTTP/1 head: the head deadline runs from its first byte.
        let mut io = io(&tr);
        io.saw(b"GET / HT");
        let head = tr.since_ms.load(Ordering::Relaxed);
        assert_eq!(tr.check(&t, head + 200), Verdict::Expired(READING_HEAD));

        // A request in flight: no deadline here, only a recheck.
        let (guard, last) = tr.start_request();
        assert!(!last);
        assert_eq!(
            tr.check(&t, head + 10_000),
            Verdict::WaitUntil(head + 10_100)
        );
        drop(guard);
        let idle = tr.since_ms.load(Ordering::Relaxed);
        assert_eq!(tr.check(&t, idle + 999), Verdict::WaitUntil(idle + 1000));
        assert_eq!(tr.check(&t, idle + 1000), Verdict::Expired("idle"));

        // The second request is the last one.
        let (_guard, last) = tr.start_request();
        assert!(last);
    }

    #[test]
    fn a_client_that_reads_nothing_is_closed_after_the_idle_timeout_even_when_busy() {
        let t = timeouts();
        let tr = Tracker::new(0);
        let (_guard, _) = tr.start_request();
        let io = io(&tr);
        let _ = io.wrote::<()>(Poll::Pending);
        let since = tr.write_blocked_ms.load(Ordering::Relaxed);
        assert_eq!(tr.check(&t, since + 50), Verdict::WaitUntil(since + 150));
        assert_eq!(tr.check(&t, since + 1000), Verdict::Expired(STALLED_WRITE));
        // A write that goes through clears it.
        let _ = io.wrote(Poll::Ready(()));
        assert_eq!(tr.check(&t, since + 1000), Verdict::WaitUntil(since + 1100));
    }

    #[test]
    fn http2_preface_and_settings_are_the_head_then_pings_keep_nothing_alive() {
        let t = timeouts();
        let tr = Tracker::new(0);
        let mut io = io(&tr);
        io.saw(&H2_PREFACE[..10]);
        assert_eq!(tr.phase.load(Ordering::Relaxed), HEAD);
        assert!(!tr.is_h2());
        io.saw(&H2_PREFACE[10..]);
        // SETTINGS frame header: 12 bytes of payload, type 4.
        io.saw(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
        assert!(tr.is_h2());
        assert_eq!(tr.phase.load(Ordering::Relaxed), HEAD);
        io.saw(&[0; 12]);
        assert_eq!(tr.phase.load(Ordering::Relaxed), IDLE);
        let idle = tr.since_ms.load(Ordering::Relaxed);
        // A PING (or any frame) with no stream open is not a head.
        io.saw(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(tr.phase.load(Ordering::Relaxed), IDLE);
        assert_eq!(tr.check(&t, idle + 1000), Verdict::Expired("idle"));
    }

    #[test]
    fn a_connection_that_is_not_http2_is_read_as_http1() {
        let tr = Tracker::new(0);
        let mut io = io(&tr);
        io.saw(b"PRI * HTTP/1.1\r\n");
        assert!(matches!(io.sniff, Sniff::H1));
        assert!(!tr.is_h2());
    }

    #[test]
    fn caps_count_in_all_and_per_ip() {
        let caps = Arc::new(Caps::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = caps.admit(a, 3, 2).unwrap();
        let _p2 = caps.admit(a, 3, 2).unwrap();
        assert_eq!(caps.admit(a, 3, 2).unwrap_err(), Refused::PerIp(2));
        let _p3 = caps.admit(b, 3, 2).unwrap();
        assert_eq!(caps.admit(b, 3, 2).unwrap_err(), Refused::Total(3));
        drop(p1);
        assert_eq!(caps.open(), 2);
        let _p4 = caps.admit(a, 3, 2).unwrap();
        // No per-IP cap: only the total counts, and no map is kept.
        let caps = Arc::new(Caps::default());
        let _all: Vec<_> = (0..5).map(|_| caps.admit(a, 5, 0).unwrap()).collect();
        assert!(caps.by_ip.lock().unwrap().is_empty());
    }
}
