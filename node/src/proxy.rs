//! The data path: one request from the client to a target and back.
//!
//! `handle` validates the request, finds its route, then runs the attempt
//! loop: pick a target (healthy, not yet tried), send, and on a failure that
//! is safe to retry move to another target while attempts and the retry
//! budget last. Bodies stream in both directions without buffering; this
//! module decides which body layers (from [`crate::body`], the plugin
//! chain's and the request log's) each response gets, and in which order
//! ([`ResponseBody`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::PickCtx;
use crate::body::{
    BodyGuard, BodySlot, BodySource, ClientBody, Full, Guarded, ReadTimeout, ReqBody,
};
use crate::clock::{mono_ms, mono_ms_at};
use crate::conn::ConnInfo;
use crate::error::{GatewayError, error_chain};
use crate::headers;
use crate::metrics::{AttemptMetrics, AttemptOutcome, GatewayMetrics, RetryReason};
use crate::plugin::PluginBody;
use crate::router::RequestView;
use crate::snapshot::{HostHeaderRt, Route, Snapshot, State};
use crate::telemetry::{LoggedBody, RequestLog};
use crate::upstream::{PooledConn, SendError, Upstream};

// === the bodies a response gets ===

/// The upstream's body as it is relayed: the exchange's guard innermost
/// (the connection back to its pool at the end, the target out of the
/// in-flight count when dropped, a failure recorded), the read idle
/// timeout around it.
pub type Relayed = ReadTimeout<Guarded<Incoming, Exchange>>;

/// What a route's upstream side answers with: the upstream's body, or one
/// the gateway made (an upgrade's empty body, an error).
pub type Answered = Either<Relayed, Full>;

/// An answer passing through a route's plugin chain (whose plugins may
/// replace the body by one of their own).
pub type Plugged = PluginBody<Either<Answered, Full>>;

/// The body of every response the gateway sends to clients. The plain
/// proxied path is the first, unboxed, so it pays for its own layers only;
/// a body the gateway made is sent as it is, the request's log already
/// closed; a plugin chain's body is boxed, keeping this type as small as
/// the plain path's. The request's log wraps the first and the last
/// outermost, so it counts the bytes the client is sent.
pub type ResponseBody = Either<LoggedBody<Relayed>, Either<Full, Box<LoggedBody<Plugged>>>>;

/// A body the gateway made, as a response body.
fn made(b: Full) -> ResponseBody {
    Either::Right(Either::Left(b))
}

/// What a relayed body keeps alive and reports to, for as long as the
/// client is being sent it.
pub struct Exchange {
    /// Keeps the target counted as in flight until the body is dropped.
    chosen: Chosen,
    /// The HTTP/1.1 connection the body arrives on, back to its pool
    /// once the body has been read to its end.
    conn: PooledConn,
}

impl BodyGuard for Exchange {
    fn on_end(&mut self) {
        self.conn.release();
    }

    fn on_error(&mut self) {
        self.chosen.up.record_failure(self.chosen.idx, "body");
    }
}

/// The upstream's body `inner`, answered by `chosen` on `conn`, as it is
/// relayed.
fn relayed(inner: Incoming, chosen: Chosen, conn: PooledConn) -> Relayed {
    let read_timeout = chosen.up.timeouts.read;
    ReadTimeout::new(Guarded::new(inner, Exchange { chosen, conn }), read_timeout)
}

/// Serves one request. Never fails: every problem becomes a JSON error.
pub async fn handle(
    state: Arc<State>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let snap = state.load();
    let rid = headers::request_id(req.headers());
    let mut log = state.telemetry().begin(&req, &conn);
    let mut resp = match proxy(&snap, &conn, req, &rid, log.as_deref_mut()).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(l) = log.as_deref_mut() {
                l.set_error_type(e.code());
            }
            e.into_response(&rid).map(made)
        }
    };
    let h = resp.headers_mut();
    h.insert(headers::X_REQUEST_ID, rid.clone());
    if let Some(via) = &snap.via
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        headers::add_via(resp.headers_mut(), via);
    }
    if let Some(mut l) = log {
        l.set_status(resp.status(), &rid);
        match resp.body_mut() {
            // The log is closed when the streamed body ends or is dropped.
            Either::Left(relayed) => relayed.attach(l),
            Either::Right(Either::Right(plugged)) => plugged.attach(l),
            // A made body is sent whole; the log closes now.
            Either::Right(Either::Left(b)) => l.add_bytes_out(b.len()),
        }
    }
    Ok(resp)
}

/// Lowercases a host and drops its port; borrows when already lowercase.
fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    // `example.com.` is the same host as `example.com`.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

fn head_size(req: &Request<Incoming>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// What the HTTP/1 parser lets through but RFC 9110/9112 does not: a
/// missing, repeated or malformed `Host`, and a transfer coding other than exactly
/// `chunked` (the parser would drop the others silently). The parser
/// itself refuses invalid and differing `Content-Length`s, obs-fold and
/// control characters, and lets `Transfer-Encoding` win over
/// `Content-Length`, removing the latter and closing the connection after
/// the response (RFC 9112 §6.1).
fn check_framing<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let h = req.headers();
    let mut hosts = h.get_all(header::HOST).iter();
    let first_host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest(
            "the request has more than one Host header".into(),
        ));
    }
    // RFC 9112 §3.2: even an absolute-form target needs a Host line, and
    // its value must be `host[:port]` (RFC 9110 §7.2), never something an
    // upstream could read as more.
    match first_host {
        None if req.version() == Version::HTTP_11 => {
            return Err(GatewayError::BadRequest(
                "an HTTP/1.1 request needs a Host header".into(),
            ));
        }
        Some(v)
            if v.as_bytes().contains(&b'@')
                || http::uri::Authority::try_from(v.as_bytes()).is_err() =>
        {
            return Err(GatewayError::BadRequest(
                "the Host header is not a valid host[:port]".into(),
            ));
        }
        _ => {}
    }
    let mut codings = h.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(GatewayError::NotImplemented(
            "the only transfer coding accepted is a single `chunked`".into(),
        ));
    }
    Ok(())
}

/// Normalises the request path ([`crate::uri_path`]) and finds its route.
/// Encoded slashes are kept opaque for the first lookup; the matched
/// route's `escaped_slashes` then keeps them, refuses the request, or
/// decodes them, in which case the decoded path is looked up again and
/// its route serves the request. Returns the match and the path to
/// forward when it differs from the client's.
fn route_by_path<'s>(
    snap: &'s Snapshot,
    req: &Request<Incoming>,
    host: Option<&str>,
) -> Result<(crate::router::RouteMatch<'s, Arc<Route>>, Option<String>), GatewayError> {
    use crate::config::EscapedSlashes;
    use crate::uri_path::{has_escaped_slash, normalize};
    let bad = |e: crate::uri_path::PathError| GatewayError::BadRequest(e.to_string());
    let raw = req.uri().path();
    let first = normalize(raw, EscapedSlashes::Keep).map_err(bad)?;
    let lookup = |path: &str| {
        snap.router
            .lookup(&RequestView {
                method: req.method(),
                host,
                path,
                query: req.uri().query(),
                headers: req.headers(),
            })
            .ok_or_else(|| GatewayError::NoRoute {
                method: req.method().to_string(),
                host: host.unwrap_or_default().to_string(),
                path: path.to_string(),
            })
    };
    let m = lookup(&first)?;
    let escaped = m.value.escaped_slashes;
    if escaped == EscapedSlashes::Keep || !has_escaped_slash(&first) {
        let changed = matches!(first, std::borrow::Cow::Owned(_));
        return Ok((m, changed.then(|| first.into_owned())));
    }
    // `reject` refuses here; `decode` yields the path with `/` in their
    // place, which a client could have sent as it is.
    let decoded = normalize(&first, escaped).map_err(bad)?.into_owned();
    let m = lookup(&decoded)?;
    Ok((m, Some(decoded)))
}

/// Replaces the request's path, keeping its query (and the scheme and
/// authority of an absolute-form or HTTP/2 target).
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), GatewayError> {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| GatewayError::BadRequest("the request target is not valid".into()))?,
    );
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|_| GatewayError::BadRequest("the request target is not valid".into()))?;
    Ok(())
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

async fn proxy(
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    rid: &HeaderValue,
    mut log: Option<&mut RequestLog>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let settings = &snap.settings;
    let size = head_size(&req);
    if size > settings.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            limit: settings.max_header_bytes,
        });
    }
    if req.headers().len() > settings.max_header_count {
        return Err(GatewayError::TooManyHeaders {
            limit: settings.max_header_count,
        });
    }
    check_framing(&req)?;
    // HTTP/2 carries the host in :authority; HTTP/1.1 in Host (an
    // absolute-form target wins over Host, RFC 9112 §3.2.2).
    let host_value: Option<HeaderValue> = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let host = match host_value.as_ref().map(|v| v.to_str()) {
        Some(Ok(h)) => Some(normalize_host(h)),
        Some(Err(_)) => {
            return Err(GatewayError::BadRequest(
                "the Host header is not valid text".into(),
            ));
        }
        None => None,
    };
    let declared_len = match req.headers().get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| GatewayError::BadRequest("Content-Length is not a number".into()))?,
        ),
        None => None,
    };
    let limit = settings.max_body_bytes;
    if limit > 0 && declared_len.is_some_and(|n| n > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }

    // The path is normalised once, here: the route is chosen by exactly the
    // path the upstream is sent.
    let (m, normalized) = route_by_path(snap, &req, host.as_deref())?;
    if let Some(path) = normalized {
        set_path(&mut req, &path)?;
    }
    let route: &Route = m.value;
    let strip_len = m.strip_len;
    if let Some(l) = log.as_deref_mut() {
        let template = route.paths.get(m.path_index());
        l.set_route(&route.id, route.service.as_ref(), template);
    }
    let mut front = Front {
        host_value,
        declared_len,
        limit,
        strip_len,
    };
    let Some(chain) = &route.plugins else {
        let req = req.map(ClientBody::Streamed);
        let resp = forward(snap, conn, req, rid, route, front, None, log).await?;
        return Ok(resp.map(|b| match b {
            Either::Left(relayed) => Either::Left(LoggedBody::new(relayed)),
            Either::Right(made_here) => made(made_here),
        }));
    };

    // The plugin phases: access may answer on its own; whatever answer the
    // client gets then passes the response phases.
    let mut ctx = crate::plugin::RequestCtx::new(
        route.id.clone(),
        route.service.clone(),
        conn.client,
        rid.clone(),
    );
    ctx.upstream = Some(route.upstream.clone());
    if let Some(l) = log.as_deref_mut() {
        ctx.ext.insert(l.cache_slot());
    }
    let (mut parts, body) = req.into_parts();
    let mut body = ClientBody::Streamed(body);
    let access = {
        let mut head = crate::plugin::RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            version: parts.version,
            headers: &mut parts.headers,
            body: &mut body,
            body_limit: front.limit,
        };
        chain.access(&mut head, &mut ctx).await
    };
    if let (Some(l), Some(c)) = (log.as_deref_mut(), &ctx.consumer) {
        l.set_consumer(&c.name);
    }
    if let (Some(l), Some(d)) = (log.as_deref_mut(), crate::plugin::ratelimit_decision(&ctx)) {
        l.set_ratelimit_decision(d);
    }
    let resp = match access {
        Err(early) => {
            if let Some(bg) = ctx.ext.remove::<crate::plugin::BackgroundFetch>() {
                let req = Request::from_parts(parts, body);
                let consumer = ctx.consumer.clone();
                background(snap.clone(), *conn, req, rid.clone(), front, consumer, bg.0);
            }
            crate::plugin::Chain::early_response(early, rid).map(Either::Right)
        }
        Ok(()) => {
            // A plugin may lower the body limit for this request; the
            // smaller of its and the global one applies while streaming.
            if let Some(l) = ctx.body_limit {
                front.limit = if front.limit == 0 {
                    l
                } else {
                    front.limit.min(l)
                };
            }
            let req = Request::from_parts(parts, body);
            let sent = forward(
                snap,
                conn,
                req,
                rid,
                route,
                front,
                Some((chain, &mut ctx)),
                log.as_deref_mut(),
            );
            match sent.await {
                Ok(r) => r,
                Err(e) => {
                    if let Some(l) = log {
                        l.set_error_type(e.code());
                    }
                    e.into_response(rid).map(Either::Right)
                }
            }
        }
    };
    let resp = chain.respond(resp, ctx);
    Ok(resp.map(|b| Either::Right(Either::Right(Box::new(LoggedBody::new(b))))))
}

/// Sends a request a plugin answered early upstream anyway, in the
/// background (see [`crate::plugin::BackgroundFetch`]): the route's
/// upstream request, response and log phases run as for a foreground
/// request, and the answer is read to its end so the body phases see it.
fn background(
    snap: Arc<Snapshot>,
    conn: ConnInfo,
    req: Request<ClientBody>,
    rid: HeaderValue,
    front: Front,
    consumer: Option<Arc<crate::consumer::Consumer>>,
    ext: http::Extensions,
) {
    tokio::spawn(async move {
        let host = front
            .host_value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(normalize_host);
        let found = {
            let view = RequestView {
                method: req.method(),
                host: host.as_deref(),
                path: req.uri().path(),
                query: req.uri().query(),
                headers: req.headers(),
            };
            snap.router.lookup(&view).map(|m| m.value)
        };
        let Some(route) = found else { return };
        let Some(chain) = route.plugins.clone() else {
            return;
        };
        let mut ctx = crate::plugin::RequestCtx::new(
            route.id.clone(),
            route.service.clone(),
            conn.client,
            rid.clone(),
        );
        ctx.consumer = consumer;
        ctx.upstream = Some(route.upstream.clone());
        ctx.ext = ext;
        let sent = forward(
            &snap,
            &conn,
            req,
            &rid,
            route,
            front,
            Some((&chain, &mut ctx)),
            None,
        );
        let resp = match sent.await {
            Ok(r) => r,
            Err(e) => e.into_response(&rid).map(Either::Right),
        };
        let mut body = chain.respond(resp, ctx).into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if frame.is_err() {
                break;
            }
        }
    });
}

/// The host rule when a plugin chose the `Host` itself.
static PASS_HOST: HostHeaderRt = HostHeaderRt::Pass;

/// What the checks before route matching found out about the request.
struct Front {
    host_value: Option<HeaderValue>,
    declared_len: Option<u64>,
    limit: u64,
    strip_len: usize,
}

/// Sends a request on its matched route to the upstream and returns the
/// response head, with its body streaming.
#[expect(
    clippy::too_many_arguments,
    reason = "the request's parts as the phases before it left them; a struct would only rename them"
)]
async fn forward(
    snap: &Snapshot,
    conn: &ConnInfo,
    mut req: Request<ClientBody>,
    rid: &HeaderValue,
    route: &Route,
    front: Front,
    mut plugins: Option<(&Arc<crate::plugin::Chain>, &mut crate::plugin::RequestCtx)>,
    mut log: Option<&mut RequestLog>,
) -> Result<Response<Answered>, GatewayError> {
    let Front {
        host_value,
        declared_len,
        limit,
        strip_len,
    } = front;
    // Only a request that gets this far is labelled with the upstream: one
    // a plugin answered (a 401, a 429, a cache hit) never reached it.
    if let Some(l) = log.as_deref_mut() {
        l.set_upstream(&route.upstream);
    }
    let path = req.uri().path();

    // Path and query sent upstream.
    // Without a prefix to strip, the client's own path and query go
    // upstream as they are (a reference-counted clone of hyper's parse).
    let path_and_query = match req.uri().path_and_query() {
        Some(pq) if strip_len == 0 && pq.path().starts_with('/') => pq.clone(),
        _ => {
            let rest = &path[strip_len.min(path.len())..];
            let rest = if rest.is_empty() { "/" } else { rest };
            let pq = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            pq.parse::<http::uri::PathAndQuery>()
                .map_err(|_| GatewayError::BadRequest("the request target is not valid".into()))?
        }
    };

    // An h2c upgrade would switch the upstream connection to HTTP/2 out of
    // the route table's sight (h2c smuggling); it is sent as the plain
    // HTTP/1.1 request it also is.
    let h2c = headers::is_h2c_upgrade(req.headers());
    let upgrade = !h2c && headers::is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut method = parts.method;
    let mut hdrs = parts.headers;

    headers::strip_hop_by_hop(&mut hdrs, upgrade, route.upstream.h2);
    if h2c {
        headers::strip_h2c(&mut hdrs);
    }
    hdrs.remove(header::EXPECT);
    // Room for what is added below, so the map grows once, not per header.
    hdrs.reserve(8);
    headers::add_forwarding(&mut hdrs, &conn.client_ip, conn.proto, host_value.as_ref());
    if let Some(via) = &snap.via {
        headers::add_via(&mut hdrs, via);
    }
    hdrs.insert(headers::X_REQUEST_ID, rid.clone());
    // Only the gateway says who the consumer is.
    for h in [&snap.consumer_name_header, &snap.consumer_groups_header]
        .into_iter()
        .flatten()
    {
        hdrs.remove(h);
    }
    let mut path_and_query = path_and_query;
    let mut host_override = None;
    if let Some((chain, ctx)) = plugins.as_mut() {
        if let Some(c) = &ctx.consumer {
            if let Some(h) = &snap.consumer_name_header {
                hdrs.insert(h.clone(), c.name_header.clone());
            }
            if let (Some(h), Some(v)) = (&snap.consumer_groups_header, &c.groups_header) {
                hdrs.insert(h.clone(), v.clone());
            }
        }
        let mut up = crate::plugin::UpstreamRequest {
            method: &mut method,
            path_and_query: &mut path_and_query,
            headers: &mut hdrs,
            host: &mut host_override,
        };
        chain.upstream_request(&mut up, ctx);
    }

    let has_body =
        declared_len.is_some_and(|n| n > 0) || (declared_len.is_none() && !body.is_end_stream());
    let body = if has_body {
        let slot = Arc::new(BodySlot::new(body, limit));
        if let Some(l) = log.as_deref_mut() {
            l.set_body(&slot);
        }
        BodySource::Stream(slot)
    } else {
        BodySource::Empty
    };

    let plugins_host = host_override.is_some();
    let ctx = Attempts {
        up: route.upstream.clone(),
        method,
        headers: hdrs,
        path_and_query,
        host_value: host_override.or(host_value),
        host_rule: if plugins_host {
            &PASS_HOST
        } else {
            &route.host_header
        },
        client_ip: conn.client.ip(),
        body,
        log,
    };
    let Answer {
        mut resp,
        chosen: target,
        conn,
    } = ctx.run().await?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            // The upstream connection now belongs to the tunnel; holding its
            // handle until the switch completes keeps hyper from closing it.
            let _conn = conn;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
            }
        });
        let (parts, _body) = resp.into_parts();
        return Ok(Response::from_parts(parts, Either::Right(Full::empty())));
    }

    let (mut parts, body) = resp.into_parts();
    // The body arrives de-chunked; a Content-Length sent beside
    // Transfer-Encoding is stale and must go (RFC 9112 §6.3), so the
    // client's connection frames the body itself.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    headers::strip_hop_by_hop(&mut parts.headers, false, false);
    if let Some(sticky) = &route.upstream.sticky {
        set_sticky_cookie(
            &mut parts.headers,
            sticky,
            &route.upstream,
            target.idx,
            target.cookie_matched,
        );
    }
    Ok(Response::from_parts(
        parts,
        Either::Left(relayed(body, target, conn)),
    ))
}

fn set_sticky_cookie(
    h: &mut HeaderMap,
    sticky: &crate::config::StickyConfig,
    up: &Upstream,
    idx: usize,
    already: bool,
) {
    if already {
        return;
    }
    let mut c = format!(
        "{}={}; Path=/; HttpOnly",
        sticky.cookie, up.targets[idx].sticky_id
    );
    if let Some(ttl) = sticky.ttl {
        c.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        h.append(header::SET_COOKIE, v);
    }
}

/// Reads the sticky cookie from the request.
fn sticky_cookie<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').find_map(|kv| {
                let (k, val) = kv.trim().split_once('=')?;
                (k == name).then_some(val.trim())
            })
        })
}

// === impl Attempts ===

/// The chosen target of the attempt that produced the response.
pub struct Chosen {
    up: Arc<Upstream>,
    idx: usize,
    head_after: Duration,
    cookie_matched: bool,
}

impl Drop for Chosen {
    fn drop(&mut self) {
        // The request stops counting as in flight once its body is done.
        self.up.balancer.on_end(self.idx, self.head_after);
    }
}

struct Attempts<'r> {
    up: Arc<Upstream>,
    method: Method,
    headers: HeaderMap,
    path_and_query: http::uri::PathAndQuery,
    host_value: Option<HeaderValue>,
    host_rule: &'r HostHeaderRt,
    client_ip: std::net::IpAddr,
    body: BodySource,
    log: Option<&'r mut RequestLog>,
}

enum Failure {
    Connect(String),
    Timeout(String),
    /// The client stopped sending its body.
    ClientStalled,
    Other(String),
    /// The target answered 502/503/504; kept so that, when no retry
    /// follows, the client gets the upstream's own answer.
    Status(Answer),
}

/// A target's response head, with what must live as long as its body.
struct Answer {
    resp: Response<Incoming>,
    chosen: Chosen,
    conn: PooledConn,
}

impl Attempts<'_> {
    async fn run(mut self) -> Result<Answer, GatewayError> {
        let up = self.up.clone();
        up.budget_deposit();
        // The clock is read once per attempt (and once more for its
        // latency); everything else derives from that reading.
        let first_start = Instant::now();
        let deadline = first_start + up.timeouts.total;
        // Every attempt goes to a target not tried yet, so there are never
        // more attempts than targets; knowing which attempt is the last
        // spares it a copy of the headers.
        let max_attempts = (1 + up.retries as usize).min(up.targets.len());
        let idempotent = is_idempotent(&self.method);
        let mut tried = Tried::default();
        let mut last: Option<Failure> = None;

        let sticky_pref = up
            .sticky
            .as_ref()
            .and_then(|s| sticky_cookie(&self.headers, &s.cookie))
            .and_then(|v| up.sticky_target(v));

        for attempt in 0..max_attempts {
            let started = if attempt == 0 {
                first_start
            } else {
                Instant::now()
            };
            let now = mono_ms_at(started.into_std());
            let eligible = |i: usize| !tried.contains(i) && up.eligible(i, now);
            let (idx, cookie_matched) = match sticky_pref.filter(|&i| attempt == 0 && eligible(i)) {
                Some(i) => (i, true),
                None => {
                    let pick_ctx = PickCtx {
                        client_ip: self.client_ip,
                        headers: &self.headers,
                        path_and_query: self.path_and_query.as_str(),
                    };
                    match up.balancer.pick(&pick_ctx, &eligible) {
                        Some(i) => (i, false),
                        None => break,
                    }
                }
            };
            if attempt > 0 && !up.budget_withdraw() {
                tracing::debug!(upstream = %up.id, "retry budget spent; not retrying");
                if let Some(m) = self.log.as_deref().and_then(RequestLog::metrics) {
                    m.record_retry_budget_exhausted(&up.id);
                }
                break;
            }
            let Some(body) = self.body.take() else { break };
            if let (Some(f), Some(m)) = (&last, self.log.as_deref().and_then(RequestLog::metrics)) {
                m.record_retry(&up.id, f.retry_reason());
            }
            tried.insert(idx);
            let is_last = attempt + 1 == max_attempts;
            let target = &up.targets[idx];
            let mut req = self.build(idx, body, is_last);
            let span = match self.log.as_deref() {
                Some(l) => {
                    let mut span = l.span.start_attempt(&target.addr);
                    span.inject(req.headers_mut());
                    if span.is_recording()
                        && let Some(peer) = target.socket
                    {
                        span.set_peer_address(peer);
                    }
                    Some(span)
                }
                None => None,
            };
            up.balancer.on_start(idx);
            let mut outcome = self.send(idx, req, started, now, deadline).await;
            if let Ok((resp, _)) = &outcome
                && let Some(why) = invalid_response(resp)
            {
                outcome = Err(Failure::Other(format!("{} answered {why}", target.addr)));
            }
            let head_after = started.elapsed();
            if let Some(l) = self.log.as_deref_mut() {
                l.add_upstream_time(head_after);
                let result = match &outcome {
                    Ok((resp, _)) => AttemptOutcome::Status(resp.status().as_u16()),
                    Err(Failure::Connect(_)) => AttemptOutcome::ConnectError,
                    Err(Failure::Timeout(_)) => AttemptOutcome::Timeout,
                    Err(_) => AttemptOutcome::Error,
                };
                if let Some(m) = l.metrics() {
                    m.record_attempt(&AttemptMetrics {
                        upstream: &up.id,
                        target: &target.addr,
                        outcome: result,
                        duration: head_after,
                    });
                }
                if let Some(span) = span {
                    match &outcome {
                        Ok((resp, _)) => span.end(resp.status()),
                        Err(f) => span.end_with_error(f.error_type()),
                    }
                }
                if outcome.is_ok() {
                    l.set_target(idx);
                }
            }
            let chosen = Chosen {
                up: up.clone(),
                idx,
                head_after,
                cookie_matched,
            };
            // A body the client failed to deliver (too large, cut off) is
            // the client's fault: answer for it, and don't hold it against
            // the target.
            if outcome.is_err()
                && let Some(e) = self.body.client_fault()
            {
                return Err(e.into());
            }
            if let Err(Failure::ClientStalled) = outcome {
                return Err(GatewayError::RequestTimeout);
            }
            let failure = match outcome {
                Ok((resp, conn)) => {
                    let retryable_status = matches!(resp.status().as_u16(), 502..=504);
                    if !retryable_status {
                        target.health.record_success();
                        return Ok(Answer { resp, chosen, conn });
                    }
                    up.record_failure(idx, "status");
                    Failure::Status(Answer { resp, chosen, conn })
                }
                Err(f) => {
                    let why = match &f {
                        Failure::Connect(_) => "connect",
                        Failure::Timeout(_) => "timeout",
                        _ => "error",
                    };
                    up.record_failure(idx, why);
                    drop(chosen);
                    f
                }
            };
            // Connect failures never reached the upstream, so any request
            // may go elsewhere; other failures only for idempotent methods
            // whose body can be sent again.
            let retry_ok = match &failure {
                Failure::Connect(_) => self.body.replayable(),
                _ => idempotent && self.body.replayable(),
            };
            if !retry_ok || Instant::now() >= deadline {
                return failure.into_result(&up);
            }
            tracing::debug!(upstream = %up.id, target = %target.addr, attempt, "retrying on another target");
            last = Some(failure);
        }
        match last {
            None => Err(GatewayError::NoHealthyUpstream {
                upstream: up.id.clone(),
            }),
            Some(f) => f.into_result(&up),
        }
    }

    /// Builds the request for one attempt. The last possible attempt takes
    /// the headers; earlier ones copy them so a retry can reuse them.
    fn build(&mut self, idx: usize, body: ReqBody, last: bool) -> Request<ReqBody> {
        let mut headers = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        let up = &self.up;
        let target = &up.targets[idx];
        // HTTP/1.1 sends the origin form (`/path?query`); HTTP/2 needs the
        // scheme and authority for its pseudo-headers.
        let uri = if up.h2 {
            Uri::from_parts({
                let mut p = http::uri::Parts::default();
                p.scheme = Some(up.scheme.clone());
                p.authority = Some(target.authority.clone());
                p.path_and_query = Some(self.path_and_query.clone());
                p
            })
            .expect("scheme, authority and path make a valid uri")
        } else {
            Uri::from(self.path_and_query.clone())
        };
        let host = match self.host_rule {
            HostHeaderRt::Pass => self
                .host_value
                .clone()
                .unwrap_or_else(|| target.host_value.clone()),
            HostHeaderRt::Target => target.host_value.clone(),
            HostHeaderRt::Rewrite(v) => v.clone(),
        };
        headers.insert(header::HOST, host);
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = if up.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        *req.headers_mut() = headers;
        req
    }

    /// Sends one attempt and waits for the response head, enforcing the
    /// send, read and total timeouts.
    async fn send(
        &self,
        idx: usize,
        req: Request<ReqBody>,
        started: Instant,
        attempt_start: u64,
        deadline: Instant,
    ) -> Result<(Response<Incoming>, PooledConn), Failure> {
        let t = &self.up.timeouts;
        let fut = self.up.targets[idx].pool.send(req);
        tokio::pin!(fut);
        // The first wait starts from the attempt's own clock reading; only
        // a wait that ends without an answer reads the clock again.
        let mut clock = Some((started, attempt_start));
        loop {
            // The read timeout runs from when the body is fully sent; the
            // send timeout bounds each pause while it is being sent.
            let (done, progress) = self.body.progress(attempt_start);
            let (base, limit) = if done {
                (progress, t.read)
            } else {
                (progress, t.send)
            };
            let due_ms = base + limit.as_millis() as u64;
            let (now_at, now) = clock.take().unwrap_or_else(|| {
                let at = Instant::now();
                (at, mono_ms_at(at.into_std()))
            });
            let wake = (now_at + Duration::from_millis(due_ms.saturating_sub(now))).min(deadline);
            match tokio::time::timeout_at(wake, &mut fut).await {
                Ok(Ok(sent)) => return Ok(sent),
                Ok(Err(e)) => {
                    let msg = error_chain(&e);
                    return Err(match e {
                        SendError::Connect { .. } => Failure::Connect(msg),
                        SendError::Request { .. } => Failure::Other(msg),
                    });
                }
                Err(_) => {
                    if Instant::now() >= deadline {
                        return Err(Failure::Timeout(format!(
                            "total timeout {}",
                            humantime::format_duration(t.total)
                        )));
                    }
                    let (done2, progress2) = self.body.progress(attempt_start);
                    let now = mono_ms();
                    if done2 == done && progress2 == progress && now >= due_ms {
                        if !done && self.body.stalled_on_client() {
                            return Err(Failure::ClientStalled);
                        }
                        let which = if done {
                            ("read", t.read)
                        } else {
                            ("send", t.send)
                        };
                        return Err(Failure::Timeout(format!(
                            "{} timeout {}",
                            which.0,
                            humantime::format_duration(which.1)
                        )));
                    }
                }
            }
        }
    }
}

/// Why a response head must not reach the client: a status code outside
/// 100–599 (RFC 9110 §15), or a transfer coding other than a single
/// `chunked`, which the HTTP client would drop without decoding.
fn invalid_response<B>(resp: &Response<B>) -> Option<String> {
    let status = resp.status().as_u16();
    if !(100..=599).contains(&status) {
        return Some(format!("the invalid status code {status}"));
    }
    let mut codings = resp.headers().get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Some(format!("the unsupported transfer coding {first:?}"));
    }
    None
}

/// The targets a request has tried: a bitmap, with a list for indices past
/// 63 (an upstream that large is rare, and the list is only allocated then).
#[derive(Default)]
struct Tried {
    low: u64,
    high: Vec<usize>,
}

impl Tried {
    fn insert(&mut self, i: usize) {
        match u32::try_from(i).ok().and_then(|b| 1u64.checked_shl(b)) {
            Some(bit) => self.low |= bit,
            None => self.high.push(i),
        }
    }

    fn contains(&self, i: usize) -> bool {
        match u32::try_from(i).ok().and_then(|b| 1u64.checked_shl(b)) {
            Some(bit) => self.low & bit != 0,
            None => self.high.contains(&i),
        }
    }
}

impl Failure {
    /// Why the next attempt is sent, for the retry counter.
    fn retry_reason(&self) -> RetryReason {
        match self {
            Failure::Connect(_) => RetryReason::ConnectError,
            Failure::Timeout(_) => RetryReason::Timeout,
            Failure::Status(_) => RetryReason::Status,
            Failure::ClientStalled | Failure::Other(_) => RetryReason::Error,
        }
    }

    /// `error.type` of an attempt that got no response.
    fn error_type(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect_error",
            Failure::Timeout(_) => "timeout",
            Failure::ClientStalled => "client_stalled",
            Failure::Other(_) | Failure::Status(_) => "error",
        }
    }

    fn into_result(self, up: &Upstream) -> Result<Answer, GatewayError> {
        match self {
            Failure::Timeout(t) => Err(GatewayError::UpstreamTimeout {
                upstream: up.id.clone(),
                timeout: t,
            }),
            Failure::ClientStalled => Err(GatewayError::RequestTimeout),
            Failure::Connect(r) | Failure::Other(r) => Err(GatewayError::BadGateway {
                upstream: up.id.clone(),
                reason: r,
            }),
            Failure::Status(answer) => Ok(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_targets_low_and_high_indices() {
        let mut t = Tried::default();
        for i in [0, 5, 63, 64, 1000] {
            assert!(!t.contains(i));
            t.insert(i);
            assert!(t.contains(i));
        }
        assert!(!t.contains(1) && !t.contains(62) && !t.contains(65));
    }
}
