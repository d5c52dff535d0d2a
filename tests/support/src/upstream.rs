//! Real upstream servers for the gateway to proxy to.
//!
//! An [`Upstream`] listens on `127.0.0.1:0`, speaks HTTP/1.1 and h2c (prior
//! knowledge) on the same port, and runs on the tokio runtime that started
//! it. Endpoints are matched on the *end* of the path, so a route prefix the
//! gateway does not strip still reaches them (`/api/status/503` works like
//! `/status/503`):
//!
//! | path | answer |
//! | --- | --- |
//! | anything else | 200, JSON echo of the request |
//! | `/status/{code}` | that status, echo body |
//! | `/slow/{ms}` | waits, then echoes |
//! | `/slow-body/{ms}` | headers at once, echo body after the delay |
//! | `/bytes/{n}` | `n` pattern bytes in 64 KiB chunks; `?chunked=1` omits `Content-Length` |
//! | `/sink` | reads the body chunk by chunk: `{"received", "chunks", "pattern_intact"}` |
//! | `/ws` | WebSocket echo of text and binary messages (HTTP/1.1 upgrade) |
//! | `/set-cookie/{name}/{value}` | echo plus `Set-Cookie: name=value; Path=/` |
//! | `/close` | echo plus `Connection: close` (HTTP/1.1) |
//!
//! The echo body is `{"upstream", "method", "path", "query", "version",
//! "authority", "headers", "body_len"}`; `headers` maps each lowercased name
//! to its value, or to an array when the header repeats. Every response
//! carries `x-upstream: <name>`. Request bodies are counted as they stream,
//! never buffered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::pattern::{PatternBody, PatternCheck};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxedBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long [`Upstream::stop`] lets requests in flight finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How long [`Upstream::restart`] retries binding the old port.
const REBIND_DEADLINE: Duration = Duration::from_secs(5);

/// How an upstream answers, changeable while it runs
/// ([`Upstream::set_behaviour`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Answer every request, whatever its path, with this status and the
    /// echo body instead of the endpoints. `None` serves the endpoints.
    pub fail_with: Option<StatusCode>,
    /// Wait this long before answering each request.
    pub delay: Duration,
}

impl Behaviour {
    /// Serve the endpoints, without delay.
    pub fn normal() -> Behaviour {
        Behaviour::default()
    }

    /// Answer every request with `status` (e.g. 503).
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn failing(status: u16) -> Behaviour {
        Behaviour {
            fail_with: Some(StatusCode::from_u16(status).expect("valid status code")),
            delay: Duration::ZERO,
        }
    }

    /// The same behaviour, waiting `delay` before each answer.
    pub fn with_delay(mut self, delay: Duration) -> Behaviour {
        self.delay = delay;
        self
    }
}

/// What the upstream saw of one request, recorded when it arrived.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Request method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query string without the `?`, if any.
    pub query: Option<String>,
    /// HTTP version the request came in on.
    pub version: Version,
    /// Request headers as received.
    pub headers: HeaderMap,
}

/// A real HTTP server on `127.0.0.1`; see the module docs for its endpoints.
///
/// Dropping it closes the listener and every connection (without waiting).
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Generation>>,
}

// === impl Upstream ===

impl Upstream {
    /// Starts a normal upstream named `name` on a free port.
    ///
    /// # Panics
    /// If no port can be bound, or outside a tokio runtime.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_with(name, Behaviour::normal()).await
    }

    /// Starts an upstream with the given behaviour, e.g.
    /// `Behaviour::failing(503)`.
    ///
    /// # Panics
    /// If no port can be bound, or outside a tokio runtime.
    pub async fn start_with(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = bind("127.0.0.1:0".parse().expect("static address"))
            .unwrap_or_else(|e| panic!("upstream {name}: bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let shared = Arc::new(Shared::new(name, behaviour));
        let generation = Generation::spawn(listener, shared.clone());
        Upstream {
            addr,
            shared,
            running: Mutex::new(Some(generation)),
        }
    }

    /// The name given at start, echoed as `upstream` and `x-upstream`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address it listens on; stays the same across [`Upstream::restart`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as a gateway target address.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Changes how requests arriving from now on are answered.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// Requests received (counted on arrival, before any delay).
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Requests received whose path starts with `path_prefix`.
    pub fn hits_for(&self, path_prefix: &str) -> u64 {
        lock(&self.shared.paths)
            .iter()
            .filter(|(path, _)| path.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// TCP connections accepted since start (or [`Upstream::reset_stats`]).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TCP connections open right now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// Requests being answered right now (until their response body is
    /// fully sent or dropped).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The largest [`Upstream::in_flight`] seen.
    pub fn max_concurrent(&self) -> u64 {
        self.shared.max_concurrent.load(Ordering::SeqCst)
    }

    /// The most recent request received, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.last).clone()
    }

    /// Headers of the most recent request received, if any.
    pub fn last_request_headers(&self) -> Option<HeaderMap> {
        lock(&self.shared.last).as_ref().map(|r| r.headers.clone())
    }

    /// Sets every counter back to zero and forgets the last request.
    /// Open connections and requests in flight are still counted.
    pub fn reset_stats(&self) {
        let s = &self.shared;
        s.hits.store(0, Ordering::SeqCst);
        s.connections.store(0, Ordering::SeqCst);
        s.max_concurrent
            .store(s.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        lock(&s.paths).clear();
        *lock(&s.last) = None;
    }

    /// Whether it is listening (not killed or stopped).
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Simulates the target dying: closes the listener (new connections are
    /// refused) and drops every open connection, in-flight requests and
    /// WebSockets included. Returns once all of them are gone. Does nothing
    /// if already down.
    pub async fn kill(&self) {
        let generation = lock(&self.running).take();
        if let Some(generation) = generation {
            generation.kill().await;
        }
    }

    /// Graceful shutdown: stops accepting, lets requests in flight finish
    /// (for up to 5 s, then drops them), closes idle connections. Does
    /// nothing if already down.
    pub async fn stop(&self) {
        let generation = lock(&self.running).take();
        if let Some(generation) = generation {
            generation.stop().await;
        }
    }

    /// Simulates the target recovering: listens again on the same address.
    /// Kills the running server first if there is one. Counters carry on.
    ///
    /// # Panics
    /// If the port cannot be bound again within 5 s (another process took
    /// it).
    pub async fn restart(&self) {
        self.kill().await;
        let deadline = tokio::time::Instant::now() + REBIND_DEADLINE;
        let listener = loop {
            match bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("upstream {}: rebind {}: {e}", self.name(), self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let generation = Generation::spawn(listener, self.shared.clone());
        *lock(&self.running) = Some(generation);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(generation) = lock(&self.running).take() {
            generation.abort();
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("running", &self.is_running())
            .finish()
    }
}

/// An address on `127.0.0.1` where nothing listens: connecting is refused.
///
/// The port was free a moment ago; another socket could take it later, but
/// the kernel hands out ephemeral ports in turn, so that is unlikely within
/// a test.
///
/// # Panics
/// If no port can be bound.
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("bound listener has an address")
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Lets a restart rebind while connections of the killed server sit in
    // TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Locks a mutex that only guards plain data, ignoring poisoning: a test
/// that panicked elsewhere should not hide its own message behind ours.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Shared ===

/// State that outlives one listening generation.
struct Shared {
    name: String,
    behaviour: Mutex<Behaviour>,
    hits: AtomicU64,
    connections: AtomicU64,
    open_connections: AtomicU64,
    in_flight: AtomicU64,
    max_concurrent: AtomicU64,
    paths: Mutex<HashMap<String, u64>>,
    last: Mutex<Option<RecordedRequest>>,
}

impl Shared {
    fn new(name: &str, behaviour: Behaviour) -> Shared {
        Shared {
            name: name.to_string(),
            behaviour: Mutex::new(behaviour),
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_concurrent: AtomicU64::new(0),
            paths: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
        }
    }

    fn record<B>(&self, req: &Request<B>) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        *lock(&self.paths)
            .entry(req.uri().path().to_string())
            .or_insert(0) += 1;
        *lock(&self.last) = Some(RecordedRequest {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            version: req.version(),
            headers: req.headers().clone(),
        });
    }
}

/// Counts one unit in a gauge for as long as it lives.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn enter(counter: &'a AtomicU64) -> Gauge<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request in flight, from arrival until its response body is done.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_concurrent.fetch_max(now, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    inner: BoxedBody,
    _in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl Generation ===

/// Tasks of one listening period; killing it drops all of them.
struct Generation {
    accept: JoinHandle<()>,
    tasks: Arc<Tasks>,
    drain: watch::Sender<bool>,
}

/// Connection and WebSocket tasks of a generation. `None` once killed, so
/// late spawns are dropped instead of outliving the kill.
struct Tasks(Mutex<Option<JoinSet<()>>>);

impl Tasks {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(set) = lock(&self.0).as_mut() {
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }

    fn take(&self) -> Option<JoinSet<()>> {
        lock(&self.0).take()
    }
}

impl Generation {
    fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Generation {
        let tasks = Arc::new(Tasks(Mutex::new(Some(JoinSet::new()))));
        let (drain, drain_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared, tasks.clone(), drain_rx));
        Generation {
            accept,
            tasks,
            drain,
        }
    }

    async fn kill(self) {
        self.accept.abort();
        let _ = self.accept.await;
        if let Some(mut set) = self.tasks.take() {
            set.shutdown().await;
        }
    }

    async fn stop(self) {
        let _ = self.drain.send(true);
        // The accept loop ends on the drain signal and drops the listener.
        let _ = self.accept.await;
        if let Some(mut set) = self.tasks.take() {
            let drained = async { while set.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(DRAIN_DEADLINE, drained).await;
            set.shutdown().await;
        }
    }

    fn abort(self) {
        self.accept.abort();
        // Dropping the set aborts its tasks.
        drop(self.tasks.take());
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
    mut drain: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.wait_for(|draining| *draining) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of
                // spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let ctx = Arc::new(ConnCtx {
            shared: shared.clone(),
            tasks: Arc::downgrade(&tasks),
            drain: drain.clone(),
        });
        tasks.spawn(serve_connection(builder.clone(), stream, ctx));
    }
}

/// What a request handler needs from its connection.
struct ConnCtx {
    shared: Arc<Shared>,
    tasks: std::sync::Weak<Tasks>,
    drain: watch::Receiver<bool>,
}

async fn serve_connection(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
) {
    let shared = ctx.shared.clone();
    let _open = Gauge::enter(&shared.open_connections);
    let _ = stream.set_nodelay(true);
    let mut drain = ctx.drain.clone();
    let service = service_fn(move |req| handle(ctx.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.wait_for(|draining| *draining) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

// === endpoints ===

async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<TrackedBody>, Infallible> {
    let in_flight = InFlight::enter(&ctx.shared);
    ctx.shared.record(&req);
    let behaviour = lock(&ctx.shared.behaviour).clone();
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let mut response = match behaviour.fail_with {
        Some(status) => echo(&ctx.shared.name, req, status).await,
        None => route(&ctx, req).await,
    };
    if let Ok(name) = HeaderValue::from_str(&ctx.shared.name) {
        response.headers_mut().insert("x-upstream", name);
    }
    Ok(response.map(|inner| TrackedBody {
        inner,
        _in_flight: in_flight,
    }))
}

async fn route(ctx: &ConnCtx, req: Request<Incoming>) -> Response<BoxedBody> {
    let name = ctx.shared.name.as_str();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [.., "set-cookie", cookie, value] => {
            let cookie = format!("{cookie}={value}; Path=/");
            let mut response = echo(name, req, StatusCode::OK).await;
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    response.headers_mut().insert(header::SET_COOKIE, v);
                    response
                }
                Err(_) => bad_request(name, "cookie is not a valid header value"),
            }
        }
        [.., "status", code] => match code.parse::<u16>().ok().filter(|c| (200..600).contains(c)) {
            Some(code) => {
                let status = StatusCode::from_u16(code).expect("checked range");
                echo(name, req, status).await
            }
            None => bad_request(name, "status must be a number from 200 to 599"),
        },
        [.., "slow", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                echo(name, req, StatusCode::OK).await
            }
            Err(_) => bad_request(name, "delay must be milliseconds"),
        },
        [.., "slow-body", ms] => match ms.parse::<u64>() {
            Ok(ms) => slow_body(name, req, Duration::from_millis(ms)).await,
            Err(_) => bad_request(name, "delay must be milliseconds"),
        },
        [.., "bytes", n] => match n.parse::<u64>() {
            Ok(n) => bytes(req, n),
            Err(_) => bad_request(name, "length must be a number of bytes"),
        },
        [.., "sink"] => sink(name, req).await,
        [.., "ws"] => websocket(ctx, req),
        [.., "close"] => {
            let close = req.version() < Version::HTTP_2;
            let mut response = echo(name, req, StatusCode::OK).await;
            if close {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
        _ => echo(name, req, StatusCode::OK).await,
    }
}

/// Reads the request body to its end, counting bytes.
async fn count_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

/// The echo JSON for a request whose body has `body_len` bytes.
fn echo_json(name: &str, parts: &http::request::Parts, body_len: u64) -> Value {
    let mut headers = Map::new();
    for key in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(key)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.into_iter().next().expect("one value")
        } else {
            Value::Array(values)
        };
        headers.insert(key.as_str().to_string(), value);
    }
    json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "headers": headers,
        "body_len": body_len,
    })
}

async fn echo(name: &str, req: Request<Incoming>, status: StatusCode) -> Response<BoxedBody> {
    let (parts, body) = req.into_parts();
    match count_body(body).await {
        Ok(body_len) => json_response(status, &echo_json(name, &parts, body_len)),
        Err(e) => bad_request(name, &format!("reading the request body: {e}")),
    }
}

async fn slow_body(name: &str, req: Request<Incoming>, delay: Duration) -> Response<BoxedBody> {
    let (parts, body) = req.into_parts();
    let body_len = match count_body(body).await {
        Ok(n) => n,
        Err(e) => return bad_request(name, &format!("reading the request body: {e}")),
    };
    let payload = Bytes::from(echo_json(name, &parts, body_len).to_string());
    let stream = futures_util::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(Frame::data(payload))
    });
    let mut response = Response::new(UnsyncBoxBody::new(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bytes(req: Request<Incoming>, n: u64) -> Response<BoxedBody> {
    let chunked = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "chunked=1" || kv == "chunked"));
    let mut body = PatternBody::new(n);
    if chunked {
        body = body.without_length();
    }
    let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if !chunked {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    response
}

async fn sink(name: &str, req: Request<Incoming>) -> Response<BoxedBody> {
    let mut body = req.into_body();
    let mut check = PatternCheck::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    check.update(&data);
                }
            }
            Err(e) => return bad_request(name, &format!("reading the request body: {e}")),
        }
    }
    json_response(
        StatusCode::OK,
        &json!({
            "upstream": name,
            "received": check.bytes(),
            "chunks": check.chunks(),
            "pattern_intact": check.is_intact(),
        }),
    )
}

fn websocket(ctx: &ConnCtx, mut req: Request<Incoming>) -> Response<BoxedBody> {
    let name = ctx.shared.name.as_str();
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad_request(name, "not a websocket upgrade: no sec-websocket-key");
    };
    if !is_upgrade || req.version() != Version::HTTP_11 {
        return bad_request(name, "not a websocket upgrade over HTTP/1.1");
    }
    let accept = derive_accept_key(key.as_bytes());
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_string());

    let upgrade = hyper::upgrade::on(&mut req);
    let mut drain = ctx.drain.clone();
    if let Some(tasks) = ctx.tasks.upgrade() {
        tasks.spawn(async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            tokio::select! {
                _ = echo_messages(ws) => {}
                _ = drain.wait_for(|draining| *draining) => {}
            }
        });
    }

    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

async fn echo_messages(mut ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) {
    // Pings are answered and closes completed by the stream itself while it
    // is polled.
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<BoxedBody> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    } else {
        *response.body_mut() = empty();
    }
    response
}

fn bad_request(name: &str, reason: &str) -> Response<BoxedBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"upstream": name, "error": reason}),
    )
}

fn empty() -> BoxedBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
