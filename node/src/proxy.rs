//! The data path: one request from the client to a target and back.
//!
//! `handle` validates the request, finds its route, then runs the attempt
//! loop: pick a target (healthy, not yet tried), send, and on a failure that
//! is safe to retry move to another target while attempts and the retry
//! budget last. Bodies stream in both directions through small wrappers
//! ([`ReqBody`], [`ProxyBody`]) that enforce size limits and idle timeouts
//! without buffering.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::balance::PickCtx;
use crate::error::GatewayError;
use crate::headers;
use crate::metrics::{AttemptMetrics, AttemptOutcome, GatewayMetrics, RetryReason};
use crate::router::RequestView;
use crate::snapshot::{HostHeaderRt, Route, Snapshot, State};
use crate::telemetry::RequestLog;
use crate::upstream::{PooledConn, SendError, Upstream, ms_at, now_ms};

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gateway knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer address.
    pub client: SocketAddr,
    /// The peer's IP as forwarding headers write it, formatted once per
    /// connection rather than per request.
    pub client_ip: headers::ClientIp,
    /// `http` or `https`, for forwarding headers.
    pub proto: &'static str,
}

impl ConnInfo {
    /// The connection from `client` over `proto`.
    pub fn new(client: SocketAddr, proto: &'static str) -> Self {
        ConnInfo {
            client,
            client_ip: headers::ClientIp::new(client.ip()),
            proto,
        }
    }
}

/// Serves one request. Never fails: every problem becomes a JSON error.
pub async fn handle(
    state: Arc<State>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let snap = state.load();
    let rid = headers::request_id(req.headers());
    let mut log = state.telemetry().begin(&req, &conn);
    let mut resp = match proxy(&snap, &conn, req, &rid, log.as_deref_mut()).await {
        Ok(r) => r,
        Err(e) => {
            if e.source() == crate::error::Source::Upstream {
                tracing::debug!(request_id = ?rid, error = %e, "request failed");
            }
            if let Some(l) = log.as_deref_mut() {
                l.set_error_type(e.code());
            }
            e.into_response(&rid)
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
            ProxyBody::Upstream { log, .. } => *log = Some(l),
            ProxyBody::Plugin(p) => p.attach_log(l),
            ProxyBody::Full(b) => l.add_bytes_out(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Empty => {}
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

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
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
    req: Request<Incoming>,
    rid: &HeaderValue,
    mut log: Option<&mut RequestLog>,
) -> Result<Response<ProxyBody>, GatewayError> {
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
    // HTTP/2 carries the host in :authority; HTTP/1.1 in Host (an
    // absolute-form target wins over Host, RFC 9112 §3.2.2).
    let host_value: Option<HeaderValue> = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    if host_value.is_none() && req.version() == Version::HTTP_11 {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.1 request needs a Host header".into(),
        ));
    }
    let host = match host_value.as_ref().map(|v| v.to_str()) {
        Some(Ok(h)) => Some(normalize_host(h)),
        Some(Err(_)) => {
            return Err(GatewayError::BadRequest(
                "the Host header is not valid text".into(),
            ));
        }
        None => None,
    };
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest(
            "the request target must be an absolute path".into(),
        ));
    }
    // A dot segment could reach a path the route table never allowed once an
    // upstream normalises it; refuse rather than guess.
    if has_dot_segment(path) {
        return Err(GatewayError::BadRequest(
            "the path must not contain `.` or `..` segments".into(),
        ));
    }
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

    let view = RequestView {
        method: req.method(),
        host: host.as_deref(),
        path,
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some(m) = snap.router.lookup(&view) else {
        return Err(GatewayError::NoRoute {
            method: req.method().to_string(),
            host: host.as_deref().unwrap_or_default().to_string(),
            path: path.to_string(),
        });
    };
    let route: &Route = m.value;
    let strip_len = m.strip_len;
    if let Some(l) = log.as_deref_mut() {
        let template = route.paths.get(m.path_index());
        l.set_route(&route.id, route.service.as_ref(), template);
        l.set_upstream(&route.upstream);
    }
    let mut front = Front {
        host_value,
        declared_len,
        limit,
        strip_len,
    };
    let Some(chain) = &route.plugins else {
        let req = req.map(ClientBody::Streamed);
        return forward(snap, conn, req, rid, route, front, None, log).await;
    };

    // The plugin phases: access may answer on its own; whatever answer the
    // client gets then passes the response phases.
    let mut ctx = crate::plugin::RequestCtx::new(
        route.id.clone(),
        route.service.clone(),
        conn.client,
        rid.clone(),
    );
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
    let resp = match access {
        Err(early) => {
            if let Some(bg) = ctx.ext.remove::<crate::plugin::BackgroundFetch>() {
                let req = Request::from_parts(parts, body);
                let consumer = ctx.consumer.clone();
                background(snap.clone(), *conn, req, rid.clone(), front, consumer, bg.0);
            }
            crate::plugin::Chain::early_response(early, rid)
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
                    e.into_response(rid)
                }
            }
        }
    };
    Ok(chain.respond(resp, ctx))
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
            Err(e) => e.into_response(&rid),
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
) -> Result<Response<ProxyBody>, GatewayError> {
    let Front {
        host_value,
        declared_len,
        limit,
        strip_len,
    } = front;
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

    let upgrade = headers::is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut method = parts.method;
    let mut hdrs = parts.headers;

    headers::strip_hop_by_hop(&mut hdrs, upgrade, route.upstream.h2);
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
        return Ok(Response::from_parts(parts, ProxyBody::Empty));
    }

    let (mut parts, body) = resp.into_parts();
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
        ProxyBody::upstream(body, target, conn),
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
            let now = ms_at(started.into_std());
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
            let outcome = self.send(idx, req, started, now, deadline).await;
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
                return Err(e);
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
                (at, ms_at(at.into_std()))
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
                    let now = now_ms();
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

/// An error with its sources, `outer: inner: …`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

// === request bodies ===

/// The client's request body, kept where a failed attempt can hand it back:
/// until an attempt starts reading it, it stays in the slot, so a retry
/// after a connect failure can still send it.
pub struct BodySlot {
    body: std::sync::Mutex<Option<ClientBody>>,
    started: AtomicBool,
    done: AtomicBool,
    progress_ms: AtomicU64,
    limit: u64,
    too_large: AtomicBool,
    client_error: AtomicBool,
    /// True while the last read of the client's body is pending: a stall
    /// then is the client's, not the upstream's.
    waiting_on_client: AtomicBool,
    /// Body bytes read from the client.
    received: AtomicU64,
}

impl BodySlot {
    fn new(body: ClientBody, limit: u64) -> Self {
        BodySlot {
            body: std::sync::Mutex::new(Some(body)),
            started: AtomicBool::new(false),
            done: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            limit,
            too_large: AtomicBool::new(false),
            client_error: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
            received: AtomicU64::new(0),
        }
    }

    /// Body bytes read from the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

enum BodySource {
    Empty,
    Stream(Arc<BodySlot>),
}

impl BodySource {
    /// A body for the next attempt, or None when it was already consumed.
    fn take(&self) -> Option<ReqBody> {
        match self {
            BodySource::Empty => Some(ReqBody::Empty),
            BodySource::Stream(slot) => {
                if slot.started.load(Ordering::Acquire) {
                    return None;
                }
                Some(ReqBody::Stream {
                    slot: slot.clone(),
                    body: None,
                    seen: 0,
                })
            }
        }
    }

    fn replayable(&self) -> bool {
        match self {
            BodySource::Empty => true,
            BodySource::Stream(slot) => !slot.started.load(Ordering::Acquire),
        }
    }

    /// (body fully sent, ms of last progress).
    fn progress(&self, attempt_start: u64) -> (bool, u64) {
        match self {
            BodySource::Empty => (true, attempt_start),
            BodySource::Stream(slot) => {
                let p = slot.progress_ms.load(Ordering::Relaxed).max(attempt_start);
                (slot.done.load(Ordering::Acquire), p)
            }
        }
    }

    /// Whether the body is stalled on the client rather than the upstream.
    fn stalled_on_client(&self) -> bool {
        match self {
            BodySource::Empty => false,
            BodySource::Stream(slot) => {
                !slot.done.load(Ordering::Acquire) && slot.waiting_on_client.load(Ordering::Relaxed)
            }
        }
    }

    fn client_fault(&self) -> Option<GatewayError> {
        match self {
            BodySource::Empty => None,
            BodySource::Stream(slot) => {
                if slot.too_large.load(Ordering::Acquire) {
                    Some(GatewayError::PayloadTooLarge { limit: slot.limit })
                } else if slot.client_error.load(Ordering::Acquire) {
                    Some(GatewayError::BadRequest(
                        "the request body could not be read".into(),
                    ))
                } else {
                    None
                }
            }
        }
    }
}

/// Body sent to the upstream.
pub enum ReqBody {
    /// No body.
    Empty,
    /// The client's body, streamed.
    Stream {
        /// Where the body waits until an attempt reads it.
        slot: Arc<BodySlot>,
        /// The body, once this attempt took it.
        body: Option<ClientBody>,
        /// Bytes forwarded so far.
        seen: u64,
    },
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body exceeds the limit")]
    TooLarge,
    #[error("reading the client's request body failed: {0}")]
    Client(hyper::Error),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let ReqBody::Stream { slot, body, seen } = this else {
            return Poll::Ready(None);
        };
        if body.is_none() {
            slot.started.store(true, Ordering::Release);
            *body = slot.body.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        slot.waiting_on_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *seen += data.len() as u64;
                    slot.received.store(*seen, Ordering::Relaxed);
                    if slot.limit > 0 && *seen > slot.limit {
                        slot.too_large.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyError::TooLarge))));
                    }
                }
                slot.progress_ms.store(now_ms(), Ordering::Relaxed);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                slot.client_error.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(BodyError::Client(e)))))
            }
            None => {
                slot.progress_ms.store(now_ms(), Ordering::Relaxed);
                slot.done.store(true, Ordering::Release);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { body: Some(b), .. } => b.is_end_stream(),
            ReqBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { body: Some(b), .. } => b.size_hint(),
            ReqBody::Stream { slot, .. } => {
                match slot.body.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    Some(b) => b.size_hint(),
                    None => SizeHint::default(),
                }
            }
        }
    }
}

/// The client's request body: still streaming from the client, or read
/// whole by a plugin of the access phase (e.g. to check its digest).
pub enum ClientBody {
    /// Not read yet; it streams upstream as it arrives.
    Streamed(Incoming),
    /// Read whole; sent upstream as one chunk (taken when sent).
    Read(Option<Bytes>),
}

impl ClientBody {
    /// Reads the whole body, refusing more than `limit` bytes (0: no
    /// limit) or a client slower than `timeout`, and keeps it so it is
    /// still sent upstream. Reading again returns the same bytes.
    pub async fn read_all(&mut self, limit: u64, timeout: Duration) -> Result<Bytes, GatewayError> {
        use http_body_util::BodyExt;
        let incoming = match self {
            ClientBody::Read(b) => return Ok(b.clone().unwrap_or_default()),
            ClientBody::Streamed(i) => i,
        };
        if limit > 0 && incoming.size_hint().lower() > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        let read = async {
            let mut buf = bytes::BytesMut::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|_| {
                    GatewayError::BadRequest("the request body could not be read".into())
                })?;
                if let Ok(data) = frame.into_data() {
                    if limit > 0 && (buf.len() + data.len()) as u64 > limit {
                        return Err(GatewayError::PayloadTooLarge { limit });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(buf.freeze())
        };
        let bytes = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| GatewayError::RequestTimeout)??;
        *self = ClientBody::Read(Some(bytes.clone()));
        Ok(bytes)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Streamed(i) => Pin::new(i).poll_frame(cx),
            ClientBody::Read(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streamed(i) => i.is_end_stream(),
            ClientBody::Read(b) => b.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Streamed(i) => i.size_hint(),
            ClientBody::Read(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

// === response bodies ===

/// Body of every response the gateway sends to clients.
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A body made by the gateway.
    Full(Option<Bytes>),
    /// The upstream's body, streamed with a read idle timeout.
    Upstream {
        /// The upstream body.
        inner: Incoming,
        /// Longest pause between two chunks.
        read_timeout: Duration,
        /// Armed only when the body is waiting for data.
        sleep: Option<Pin<Box<Sleep>>>,
        /// Keeps the target counted as in flight until the body ends.
        chosen: Chosen,
        /// The HTTP/1.1 connection the body arrives on, back to its pool
        /// once the body has been read to its end.
        conn: PooledConn,
        /// The request's log, closed when this body is dropped.
        log: Option<Box<RequestLog>>,
    },
    /// A body passing through a route's plugin chain.
    Plugin(Box<crate::plugin::PluginBody>),
}

impl ProxyBody {
    /// A body made of one chunk.
    pub fn full(b: Bytes) -> Self {
        ProxyBody::Full(Some(b))
    }

    fn upstream(inner: Incoming, chosen: Chosen, mut conn: PooledConn) -> Self {
        let read_timeout = chosen.up.timeouts.read;
        // A body known to be empty (HEAD, 204, 304, `Content-Length: 0`) is
        // never polled: the exchange is already complete.
        if inner.is_end_stream() {
            conn.release();
        }
        ProxyBody::Upstream {
            inner,
            read_timeout,
            sleep: None,
            chosen,
            conn,
            log: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream body stalled for longer than the read timeout {0:?}")]
struct ReadTimeout(Duration);

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Plugin(p) => p.poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream {
                inner,
                read_timeout,
                sleep,
                chosen,
                conn,
                log,
            } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let (Some(l), Some(d)) = (log.as_deref_mut(), f.data_ref()) {
                        l.add_bytes_out(d.len() as u64);
                    }
                    if let Some(s) = sleep.as_mut() {
                        s.as_mut().reset(Instant::now() + *read_timeout);
                    }
                    // With a known length, hyper stops polling after the
                    // last chunk rather than waiting for the end.
                    if inner.is_end_stream() {
                        conn.release();
                    }
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    chosen.up.record_failure(chosen.idx, "body");
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Ready(None) => {
                    conn.release();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    let s =
                        sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*read_timeout)));
                    match s.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(Box::new(ReadTimeout(*read_timeout)))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Plugin(p) => p.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Plugin(p) => p.size_hint(),
        }
    }
}

use std::future::Future;

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
