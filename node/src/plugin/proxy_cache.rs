//! `proxy-cache`: answers from the node's response cache (RFC 9111 rules
//! for a shared cache), stores cacheable answers while they stream to the
//! client, collapses concurrent misses, revalidates with validators and
//! serves stale answers where the upstream allows it. See ADR 0020.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Outcome, Plugin, PluginDef, RequestCtx, RequestHead,
    ResponseHead, UpstreamRequest, parse_config,
};
use crate::metrics::{CacheStatus, GatewayMetrics};
use weir_cache::policy::{self, Overrides, Use};
use weir_cache::{self as cache, CacheStore, Cached, CachedResponse, Collapse, Flight, collapse};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "proxy-cache",
    priority: 1085,
    build,
};

/// The header telling the client what the cache did.
pub const X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// Config of `proxy-cache`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// What makes two requests share an entry, rendered in this order:
    /// `method`, `host`, `path`, `query`, `header:<name>`.
    #[serde(default = "default_key")]
    key: Vec<String>,
    /// Freshness of a cacheable response that gives none itself.
    #[serde(default, with = "crate::config::duration")]
    ttl: Duration,
    /// Freshness that replaces the upstream's.
    #[serde(default, with = "crate::config::duration")]
    force_ttl: Option<Duration>,
    /// Largest body stored; larger ones stream on uncached.
    #[serde(default = "default_max_object_bytes")]
    max_object_bytes: u64,
    /// How long a miss waits for a concurrent fetch of the same key
    /// before going upstream itself.
    #[serde(default = "default_collapse_timeout", with = "crate::config::duration")]
    collapse_timeout: Duration,
}

fn default_key() -> Vec<String> {
    ["method", "host", "path", "query"]
        .map(String::from)
        .to_vec()
}

fn default_max_object_bytes() -> u64 {
    1024 * 1024
}

fn default_collapse_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Method,
    Host,
    Path,
    Query,
    Header(HeaderName),
}

struct ProxyCache {
    key: Vec<KeyPart>,
    rules: Overrides,
    max_object_bytes: u64,
    collapse_timeout: Duration,
    store: Arc<dyn CacheStore>,
    collapse: Arc<dyn Collapse>,
}

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs: ConfigErrorList = Vec::new();
    let mut key = Vec::new();
    for (i, k) in raw.key.iter().enumerate() {
        let part = match k.as_str() {
            "method" => KeyPart::Method,
            "host" => KeyPart::Host,
            "path" => KeyPart::Path,
            "query" => KeyPart::Query,
            other => match other.strip_prefix("header:") {
                Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => KeyPart::Header(n),
                    Err(_) => {
                        errs.push((format!("key[{i}]"), format!("`{h}` is not a header name")));
                        continue;
                    }
                },
                None => {
                    errs.push((
                        format!("key[{i}]"),
                        format!(
                            "unknown key part `{other}`; use method, host, path, query or header:<name>"
                        ),
                    ));
                    continue;
                }
            },
        };
        if key.contains(&part) {
            errs.push((format!("key[{i}]"), format!("`{k}` is listed twice")));
        }
        key.push(part);
    }
    if raw.key.is_empty() {
        errs.push(("key".into(), "needs at least one part".into()));
    }
    if raw.max_object_bytes == 0 {
        errs.push(("max_object_bytes".into(), "must be at least 1".into()));
    }
    let cap = env.settings().cache_max_bytes;
    if raw.max_object_bytes > cap {
        errs.push((
            "max_object_bytes".into(),
            format!("is larger than settings.cache_max_bytes ({cap})"),
        ));
    }
    if raw.force_ttl.is_some_and(|t| t.is_zero()) {
        errs.push(("force_ttl".into(), "must be more than 0s".into()));
    }
    if raw.collapse_timeout > Duration::from_secs(60) {
        errs.push(("collapse_timeout".into(), "must be at most 60s".into()));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Arc::new(ProxyCache {
        key,
        rules: Overrides {
            ttl: raw.ttl,
            force_ttl: raw.force_ttl,
        },
        max_object_bytes: raw.max_object_bytes,
        collapse_timeout: raw.collapse_timeout,
        store: env.stores().cache_store(cap),
        collapse: env.stores().collapse(),
    }))
}

// === per-request state ===

/// What the cache did for this request, for the log phase.
#[derive(Clone, Copy)]
struct Mark(CacheStatus);

/// The request is being fetched from the upstream.
#[derive(Clone)]
pub(crate) struct Fetch {
    /// Primary key.
    key: Arc<str>,
    /// Request headers (for `Vary` and the storing rules).
    req_headers: Arc<HeaderMap>,
    /// When the lookup happened (≈ when the request went upstream).
    request_time: SystemTime,
    /// The stored response being revalidated or replaced.
    stale: Option<Arc<CachedResponse>>,
    /// Conditional headers from `stale` are sent upstream.
    revalidating: bool,
    /// MISS or EXPIRED.
    status: CacheStatus,
    /// A HEAD request: looked up, never stored.
    head: bool,
    /// Holds off concurrent misses on the key until dropped.
    leader: Option<Arc<collapse::Leader>>,
}

/// A response being copied into the cache as it streams.
#[derive(Clone)]
struct Fill {
    key: String,
    vary: Option<(Arc<str>, Arc<[HeaderName]>)>,
    status: StatusCode,
    headers: HeaderMap,
    freshness: policy::Freshness,
    vary_values: Vec<(HeaderName, Option<HeaderValue>)>,
    chunks: Vec<Bytes>,
    size: u64,
    /// The upstream's `Content-Length`: once that many bytes passed, the
    /// body is complete (the server may never poll for its end).
    expected: Option<u64>,
    _leader: Option<Arc<collapse::Leader>>,
}

// === impl ProxyCache ===

impl ProxyCache {
    fn key(&self, req: &RequestHead<'_>) -> String {
        let mut k = String::with_capacity(64);
        for part in &self.key {
            match part {
                KeyPart::Method => {
                    // HEAD is answered from GET's entry.
                    k.push_str(if *req.method == Method::HEAD {
                        "GET"
                    } else {
                        req.method.as_str()
                    });
                    k.push(' ');
                }
                KeyPart::Host => {
                    let host = req
                        .uri
                        .authority()
                        .map(|a| a.as_str())
                        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
                        .unwrap_or("");
                    for c in host.chars() {
                        k.push(c.to_ascii_lowercase());
                    }
                }
                KeyPart::Path => k.push_str(req.uri.path()),
                KeyPart::Query => {
                    if let Some(q) = req.uri.query() {
                        k.push('?');
                        k.push_str(q);
                    }
                }
                KeyPart::Header(n) => {
                    k.push(' ');
                    k.push_str(n.as_str());
                    k.push('=');
                    if let Some(v) = req.headers.get(n) {
                        k.push_str(&String::from_utf8_lossy(v.as_bytes()));
                    }
                }
            }
        }
        k
    }

    /// The stored response for this request (following `Vary`).
    async fn lookup(&self, key: &str, req: &HeaderMap) -> Option<Arc<CachedResponse>> {
        match self.store.get(key).await? {
            Cached::Response(r) => Some(r),
            Cached::Variants(names) => {
                match self
                    .store
                    .get(&cache::variant_key(key, &names, req))
                    .await?
                {
                    Cached::Response(r) => Some(r),
                    Cached::Variants(_) => None,
                }
            }
        }
    }
}

/// The stored response as an answer: shared body, fresh `Age`.
fn serve(
    e: &CachedResponse,
    req: &HeaderMap,
    head: bool,
    status: CacheStatus,
    now: SystemTime,
) -> Response<Bytes> {
    if not_modified(e, req) {
        let mut r = Response::new(Bytes::new());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let h = r.headers_mut();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in e.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        decorate(h, e, status, now);
        return r;
    }
    let mut r = Response::new(if head { Bytes::new() } else { e.body.clone() });
    *r.status_mut() = e.status;
    *r.headers_mut() = e.headers.clone();
    decorate(r.headers_mut(), e, status, now);
    r
}

fn decorate(h: &mut HeaderMap, e: &CachedResponse, status: CacheStatus, now: SystemTime) {
    h.insert(
        header::AGE,
        HeaderValue::from(e.freshness.age(now).as_secs()),
    );
    h.insert(X_CACHE_STATUS, status_value(status));
}

fn status_value(s: CacheStatus) -> HeaderValue {
    HeaderValue::from_static(match s {
        CacheStatus::Hit => "HIT",
        CacheStatus::Miss => "MISS",
        CacheStatus::Expired => "EXPIRED",
        CacheStatus::Stale => "STALE",
        CacheStatus::Revalidated => "REVALIDATED",
        CacheStatus::Bypass => "BYPASS",
    })
}

/// Whether the client's conditional request matches the stored response
/// (RFC 9110 §13.1.2 weak comparison for `If-None-Match`; `If-Modified-Since`
/// only without it).
fn not_modified(e: &CachedResponse, req: &HeaderMap) -> bool {
    if !matches!(e.status, StatusCode::OK) {
        return false;
    }
    if req.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = e.headers.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let mine = weak(etag);
        return req
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || weak(t) == mine);
    }
    let since = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = e
        .headers
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

const CONDITIONALS: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

#[async_trait::async_trait]
impl Plugin for ProxyCache {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let head = *req.method == Method::HEAD;
        let rules = policy::request_rules(req.headers);
        if !(head || *req.method == Method::GET)
            || rules.no_store
            || req.headers.contains_key(header::RANGE)
        {
            ctx.ext.insert(Mark(CacheStatus::Bypass));
            return Ok(());
        }
        let key: Arc<str> = self.key(req).into();
        let now = SystemTime::now();
        let mut found = self.lookup(&key, req.headers).await;
        let mut leader = None;
        if let Some(e) = &found {
            match policy::usable(&e.freshness, &rules, now) {
                Use::Fresh => {
                    ctx.ext.insert(Mark(CacheStatus::Hit));
                    return Err(Early::Response(serve(
                        e,
                        req.headers,
                        head,
                        CacheStatus::Hit,
                        now,
                    )));
                }
                Use::StaleWhileRevalidate => {
                    // One background refresh per key; the others are
                    // answered stale while it runs.
                    if let Some(l) = self.collapse.try_lead(&key) {
                        let mut ext = http::Extensions::new();
                        ext.insert(Fetch {
                            key: key.clone(),
                            req_headers: Arc::new(req.headers.clone()),
                            request_time: now,
                            stale: Some(e.clone()),
                            revalidating: e.has_validator(),
                            status: CacheStatus::Expired,
                            head: false,
                            leader: Some(Arc::new(l)),
                        });
                        ctx.ext.insert(super::BackgroundFetch(ext));
                    }
                    ctx.ext.insert(Mark(CacheStatus::Stale));
                    return Err(Early::Response(serve(
                        e,
                        req.headers,
                        head,
                        CacheStatus::Stale,
                        now,
                    )));
                }
                Use::Revalidate => {}
            }
        }
        if !head {
            match self.collapse.join(&key).await {
                Flight::Lead(l) => leader = Some(Arc::new(l)),
                Flight::Wait(rx) => {
                    if self.collapse.wait(rx, self.collapse_timeout).await {
                        found = self.lookup(&key, req.headers).await;
                        let now = SystemTime::now();
                        if let Some(e) = &found
                            && policy::usable(&e.freshness, &rules, now) == Use::Fresh
                        {
                            ctx.ext.insert(Mark(CacheStatus::Hit));
                            return Err(Early::Response(serve(
                                e,
                                req.headers,
                                head,
                                CacheStatus::Hit,
                                now,
                            )));
                        }
                    }
                    // Timed out, or the leader stored nothing usable: go
                    // upstream without holding others up.
                }
            }
        }
        let status = if found.is_some() {
            CacheStatus::Expired
        } else {
            CacheStatus::Miss
        };
        ctx.ext.insert(Mark(status));
        ctx.ext.insert(Fetch {
            key,
            req_headers: Arc::new(req.headers.clone()),
            request_time: now,
            revalidating: found.as_ref().is_some_and(|e| e.has_validator()),
            stale: found,
            status,
            head,
            leader,
        });
        Ok(())
    }

    fn upstream_request(&self, req: &mut UpstreamRequest<'_>, ctx: &mut RequestCtx) {
        let Some(f) = ctx.ext.get::<Fetch>() else {
            return;
        };
        // The cache wants a whole answer it can store; it answers the
        // client's own conditions itself.
        for h in &CONDITIONALS {
            req.headers.remove(h);
        }
        if let Some(e) = f.stale.as_ref().filter(|_| f.revalidating) {
            if let Some(v) = e.headers.get(header::ETAG) {
                req.headers.insert(header::IF_NONE_MATCH, v.clone());
            }
            if let Some(v) = e.headers.get(header::LAST_MODIFIED) {
                req.headers.insert(header::IF_MODIFIED_SINCE, v.clone());
            }
        }
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        if let Some(Mark(CacheStatus::Bypass)) = ctx.ext.get::<Mark>() {
            resp.headers
                .insert(X_CACHE_STATUS, status_value(CacheStatus::Bypass));
            return;
        }
        let Some(f) = ctx.ext.remove::<Fetch>() else {
            // Answered by the cache itself, or by a plugin before it.
            return;
        };
        let now = SystemTime::now();
        let status = *resp.status;
        if let Some(e) = &f.stale {
            if f.revalidating && status == StatusCode::NOT_MODIFIED {
                let refreshed = self.refresh(&f, e, resp.headers, now);
                let e = refreshed.as_ref().unwrap_or(e);
                let answer = serve(e, &f.req_headers, f.head, CacheStatus::Revalidated, now);
                let (parts, body) = answer.into_parts();
                *resp.status = parts.status;
                *resp.headers = parts.headers;
                *resp.replace_body = Some(body);
                ctx.ext.insert(Mark(CacheStatus::Revalidated));
                return;
            }
            if status.is_server_error() && policy::stale_if_error(&e.freshness, now) {
                let answer = serve(e, &f.req_headers, f.head, CacheStatus::Stale, now);
                let (parts, body) = answer.into_parts();
                *resp.status = parts.status;
                *resp.headers = parts.headers;
                *resp.replace_body = Some(body);
                ctx.ext.insert(Mark(CacheStatus::Stale));
                return;
            }
        }
        resp.headers.insert(X_CACHE_STATUS, status_value(f.status));
        if f.head {
            return;
        }
        let expected = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = expected.is_some_and(|n| n > self.max_object_bytes);
        if too_large {
            return;
        }
        let Ok(freshness) = policy::storable(
            &Method::GET,
            &f.req_headers,
            status,
            resp.headers,
            f.request_time,
            now,
            &self.rules,
        ) else {
            return;
        };
        let Some(names) = policy::vary_names(resp.headers) else {
            return;
        };
        let mut headers = resp.headers.clone();
        headers.remove(X_CACHE_STATUS);
        headers.remove(header::AGE);
        let (key, vary) = if names.is_empty() {
            (f.key.to_string(), None)
        } else {
            let names: Arc<[HeaderName]> = names.into();
            (
                cache::variant_key(&f.key, &names, &f.req_headers),
                Some((f.key.clone(), names)),
            )
        };
        let vary_values = vary
            .as_ref()
            .map(|(_, names)| {
                names
                    .iter()
                    .map(|n| (n.clone(), f.req_headers.get(n).cloned()))
                    .collect()
            })
            .unwrap_or_default();
        ctx.ext.insert(Fill {
            key,
            vary,
            status,
            headers,
            freshness,
            vary_values,
            chunks: Vec::new(),
            size: 0,
            expected,
            _leader: f.leader,
        });
    }

    fn filters_body(&self) -> bool {
        true
    }

    fn response_body(&self, chunk: &mut Bytes, ctx: &mut RequestCtx) {
        let Some(fill) = ctx.ext.get_mut::<Fill>() else {
            return;
        };
        fill.size += chunk.len() as u64;
        if fill.size > self.max_object_bytes {
            // Too large to keep: it streams on uncached.
            ctx.ext.remove::<Fill>();
            return;
        }
        if !chunk.is_empty() {
            fill.chunks.push(chunk.clone());
        }
        if fill.expected == Some(fill.size)
            && let Some(fill) = ctx.ext.remove::<Fill>()
        {
            self.commit(fill);
        }
    }

    fn response_end(&self, ctx: &mut RequestCtx) -> Option<Bytes> {
        let fill = ctx.ext.remove::<Fill>()?;
        if fill.expected.is_none_or(|n| n == fill.size) {
            self.commit(fill);
        }
        None
    }

    fn log(&self, ctx: &RequestCtx, outcome: &Outcome) {
        if let Some(Mark(s)) = ctx.ext.get::<Mark>() {
            if let Some(slot) = ctx.ext.get::<crate::telemetry::CacheSlot>() {
                slot.set(*s);
            }
            crate::metrics::global().record_cache(&ctx.route_id, *s, outcome.body_bytes);
        }
    }
}

impl ProxyCache {
    /// Stores a completely received body. The leader's hold ends when
    /// `fill` is dropped here: waiters look again and find the entry.
    fn commit(&self, fill: Fill) {
        let body = match fill.chunks.len() {
            0 => Bytes::new(),
            1 => fill.chunks[0].clone(),
            _ => {
                let mut b = BytesMut::with_capacity(fill.size as usize);
                for c in &fill.chunks {
                    b.extend_from_slice(c);
                }
                b.freeze()
            }
        };
        let mut headers = fill.headers;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let entry = CachedResponse {
            status: fill.status,
            headers,
            body,
            freshness: fill.freshness,
            vary: fill.vary_values,
        };
        if let Some((primary, names)) = fill.vary {
            self.store.insert(&primary, Cached::Variants(names));
        }
        self.store
            .insert(&fill.key, Cached::Response(Arc::new(entry)));
    }
}

impl ProxyCache {
    /// A 304 refreshes the stored response: its headers update the stored
    /// ones (RFC 9111 §4.3.4) and its freshness starts over.
    fn refresh(
        &self,
        f: &Fetch,
        e: &Arc<CachedResponse>,
        not_modified: &HeaderMap,
        now: SystemTime,
    ) -> Option<Arc<CachedResponse>> {
        let mut headers = e.headers.clone();
        for name in not_modified.keys() {
            if matches!(
                *name,
                header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONTENT_ENCODING
            ) || *name == X_CACHE_STATUS
            {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        headers.remove(header::AGE);
        if let Some(a) = not_modified.get(header::AGE) {
            headers.insert(header::AGE, a.clone());
        }
        let freshness = policy::storable(
            &Method::GET,
            &f.req_headers,
            e.status,
            &headers,
            f.request_time,
            now,
            &self.rules,
        )
        .ok()?;
        headers.remove(header::AGE);
        let entry = Arc::new(CachedResponse {
            status: e.status,
            headers,
            body: e.body.clone(),
            freshness,
            vary: e.vary.clone(),
        });
        let key = if e.vary.is_empty() {
            f.key.to_string()
        } else {
            let names: Vec<HeaderName> = e.vary.iter().map(|(n, _)| n.clone()).collect();
            cache::variant_key(&f.key, &names, &f.req_headers)
        };
        self.store.insert(&key, Cached::Response(entry.clone()));
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_yaml(yaml: &str) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
        let env = BuildEnv {
            consumers: Arc::default(),
            settings: Arc::new(crate::config::Settings {
                cache_max_bytes: 10_000_000,
                ..Default::default()
            }),
            consumer_level: false,
            stores: crate::stores::BuildStores::scratch(),
            owner: crate::stores::Owner::Global,
            redis: None,
        };
        build(&serde_yaml_ng::from_str(yaml).unwrap(), &env)
    }

    #[test]
    fn config_errors_name_the_field() {
        assert!(build_yaml("~").is_ok());
        assert!(
            build_yaml("{key: [method, path, 'header:accept-language'], ttl: 30s, force_ttl: 1m}")
                .is_ok()
        );
        let cases = [
            ("{key: [method, colour]}", "key[1]"),
            ("{key: [path, path]}", "key[1]"),
            ("{key: ['header:bad header']}", "key[0]"),
            ("{key: []}", "key"),
            ("{max_object_bytes: 0}", "max_object_bytes"),
            ("{max_object_bytes: 20000000}", "max_object_bytes"),
            ("{force_ttl: 0s}", "force_ttl"),
            ("{collapse_timeout: 2m}", "collapse_timeout"),
            ("{ttl: soon}", "ttl"),
            ("{colour: red}", "colour"),
        ];
        for (yaml, field) in cases {
            let errs = build_yaml(yaml)
                .err()
                .unwrap_or_else(|| panic!("{yaml} accepted"));
            assert_eq!(errs[0].0, field, "{yaml}: {errs:?}");
        }
    }
}
