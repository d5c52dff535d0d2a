//! Listeners and connection handling: accept, serve HTTP/1.1 and h2c on the
//! proxy port, answer the admin port, and drain on shutdown.
//!
//! Graceful shutdown: stop accepting, let every connection finish the
//! requests it has in flight (HTTP/1.1 connections close after their
//! current response, HTTP/2 ones get GOAWAY), and give up after the drain
//! timeout.
//!
//! Both listeners bound their connections the same way (`conn_guard`):
//! caps on how many are open, refused cheaply past them (accepted and
//! closed at once), and a deadline for every state a connection can stall
//! in. The admin listener has its own, smaller budget, so proxy traffic
//! cannot starve it; both keep well inside the file descriptor limit,
//! which is raised to its hard limit at start (ADR 0038). Accept errors
//! pause accepting briefly instead of spinning, and every per-connection
//! warning is rate-limited.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weir_observability::throttle::Throttle;
use weir_observability::warn_throttled;

use crate::body::ReadTimeout;
use crate::clock::mono_ms;
use crate::config::Settings;
use crate::conn::ConnInfo;
use crate::conn_guard::{
    Caps, Permit, READING_HEAD, Refused, STALLED_WRITE, Timeouts, TrackedBody, TrackedIo, Tracker,
    Verdict,
};
use crate::proxy;
use crate::snapshot::State;

/// Addresses the server actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Binds a listener with a generous backlog and address reuse, so a
/// restarted node can bind again while old sockets sit in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// File descriptors kept for everything but client connections: the
/// listeners, the log and data files, Raft and gossip sockets, health
/// checks.
const FD_RESERVE: u64 = 64;

/// Raises the soft file descriptor limit to the hard one and returns the
/// limit now in force (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        // Unlimited already.
        return None;
    };
    // An unlimited hard limit cannot be the soft one on Linux (the
    // kernel's nr_open caps it); a million is what systemd sets.
    let target = hard.unwrap_or(1 << 20);
    if target > soft
        && let Err(e) = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: hard,
            },
        )
    {
        tracing::warn!(soft, hard = target, error = %e, "cannot raise the file descriptor limit");
        return Some(soft);
    }
    Some(target.max(soft))
}

/// Raises the file descriptor limit and returns how many proxy
/// connections it leaves room for: each client connection may hold an
/// upstream connection too, and the admin budget and a reserve come first.
fn fd_budget(settings: &Settings) -> usize {
    let Some(fds) = raise_fd_limit() else {
        tracing::info!(
            proxy_connections = settings.max_connections,
            admin_connections = settings.admin_max_connections,
            "file descriptor limit: unlimited"
        );
        return usize::MAX;
    };
    let spare = fds.saturating_sub(FD_RESERVE + settings.admin_max_connections as u64);
    let budget = usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1);
    let proxy = settings.max_connections.min(budget);
    tracing::info!(
        fd_limit = fds,
        proxy_connections = proxy,
        admin_connections = settings.admin_max_connections,
        "file descriptor limit raised to the hard limit; connection capacity"
    );
    // The default is a ceiling, quietly lowered; a cap the operator chose
    // and the system cannot honour is worth a warning.
    if settings.max_connections > budget
        && settings.max_connections != Settings::default().max_connections
    {
        tracing::warn!(
            max_connections = settings.max_connections,
            fd_limit = fds,
            using = budget,
            "settings.max_connections is more than the file descriptor limit allows; capping it"
        );
    }
    budget
}

/// A running server.
pub struct Server {
    state: Arc<State>,
    proxy: TcpListener,
    admin: TcpListener,
    admin_router: Option<axum::Router>,
    /// Where the config came from, shown in status.
    pub config_path: Option<PathBuf>,
    /// Gossip membership, when clustering is on.
    pub cluster: crate::cluster::SharedCluster,
    /// Active health checks and the merged view.
    pub health: Arc<crate::health::HealthChecker>,
    /// Proxy connections the file descriptor limit leaves room for.
    fd_budget: usize,
}

impl Server {
    /// Binds both listeners from the current snapshot's settings.
    pub fn bind(state: Arc<State>, config_path: Option<PathBuf>) -> std::io::Result<Server> {
        let settings = state.load().settings.clone();
        let proxy = bind(settings.listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {} (settings.listen): {e}",
                    settings.listen
                ),
            )
        })?;
        let admin = bind(settings.admin_listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {} (settings.admin_listen): {e}",
                    settings.admin_listen
                ),
            )
        })?;
        let fd_budget = fd_budget(&settings);
        Ok(Server {
            state,
            proxy,
            admin,
            admin_router: None,
            config_path,
            cluster: None,
            health: Arc::default(),
            fd_budget,
        })
    }

    /// Serves `router` on the admin listener instead of the read-only
    /// default (health, readiness, status, metrics).
    pub fn set_admin_router(&mut self, router: axum::Router) {
        self.admin_router = Some(router);
    }

    /// The bound addresses.
    pub fn bound(&self) -> std::io::Result<Bound> {
        Ok(Bound {
            proxy: self.proxy.local_addr()?,
            admin: self.admin.local_addr()?,
        })
    }

    /// Serves until `shutdown` flips to true, then drains.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let settings = self.state.load().settings.clone();
        let proxy_builder = Arc::new(proxy_builder(&settings));
        let admin_builder = Arc::new(admin_builder(&settings));

        let admin_router = self.admin_router.unwrap_or_else(|| {
            crate::admin::router(Arc::new(crate::admin::AdminCtx {
                state: self.state.clone(),
                store: None,
                keys: Vec::new(),
                applied_revision: Default::default(),
                cluster: self.cluster.clone(),
                health: self.health.clone(),
                stored_problems: Default::default(),
                hosts: crate::admin::Hosts::new(
                    self.admin.local_addr().unwrap_or(settings.admin_listen),
                    settings.admin_hosts.iter().map(String::as_str),
                ),
            }))
        });
        let (admin_stop_tx, admin_stop) = watch::channel(false);
        let admin_task = tokio::spawn(serve_admin(
            self.admin,
            admin_router,
            admin_builder,
            self.state.clone(),
            admin_stop,
        ));

        let caps = Arc::new(Caps::default());
        let (drain_tx, drain_rx) = watch::channel(false);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = self.proxy.accept() => {
                    let s = &self.state.load().settings;
                    let max = s.max_connections.min(self.fd_budget);
                    let admitted = admit("proxy", accepted, &caps, max, s.max_connections_per_ip);
                    let Some((stream, peer, permit)) = admitted.await else {
                        continue;
                    };
                    let timeouts = Timeouts {
                        first_byte: s.first_byte_timeout,
                        header: s.header_read_timeout,
                        idle: s.idle_timeout,
                        max_requests: s.max_requests_per_connection,
                    };
                    let _ = stream.set_nodelay(true);
                    let state = self.state.clone();
                    let conn_info = ConnInfo::new(peer, "http");
                    let conn = Conn { listener: "proxy", peer, permit, timeouts };
                    conn.serve(&proxy_builder, stream, drain_rx.clone(), move |req| {
                        proxy::handle(state.clone(), conn_info, req)
                    });
                }
            }
        }
        drop(self.proxy);
        drop(drain_rx);
        let in_flight = caps.open();
        tracing::info!(connections = in_flight, drain_timeout = ?settings.drain_timeout, "shutting down: draining connections");
        let _ = drain_tx.send(true);
        tokio::select! {
            _ = drain_tx.closed() => tracing::info!("all connections drained"),
            _ = tokio::time::sleep(settings.drain_timeout) => {
                tracing::warn!("drain timeout reached; closing remaining connections");
            }
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
    }
}

/// The proxy listener's protocol settings: HTTP/1.1 and h2c on one port.
fn proxy_builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Heads, first bytes and idle keep-alive are timed by the
        // connection's tracker (`conn_guard`): hyper's own head timer
        // would also run while idle, cutting keep-alive to the head
        // timeout.
        .header_read_timeout(None)
        // Leave room above our own header limit so oversized heads reach
        // the handler and get a JSON 431 rather than a bare one.
        .max_buf_size((settings.max_header_bytes * 2).max(16 * 1024))
        // Same for the header count: hyper's own cap sits above ours.
        .max_headers((settings.max_header_count * 2).max(256));
    // No `pipeline_flush`: it lets hyper buffer response bodies without
    // bound when the client reads slower than the upstream sends.
    http2_defences(&mut builder, settings);
    builder
        .http2()
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    builder
}

/// The admin listener's protocol settings: what axum's own server would
/// use, plus the same HTTP/2 defences and a head timer of our own.
fn admin_builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None);
    http2_defences(&mut builder, settings);
    builder
        .http2()
        .max_concurrent_streams(ADMIN_H2_MAX_CONCURRENT_STREAMS);
    builder
}

/// Streams one HTTP/2 connection may open at once on the proxy listener.
const H2_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// The same on the admin listener, whose clients are operators and peers.
const ADMIN_H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may reset before the server has accepted them, per
/// connection, before it gets GOAWAY (ENHANCE_YOUR_CALM): the rapid-reset
/// defence (CVE-2023-44487).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server itself may reset because the client broke the
/// protocol on them, before GOAWAY: the MadeYouReset defence
/// (CVE-2025-8671).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The HTTP/2 defences both listeners share, set explicitly rather than
/// left to defaults that a dependency update could move. CONTINUATION
/// floods are bounded by the header list size; SETTINGS and PING floods by
/// h2 itself, which reads no further frame while an acknowledgement is
/// unsent (so a client that does not read stalls only itself), and by the
/// idle timeout, which no control frame resets.
fn http2_defences(builder: &mut auto::Builder<TokioExecutor>, settings: &Settings) {
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes as u32)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
}

/// Serves the admin API on `listener` until `stop` flips, with its own
/// caps and timeouts, then lets its connections finish within the drain
/// timeout.
async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let caps = Arc::new(Caps::default());
    let (drain_tx, drain_rx) = watch::channel(false);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let s = &state.load().settings;
                let admitted = admit("admin", accepted, &caps, s.admin_max_connections, 0);
                let Some((stream, peer, permit)) = admitted.await else {
                    continue;
                };
                // One timer for the first byte and the head: admin clients
                // (operators' tools, Raft peers) send their head at once.
                let timeouts = Timeouts {
                    first_byte: s.admin_header_read_timeout,
                    header: s.admin_header_read_timeout,
                    idle: s.admin_idle_timeout,
                    max_requests: 0,
                };
                // Raft RPCs and admin answers are small writes: without
                // TCP_NODELAY, Nagle holds a response's second segment
                // until the peer's delayed ACK (about 40 ms on Linux).
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                // A request body may pause no longer than a head may take:
                // admin clients send theirs in one piece (Raft's entries
                // and snapshots included).
                let body_pause = s.admin_header_read_timeout;
                let conn = Conn { listener: "admin", peer, permit, timeouts };
                conn.serve(&builder, stream, drain_rx.clone(), move |req: Request<Incoming>| {
                    let req = req.map(|b| axum::body::Body::new(ReadTimeout::new(b, body_pause)));
                    tower::ServiceExt::oneshot(router.clone(), req)
                });
            }
        }
    }
    drop(listener);
    drop(drain_rx);
    let _ = drain_tx.send(true);
    let drain = state.load().settings.drain_timeout;
    let _ = tokio::time::timeout(drain, drain_tx.closed()).await;
}

/// How long to pause accepting after an accept error (out of file
/// descriptors, most often): long enough not to spin, short enough that
/// the listen backlog is served again as soon as a descriptor frees up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning line per this interval for each kind of
/// per-connection event; the next one says how many were left out.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// An accepted connection admitted against `caps`; `None` when accepting
/// failed (after a pause) or a cap refused it (closed at once).
async fn admit(
    listener: &'static str,
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
    caps: &Arc<Caps>,
    max: usize,
    max_per_ip: usize,
) -> Option<(TcpStream, SocketAddr, Permit)> {
    let (stream, peer) = match accepted {
        Ok(a) => a,
        Err(e) => {
            accept_failed(listener, &e).await;
            return None;
        }
    };
    match caps.admit(peer.ip(), max, max_per_ip) {
        Ok(permit) => Some((stream, peer, permit)),
        Err(why) => {
            refused(listener, peer, why);
            None
        }
    }
}

async fn accept_failed(listener: &'static str, e: &std::io::Error) {
    static PROXY: Throttle = Throttle::new(WARN_INTERVAL);
    static ADMIN: Throttle = Throttle::new(WARN_INTERVAL);
    let throttle = if listener == "proxy" { &PROXY } else { &ADMIN };
    warn_throttled!(throttle, listener, error = %e, "accept failed; pausing accepts briefly");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

fn refused(listener: &'static str, peer: SocketAddr, why: Refused) {
    static PROXY: Throttle = Throttle::new(WARN_INTERVAL);
    static ADMIN: Throttle = Throttle::new(WARN_INTERVAL);
    let throttle = if listener == "proxy" { &PROXY } else { &ADMIN };
    warn_throttled!(throttle, listener, client = %peer, "connection refused: {why}");
}

/// How long an HTTP/2 connection told GOAWAY for being idle has to close
/// before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// One accepted connection, before it is served.
struct Conn {
    listener: &'static str,
    peer: SocketAddr,
    permit: Permit,
    timeouts: Timeouts,
}

impl Conn {
    /// Serves the connection on its own task with `handler` answering
    /// each request, until it ends, breaks a deadline, or `drain` flips
    /// (then it finishes what is in flight: HTTP/1.1 closes after the
    /// current response, HTTP/2 gets GOAWAY).
    fn serve<H, F, B>(
        self,
        builder: &Arc<auto::Builder<TokioExecutor>>,
        stream: TcpStream,
        mut drain: watch::Receiver<bool>,
        handler: H,
    ) where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Conn {
            listener,
            peer,
            permit,
            timeouts,
        } = self;
        let tracker = Tracker::new(timeouts.max_requests);
        let svc = {
            let tracker = tracker.clone();
            service_fn(move |req: Request<Incoming>| {
                let (guard, last) = tracker.start_request();
                let http1 = req.version() < http::Version::HTTP_2;
                let answer = handler(req);
                async move {
                    let mut resp = answer.await?;
                    if last && http1 {
                        resp.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, Infallible>(resp.map(|b| TrackedBody::new(b, guard)))
                }
            })
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(TrackedIo::new(stream, tracker.clone()).holding(permit));
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::pin!(conn);
            let mut draining = false;
            let mut hard_close: Option<u64> = None;
            loop {
                let now = mono_ms();
                let wake = match hard_close {
                    // A stream that raced the GOAWAY is let finish.
                    Some(at) if now >= at && !tracker.busy() => break,
                    Some(at) if now >= at => now + timeouts.shortest().as_millis() as u64,
                    Some(at) => at,
                    None => match tracker.check(&timeouts, now) {
                        Verdict::WaitUntil(at) => at,
                        Verdict::Expired(state) => {
                            timed_out(listener, peer, state);
                            // HTTP/1 has nothing to say; a client that
                            // reads nothing would not read a GOAWAY.
                            if !tracker.is_h2() || state == STALLED_WRITE {
                                break;
                            }
                            // HTTP/2 says why before closing: GOAWAY,
                            // then a moment to send it.
                            conn.as_mut().graceful_shutdown();
                            draining = true;
                            let at = now + GOAWAY_GRACE.as_millis() as u64;
                            hard_close = Some(at);
                            at
                        }
                    },
                };
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            conn_error(listener, peer, &*e);
                        }
                        break;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now))) => {}
                    _ = drain.changed(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    // Polled on every wake of this task, so only where a
                    // request cap can send it (none by default).
                    _ = tracker.goaway(), if !draining && timeouts.max_requests > 0 => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}

/// A connection closed for staying too long in `state`: normal for an
/// idle keep-alive or a silent pre-connect (debug), a sign of a slow
/// client or an attack for a half-sent head or a response nobody reads (a
/// rate-limited warning).
fn timed_out(listener: &'static str, peer: SocketAddr, state: &'static str) {
    static HEAD: Throttle = Throttle::new(WARN_INTERVAL);
    static STALLED: Throttle = Throttle::new(WARN_INTERVAL);
    if state == READING_HEAD {
        warn_throttled!(HEAD, listener, client = %peer, "closed a connection: the request head took longer than the header read timeout");
    } else if state == STALLED_WRITE {
        warn_throttled!(STALLED, listener, client = %peer, "closed a connection: the client read nothing of its response for longer than the idle timeout");
    } else {
        tracing::debug!(listener, client = %peer, state, "closed a connection: timeout");
    }
}

/// A connection that ended with an error. HTTP/2 connections closed by
/// the protocol's defences (too many resets, a protocol error) get a
/// rate-limited warning; everything else (clients going away) is trace.
fn conn_error(
    listener: &'static str,
    peer: SocketAddr,
    e: &(dyn std::error::Error + Send + Sync + 'static),
) {
    static H2_ABUSE: Throttle = Throttle::new(WARN_INTERVAL);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && h2.is_go_away()
            && h2.is_library()
            && let Some(reason) = h2.reason()
            && reason != h2::Reason::NO_ERROR
        {
            warn_throttled!(H2_ABUSE, listener, client = %peer, reason = %reason, "closed an HTTP/2 connection with GOAWAY: the client broke the protocol or reset too many streams");
            return;
        }
        source = err.source();
    }
    tracing::trace!(listener, client = %peer, error = %e, "connection ended with an error");
}
