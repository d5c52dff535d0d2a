//! The plugin pipeline: one trait with a method per request phase, a
//! per-request context, the registry of plugin types, and the compiled
//! per-route chain.
//!
//! A request on a route with plugins goes through these phases, each plugin
//! of the route's chain in priority order (highest first):
//!
//! 1. [`Plugin::access`] — auth, ACLs, limits; may answer on its own
//!    ([`Early`]), and then the upstream is never called.
//! 2. [`Plugin::upstream_request`] — rewrites of what is sent upstream.
//! 3. [`Plugin::response_headers`] — status and headers of whatever answer
//!    the client gets (the upstream's, a plugin's early one, or a gateway
//!    error), and optionally a replacement body.
//! 4. [`Plugin::response_body`] — each chunk of the body, streamed.
//! 5. [`Plugin::log`] — once the body has been sent or abandoned.
//!
//! Every phase has a no-op default, so a plugin implements only what it
//! needs. Config is parsed and validated once, when a snapshot is built
//! ([`ChainLevels`]); a route without plugins has no chain at all and its
//! requests never touch this module.
//!
//! Adding a plugin is one file in this folder plus one line in
//! [`REGISTRY`]; `docs/plugins.md` shows how.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Either;
use serde::de::DeserializeOwned;

use crate::body::{BoxError, Full};
use crate::config::{Config, PluginMap, Problems, RouteConfig};
use crate::consumer::{Consumer, Consumers};

use crate::metrics::GatewayMetrics;
use crate::stores::{BuildStores, Owner};
pub use body::PluginBody;

mod adaptive_concurrency;
mod basic_auth;
mod body;
mod compression;
mod consumer_restriction;
mod cors;
mod governance;
mod hmac_auth;
mod ip_restriction;
mod jwt_auth;
mod key_auth;
mod limit_conn;
mod limit_count;
mod limit_key;
mod limit_req;
mod overrides;
mod proxy_cache;
mod proxy_rewrite;
mod ratelimit;
mod request_size_limit;
mod response_rewrite;

pub(crate) use overrides::consumer_limits;
pub use overrides::{CONSUMER_PLUGINS, ConsumerLimits};
pub use ratelimit::ratelimit_decision;

/// The plugin types weir knows. The position in this list means nothing:
/// the run order comes from each type's `priority`.
pub static REGISTRY: &[PluginDef] = &[
    basic_auth::DEF,
    consumer_restriction::DEF,
    hmac_auth::DEF,
    jwt_auth::DEF,
    key_auth::DEF,
    response_rewrite::DEF,
    ip_restriction::DEF,
    cors::DEF,
    proxy_rewrite::DEF,
    request_size_limit::DEF,
    limit_count::DEF,
    limit_req::DEF,
    limit_conn::DEF,
    adaptive_concurrency::DEF,
    compression::DEF,
    proxy_cache::DEF,
];

/// Finds a plugin type by its config name.
pub fn lookup(name: &str) -> Option<&'static PluginDef> {
    REGISTRY.iter().find(|d| d.name == name)
}

// === the trait ===

/// One plugin instance: a validated, compiled config plus the code of its
/// phases. Instances are shared by every request of the snapshot that built
/// them, so they hold no per-request state (that goes in [`RequestCtx`]).
#[async_trait::async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// Inspect phase: every plugin of the chain sees the request head
    /// before any access phase runs, even when an earlier plugin then
    /// answers on its own (a cache hit still needs the client's
    /// `Accept-Encoding` for compression). It cannot answer or change the
    /// request.
    fn inspect(&self, _req: &RequestHead<'_>, _ctx: &mut RequestCtx) {}

    /// Access phase, before anything is sent upstream. `Err` answers the
    /// client at once with the [`Early`] response.
    ///
    /// The request URI is read-only here: path and query rewrites belong to
    /// [`Plugin::upstream_request`], after the route's prefix handling.
    async fn access(&self, _req: &mut RequestHead<'_>, _ctx: &mut RequestCtx) -> Result<(), Early> {
        Ok(())
    }

    /// Upstream request phase: the request as it will be sent (forwarding
    /// headers already added), before a target is picked. Runs once, not
    /// per retry.
    fn upstream_request(&self, _req: &mut UpstreamRequest<'_>, _ctx: &mut RequestCtx) {}

    /// Response header phase: the status and headers the client will get.
    fn response_headers(&self, _resp: &mut ResponseHead<'_>, _ctx: &mut RequestCtx) {}

    /// Whether [`Plugin::response_body`] does anything; the chain skips
    /// body filtering when no plugin wants it.
    fn filters_body(&self) -> bool {
        false
    }

    /// Response body phase: one data chunk on its way to the client. A
    /// plugin that changes the body's length must drop `Content-Length` in
    /// [`Plugin::response_headers`].
    fn response_body(&self, _chunk: &mut Bytes, _ctx: &mut RequestCtx) {}

    /// End of the response body (only when [`Plugin::filters_body`]): the
    /// upstream's body is complete. A plugin that holds bytes back (a
    /// compressor's last block) returns them here; they pass the body phase
    /// of the plugins after it. Not called when the body fails or the
    /// client goes away.
    fn response_end(&self, _ctx: &mut RequestCtx) -> Option<Bytes> {
        None
    }

    /// Log phase: the exchange is over (body sent, failed or abandoned).
    fn log(&self, _ctx: &RequestCtx, _outcome: &Outcome) {}
}

/// How a plugin type is registered: its config name, where it runs in the
/// chain, and how its config becomes an instance.
pub struct PluginDef {
    /// The key in a `plugins:` map.
    pub name: &'static str,
    /// Run order: higher runs first in every phase. The table is in
    /// `docs/plugins.md`.
    pub priority: i32,
    /// Parses and validates a config and builds the instance. Must not do
    /// network I/O or start tasks: it also runs for `weir validate`
    /// (reading a local file the config names is fine).
    pub build: BuildFn,
}

/// Turns a plugin's config into an instance, or lists what is wrong.
pub type BuildFn = fn(&serde_yaml_ng::Value, &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList>;

/// What a plugin may look at while it is built.
pub struct BuildEnv {
    consumers: Arc<Consumers>,
    settings: Arc<crate::config::Settings>,
    /// Building a consumer's own plugin (`consumers[].plugins`), not a
    /// route's.
    consumer_level: bool,
    /// The node's limit and cache state (ADR 0030).
    stores: BuildStores,
    /// Where the `plugins:` map being built is configured.
    owner: Owner,
    /// The config's `redis:` section and this node's region, for limits
    /// with `store: redis`.
    redis: Option<Arc<RedisTarget>>,
}

/// Where limits with `store: redis` count: the config's `redis:` section,
/// from this node's region.
#[derive(Debug)]
pub struct RedisTarget {
    /// The `redis:` section.
    pub settings: weir_storage::redis_store::RedisSettings,
    /// This node's region (region-scope limits count under it).
    pub region: String,
}

impl BuildEnv {
    /// The consumers of the config being built.
    pub fn consumers(&self) -> &Arc<Consumers> {
        &self.consumers
    }

    /// Process-wide settings of the config being built.
    pub fn settings(&self) -> &crate::config::Settings {
        &self.settings
    }

    /// Whether the instance is a consumer's own (which never defers to
    /// another consumer override).
    pub fn consumer_level(&self) -> bool {
        self.consumer_level
    }

    /// The node's stores: a plugin takes its counters, cache store and
    /// collapser from here, never constructs them.
    pub fn stores(&self) -> &BuildStores {
        &self.stores
    }

    /// The id a limit of plugin type `plugin` with config `config`, built
    /// at this level, keeps its state under across builds.
    pub fn limit_id(&self, plugin: &str, config: &serde_yaml_ng::Value) -> weir_limits::LimitId {
        crate::stores::limit_id(&self.owner, plugin, config)
    }

    /// The config's `redis:` section and this node's region; `None` when
    /// the config has no `redis:` section.
    pub fn redis(&self) -> Option<&RedisTarget> {
        self.redis.as_deref()
    }

    /// The same environment for the `plugins:` map of `owner`.
    fn owned_by(&self, owner: Owner) -> BuildEnv {
        BuildEnv {
            consumers: self.consumers.clone(),
            settings: self.settings.clone(),
            consumer_level: self.consumer_level,
            stores: self.stores.clone(),
            owner,
            redis: self.redis.clone(),
        }
    }
}

/// The [`RedisTarget`] of `config`, if it has a `redis:` section.
pub(crate) fn redis_target(config: &Config) -> Option<Arc<RedisTarget>> {
    let settings = config.redis.as_ref()?;
    Some(Arc::new(RedisTarget {
        settings: settings.clone(),
        region: config
            .cluster
            .as_ref()
            .map_or_else(String::new, |c| c.region.clone()),
    }))
}

/// Problems in one plugin's config: `(field, reason)` pairs, the field
/// relative to the plugin (empty for the plugin as a whole).
pub type ConfigErrorList = Vec<(String, String)>;

/// Parses a plugin's config into its typed form (`deny_unknown_fields`
/// recommended); an absent config (`key-auth: ~`) reads as an empty map.
pub fn parse_config<T: DeserializeOwned>(v: &serde_yaml_ng::Value) -> Result<T, ConfigErrorList> {
    let v = if v.is_null() {
        serde_yaml_ng::Value::Mapping(Default::default())
    } else {
        v.clone()
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![(path, e.into_inner().to_string())]
    })
}

/// A refused authentication: counted per route
/// (`weir_auth_failures{weir_route, reason}`), logged without the
/// credential, and answered with a 401 that does not say what was wrong.
pub fn auth_failure(
    ctx: &RequestCtx,
    plugin: &'static str,
    reason: &'static str,
    challenge: &HeaderValue,
) -> Early {
    crate::metrics::global().record_auth_failure(&ctx.route_id, reason);
    tracing::info!(
        route = %ctx.route_id,
        plugin,
        reason,
        client = %ctx.peer.ip(),
        request_id = ?ctx.request_id,
        "authentication failed"
    );
    Early::unauthorized(challenge.clone())
}

// === per-request data ===

/// The client request as the access phase sees it.
pub struct RequestHead<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request target as the client sent it.
    pub uri: &'a Uri,
    /// HTTP version.
    pub version: Version,
    /// Request headers; a plugin may remove credentials it consumed.
    pub headers: &'a mut HeaderMap,
    /// The request body; see [`RequestHead::read_body`].
    pub body: &'a mut crate::body::ClientBody,
    /// `settings.max_body_bytes` (0: none).
    pub body_limit: u64,
}

impl RequestHead<'_> {
    /// Reads the whole request body (once; it is still sent upstream).
    /// At most the smallest of `cap`, the route's limit set so far
    /// (`ctx.body_limit`, e.g. by `request-size-limit`) and the global
    /// `settings.max_body_bytes` is read, so a request holds no more than
    /// that in memory; a larger body gets 413, a client slower than
    /// `timeout` 408, an unreadable body 400.
    pub async fn read_body(
        &mut self,
        ctx: &RequestCtx,
        cap: u64,
        timeout: std::time::Duration,
    ) -> Result<Bytes, Early> {
        let limit = [Some(cap), ctx.body_limit, Some(self.body_limit)]
            .into_iter()
            .flatten()
            .filter(|&l| l > 0)
            .min()
            .unwrap_or(0);
        self.body.read_all(limit, timeout).await.map_err(|e| {
            let e = crate::error::GatewayError::from(e);
            Early::error(e.status(), e.code(), e.to_string())
        })
    }
}

/// The request as it will be sent upstream.
pub struct UpstreamRequest<'a> {
    /// Method sent upstream.
    pub method: &'a mut Method,
    /// Path and query sent upstream (after the route's prefix strip).
    pub path_and_query: &'a mut http::uri::PathAndQuery,
    /// Headers sent upstream (hop-by-hop headers already removed).
    pub headers: &'a mut HeaderMap,
    /// When set, the `Host` sent upstream, overriding the route's
    /// `host_header` rule.
    pub host: &'a mut Option<HeaderValue>,
}

/// The response head as the client will get it.
pub struct ResponseHead<'a> {
    /// Status code.
    pub status: &'a mut StatusCode,
    /// Response headers.
    pub headers: &'a mut HeaderMap,
    /// When set, replaces the whole body (the original one is dropped and
    /// `Content-Length` is recomputed).
    pub replace_body: &'a mut Option<Bytes>,
}

/// What the log phase learns about the finished exchange.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Status sent to the client.
    pub status: StatusCode,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    /// False when the body failed or the client went away before its end.
    pub completed: bool,
}

/// Per-request state shared by the phases of one request.
pub struct RequestCtx {
    /// Id of the matched route.
    pub route_id: Arc<str>,
    /// Id of the route's service, if any.
    pub service_id: Option<Arc<str>>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The request id sent upstream and to the client.
    pub request_id: HeaderValue,
    /// The authenticated consumer, set by an auth plugin in the access
    /// phase; later plugins read it and it is passed upstream in headers.
    pub consumer: Option<Arc<Consumer>>,
    /// A body size limit for this request, set in the access phase (e.g.
    /// by `request-size-limit`); the smaller of it and
    /// `settings.max_body_bytes` is enforced while the body streams.
    pub body_limit: Option<u64>,
    /// The route's upstream (its health scales dynamic limits); set by
    /// the proxy, `None` where there is none.
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// A typed slot for plugins to hand data to their own later phases
    /// or to each other (one value per type).
    pub ext: http::Extensions,
}

impl RequestCtx {
    /// The context for a request on `route`.
    pub fn new(
        route_id: Arc<str>,
        service_id: Option<Arc<str>>,
        peer: SocketAddr,
        request_id: HeaderValue,
    ) -> Self {
        RequestCtx {
            route_id,
            service_id,
            peer,
            request_id,
            consumer: None,
            body_limit: None,
            upstream: None,
            ext: http::Extensions::new(),
        }
    }

    /// The client's IP (the TCP peer).
    pub fn client_ip(&self) -> IpAddr {
        self.peer.ip()
    }
}

/// Put in [`RequestCtx::ext`] by a plugin that answers early but still
/// wants the request sent upstream in the background (a cache serving a
/// stale answer while it refreshes it). The background request runs the
/// upstream request, response and log phases of the route's chain with
/// these extensions as its `ext` (and the same consumer); its answer is
/// read to the end and dropped.
#[derive(Clone)]
pub struct BackgroundFetch(pub http::Extensions);

/// An answer a plugin gives instead of the upstream's.
#[derive(Debug)]
pub enum Early {
    /// A gateway error in the project's JSON error shape.
    Error {
        /// HTTP status.
        status: StatusCode,
        /// Stable machine-readable code.
        code: &'static str,
        /// Human-readable message; must not contain secrets.
        message: Cow<'static, str>,
        /// Extra headers, e.g. `WWW-Authenticate`.
        headers: HeaderMap,
    },
    /// A complete response made by the plugin.
    Response(Response<Bytes>),
}

impl Early {
    /// A JSON error answer.
    pub fn error(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Early {
        Early::Error {
            status,
            code,
            message: message.into(),
            headers: HeaderMap::new(),
        }
    }

    /// 401 with a `WWW-Authenticate` challenge. The message is the same
    /// whatever was wrong with the credential.
    pub fn unauthorized(challenge: HeaderValue) -> Early {
        let mut e = Early::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials",
        );
        e.insert_header(header::WWW_AUTHENTICATE, challenge);
        e
    }

    /// 403 for a known client that may not use this route.
    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Early {
        Early::error(StatusCode::FORBIDDEN, code, message)
    }

    /// Adds a header to the answer.
    pub fn insert_header(&mut self, name: HeaderName, value: HeaderValue) {
        match self {
            Early::Error { headers, .. } => {
                headers.insert(name, value);
            }
            Early::Response(r) => {
                r.headers_mut().insert(name, value);
            }
        }
    }

    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Early::Error { status, .. } => *status,
            Early::Response(r) => r.status(),
        }
    }

    fn into_response(self, request_id: &HeaderValue) -> Response<Full> {
        match self {
            Early::Error {
                status,
                code,
                message,
                headers,
            } => {
                let mut r = crate::error::error_response(status, code, &message, request_id);
                r.headers_mut().extend(headers);
                r
            }
            Early::Response(r) => r.map(Full::new),
        }
    }
}

// === the chain ===

struct Entry {
    name: &'static str,
    plugin: Arc<dyn Plugin>,
}

/// A route's compiled plugins, in run order.
pub struct Chain {
    entries: Box<[Entry]>,
    filters_body: bool,
}

impl Chain {
    /// Plugin names in run order (for status pages and tests).
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|e| e.name)
    }

    /// Runs the access phase; the first plugin that answers stops it.
    pub async fn access(
        &self,
        req: &mut RequestHead<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Early> {
        for e in self.entries.iter() {
            e.plugin.inspect(req, ctx);
        }
        for e in self.entries.iter() {
            e.plugin.access(req, ctx).await?;
        }
        Ok(())
    }

    /// Runs the upstream request phase.
    pub fn upstream_request(&self, req: &mut UpstreamRequest<'_>, ctx: &mut RequestCtx) {
        for e in self.entries.iter() {
            e.plugin.upstream_request(req, ctx);
        }
    }

    /// Turns an early answer into a response.
    pub fn early_response(early: Early, request_id: &HeaderValue) -> Response<Full> {
        early.into_response(request_id)
    }

    /// Runs the response header phase on `resp` and wraps its body so the
    /// body and log phases run as it streams. A plugin that replaces the
    /// body puts a [`Full`] in place of `B`.
    pub fn respond<B>(
        self: &Arc<Self>,
        resp: Response<B>,
        mut ctx: RequestCtx,
    ) -> Response<PluginBody<Either<B, Full>>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = resp.into_parts();
        let mut replace = None;
        {
            let mut head = ResponseHead {
                status: &mut parts.status,
                headers: &mut parts.headers,
                replace_body: &mut replace,
            };
            for e in self.entries.iter() {
                e.plugin.response_headers(&mut head, &mut ctx);
            }
        }
        let body = match replace {
            Some(b) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::TRANSFER_ENCODING);
                Either::Right(Full::new(b))
            }
            None => Either::Left(body),
        };
        let status = parts.status;
        Response::from_parts(parts, PluginBody::new(body, self.clone(), ctx, status))
    }
}

// === building chains ===

/// Built plugin instances of one config level, by name.
type Level = HashMap<String, (&'static PluginDef, Arc<dyn Plugin>)>;

fn build_level(map: &PluginMap, at: &str, env: &BuildEnv, p: &mut Problems) -> Level {
    let mut out = Level::new();
    for (name, value) in map {
        let here = format!("{at}.{name}");
        let Some(def) = lookup(name) else {
            let known: Vec<&str> = REGISTRY.iter().map(|d| d.name).collect();
            p.push(
                here,
                format!("unknown plugin `{name}`; known: {}", known.join(", ")),
            );
            continue;
        };
        match (def.build)(value, env) {
            Ok(plugin) => {
                out.insert(name.clone(), (def, plugin));
            }
            Err(problems) => {
                for (field, reason) in problems {
                    let path = if field.is_empty() {
                        here.clone()
                    } else {
                        format!("{here}.{field}")
                    };
                    p.push(path, reason);
                }
            }
        }
    }
    out
}

/// The plugin levels routes inherit from, built once per config: the
/// global `plugins:` map and each service's plugins, `disable_plugins` and
/// lifecycle. [`ChainLevels::route`] compiles a route's chain: the global,
/// service and route `plugins:` maps merged by name (the most specific
/// level wins), ordered by priority; `None` for a route without plugins.
/// Every problem found is reported with its path, e.g.
/// `routes[2].plugins.key-auth.header`. While none of what they are built from changes, a new route
/// is compiled against the same instances the other routes share.
pub struct ChainLevels {
    env: BuildEnv,
    global: Level,
    services: HashMap<String, ServiceLevel>,
}

struct ServiceLevel {
    plugins: Level,
    off: Vec<String>,
    lifecycle: Option<Arc<dyn Plugin>>,
    require_subscription: Option<bool>,
}

impl ChainLevels {
    /// Builds the global and service levels of `config`, reporting their
    /// problems (and those of its subscriptions) to `p`.
    pub(crate) fn build(
        config: &Config,
        consumers: &Arc<Consumers>,
        stores: &BuildStores,
        p: &mut Problems,
    ) -> ChainLevels {
        governance::validate_subscriptions(config, p);
        let env = BuildEnv {
            consumers: consumers.clone(),
            settings: Arc::new(config.settings.clone()),
            consumer_level: false,
            stores: stores.clone(),
            owner: Owner::Global,
            redis: redis_target(config),
        };
        let global = build_level(&config.plugins, "plugins", &env, p);
        let services = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let at = format!("services[{i}].plugins");
                let env = env.owned_by(Owner::Service(s.id.clone()));
                let plugins = build_level(&s.plugins, &at, &env, p);
                let off = disabled(&s.disable_plugins, &s.plugins, &format!("services[{i}]"), p)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let lifecycle = s
                    .lifecycle
                    .as_ref()
                    .and_then(|l| governance::lifecycle(l, &format!("services[{i}].lifecycle"), p));
                let level = ServiceLevel {
                    plugins,
                    off,
                    lifecycle,
                    require_subscription: s.require_subscription,
                };
                (s.id.clone(), level)
            })
            .collect();
        ChainLevels {
            env,
            global,
            services,
        }
    }

    /// Compiles the chain of route `r`, which is `routes[i]` of `config`
    /// (the config these levels were built from, or one that differs from
    /// it only in its routes and upstreams).
    pub(crate) fn route(
        &self,
        config: &Config,
        i: usize,
        r: &RouteConfig,
        p: &mut Problems,
    ) -> Option<Arc<Chain>> {
        let at = format!("routes[{i}].plugins");
        let own = build_level(
            &r.plugins,
            &at,
            &self.env.owned_by(Owner::Route(r.id.clone())),
            p,
        );
        let route_off = disabled(&r.disable_plugins, &r.plugins, &format!("routes[{i}]"), p);
        let service = r.service.as_deref().and_then(|s| self.services.get(s));
        let mut merged: HashMap<&str, (&'static PluginDef, Arc<dyn Plugin>)> = HashMap::new();
        for (name, (def, plugin)) in &self.global {
            merged.insert(name.as_str(), (*def, plugin.clone()));
        }
        if let Some(level) = service {
            for name in &level.off {
                merged.remove(name.as_str());
            }
            for (name, (def, plugin)) in &level.plugins {
                merged.insert(name.as_str(), (*def, plugin.clone()));
            }
        }
        for name in &route_off {
            merged.remove(name);
        }
        for (name, (def, plugin)) in &own {
            merged.insert(name.as_str(), (*def, plugin.clone()));
        }
        let mut list: Vec<_> = merged.into_values().collect();

        // Governance: the route's own settings, else its service's.
        let lifecycle = match &r.lifecycle {
            Some(l) => governance::lifecycle(l, &format!("routes[{i}].lifecycle"), p),
            None => service.and_then(|s| s.lifecycle.clone()),
        };
        if let Some(l) = lifecycle {
            list.push((&governance::LIFECYCLE, l));
        }
        let required = r
            .require_subscription
            .or(service.and_then(|s| s.require_subscription))
            .unwrap_or(false);
        if required {
            if !list.iter().any(|(d, _)| AUTH_PLUGINS.contains(&d.name)) {
                p.push(
                    format!("routes[{i}].require_subscription"),
                    format!(
                        "needs an auth plugin ({}) on the route, its service or globally",
                        AUTH_PLUGINS.join(", ")
                    ),
                );
            }
            list.push((
                &governance::SUBSCRIPTION,
                governance::subscription(config, &r.id, r.service.as_deref()),
            ));
        }
        chain_of(list)
    }
}

/// Checks a `disable_plugins` list (at `at`): every name must be a known
/// plugin, and not one the same level sets in its own `plugins`.
fn disabled<'c>(names: &'c [String], own: &PluginMap, at: &str, p: &mut Problems) -> Vec<&'c str> {
    let mut out = Vec::with_capacity(names.len());
    for (j, name) in names.iter().enumerate() {
        let here = format!("{at}.disable_plugins[{j}]");
        if lookup(name).is_none() {
            let known: Vec<&str> = REGISTRY.iter().map(|d| d.name).collect();
            p.push(
                here,
                format!("unknown plugin `{name}`; known: {}", known.join(", ")),
            );
        } else if own.contains_key(name) {
            p.push(
                here,
                format!("`{name}` is also set in `{at}.plugins`; remove one of the two"),
            );
        } else if out.contains(&name.as_str()) {
            p.push(here, format!("`{name}` is listed twice"));
        } else {
            out.push(name.as_str());
        }
    }
    out
}

fn chain_of(mut list: Vec<(&'static PluginDef, Arc<dyn Plugin>)>) -> Option<Arc<Chain>> {
    if list.is_empty() {
        return None;
    }
    // Ties (none among built-in types) fall back to the name, so the order
    // never depends on hash iteration.
    list.sort_by(|a, b| b.0.priority.cmp(&a.0.priority).then(a.0.name.cmp(b.0.name)));
    let filters_body = list.iter().any(|(_, p)| p.filters_body());
    Some(Arc::new(Chain {
        entries: list
            .into_iter()
            .map(|(def, plugin)| Entry {
                name: def.name,
                plugin,
            })
            .collect(),
        filters_body,
    }))
}

/// The plugins that identify a consumer.
const AUTH_PLUGINS: &[&str] = &["key-auth", "basic-auth", "jwt-auth", "hmac-auth"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_priorities_distinct() {
        let mut names = std::collections::HashSet::new();
        let mut prios = std::collections::HashSet::new();
        for d in REGISTRY
            .iter()
            .chain([&governance::LIFECYCLE, &governance::SUBSCRIPTION])
        {
            assert!(names.insert(d.name), "duplicate plugin name {}", d.name);
            assert!(
                prios.insert(d.priority),
                "duplicate priority {}",
                d.priority
            );
        }
    }

    struct Recorder(&'static str);

    #[derive(Clone)]
    struct Seen(Vec<&'static str>);

    #[async_trait::async_trait]
    impl Plugin for Recorder {
        async fn access(
            &self,
            _req: &mut RequestHead<'_>,
            ctx: &mut RequestCtx,
        ) -> Result<(), Early> {
            match ctx.ext.get_mut::<Seen>() {
                Some(s) => s.0.push(self.0),
                None => {
                    ctx.ext.insert(Seen(vec![self.0]));
                }
            }
            if self.0 == "deny" {
                return Err(Early::forbidden("denied", "no"));
            }
            Ok(())
        }
    }

    fn no_build(
        _: &serde_yaml_ng::Value,
        _: &BuildEnv,
    ) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
        Err(vec![])
    }

    static LOW: PluginDef = PluginDef {
        name: "low",
        priority: 1,
        build: no_build,
    };
    static HIGH: PluginDef = PluginDef {
        name: "high",
        priority: 100,
        build: no_build,
    };
    static DENY: PluginDef = PluginDef {
        name: "deny",
        priority: 50,
        build: no_build,
    };

    #[tokio::test]
    async fn access_runs_by_priority_and_stops_at_the_first_answer() {
        let chain = chain_of(vec![
            (&LOW, Arc::new(Recorder("low"))),
            (&DENY, Arc::new(Recorder("deny"))),
            (&HIGH, Arc::new(Recorder("high"))),
        ])
        .unwrap();
        assert_eq!(chain.names().collect::<Vec<_>>(), ["high", "deny", "low"]);
        let mut ctx = RequestCtx::new(
            "r".into(),
            None,
            "127.0.0.1:1".parse().unwrap(),
            HeaderValue::from_static("id"),
        );
        let (method, uri, mut headers) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
        let mut body = crate::body::ClientBody::Read(None);
        let mut head = RequestHead {
            method: &method,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &mut headers,
            body: &mut body,
            body_limit: 0,
        };
        let e = chain.access(&mut head, &mut ctx).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(ctx.ext.get::<Seen>().unwrap().0, ["high", "deny"]);
        assert!(chain_of(vec![]).is_none());
    }

    struct Upper(Arc<std::sync::Mutex<Option<Outcome>>>);

    impl Plugin for Upper {
        fn filters_body(&self) -> bool {
            true
        }

        fn response_body(&self, chunk: &mut Bytes, _ctx: &mut RequestCtx) {
            *chunk = Bytes::from(chunk.to_ascii_uppercase());
        }

        fn log(&self, _ctx: &RequestCtx, outcome: &Outcome) {
            *self.0.lock().unwrap() = Some(*outcome);
        }
    }

    #[tokio::test]
    async fn body_and_log_phases_see_the_whole_exchange() {
        use http_body_util::BodyExt;
        let seen = Arc::new(std::sync::Mutex::new(None));
        let chain = chain_of(vec![(&LOW, Arc::new(Upper(seen.clone())))]).unwrap();
        let ctx = RequestCtx::new(
            "r".into(),
            None,
            "127.0.0.1:1".parse().unwrap(),
            HeaderValue::from_static("id"),
        );
        let resp = Response::new(Full::new(Bytes::from_static(b"hello")));
        let resp = chain.respond(resp, ctx);
        // A filtering chain may change the length: no exact size promised.
        assert_eq!(resp.body().size_hint().exact(), None);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"HELLO");
        let outcome = seen.lock().unwrap().expect("log phase ran");
        assert_eq!(outcome.status, StatusCode::OK);
        assert_eq!(outcome.body_bytes, 5);
        assert!(outcome.completed);
    }

    /// Holds every chunk back and lets it out, with a tail, at the end.
    struct Hold;

    impl Plugin for Hold {
        fn filters_body(&self) -> bool {
            true
        }

        fn response_body(&self, chunk: &mut Bytes, ctx: &mut RequestCtx) {
            let held = ctx.ext.get_or_insert_default::<Vec<u8>>();
            held.extend_from_slice(chunk);
            *chunk = Bytes::new();
        }

        fn response_end(&self, ctx: &mut RequestCtx) -> Option<Bytes> {
            let mut held = ctx.ext.remove::<Vec<u8>>().unwrap_or_default();
            held.extend_from_slice(b"-end");
            Some(Bytes::from(held))
        }
    }

    #[tokio::test]
    async fn end_phase_bytes_pass_the_plugins_after_it() {
        use http_body_util::BodyExt;
        let seen = Arc::new(std::sync::Mutex::new(None));
        // `Hold` runs first (higher priority); its tail passes `Upper`.
        let chain = chain_of(vec![
            (&HIGH, Arc::new(Hold)),
            (&LOW, Arc::new(Upper(seen.clone()))),
        ])
        .unwrap();
        let ctx = RequestCtx::new(
            "r".into(),
            None,
            "127.0.0.1:1".parse().unwrap(),
            HeaderValue::from_static("id"),
        );
        let resp = Response::new(Full::new(Bytes::from_static(b"hello")));
        let body = chain.respond(resp, ctx).into_body();
        assert!(!body.is_end_stream(), "the end phase has not run yet");
        let body = body.collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"HELLO-END");
        let outcome = seen.lock().unwrap().expect("log phase ran");
        assert_eq!(outcome.body_bytes, 9);
        assert!(outcome.completed);
    }

    #[test]
    fn null_config_reads_as_empty_map() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct C {
            #[serde(default)]
            a: u32,
        }
        let c: C = parse_config(&serde_yaml_ng::Value::Null).unwrap();
        assert_eq!(c.a, 0);
        let bad: serde_yaml_ng::Value = serde_yaml_ng::from_str("{a: x}").unwrap();
        let e = parse_config::<C>(&bad).err().unwrap();
        assert_eq!(e[0].0, "a");
    }
}
