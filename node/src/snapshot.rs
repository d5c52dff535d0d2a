//! The compiled, immutable view of a config that the data path reads, and
//! the one function that makes it.
//!
//! [`compile`] validates and compiles a config in one pass and returns
//! every problem with its path. `weir validate`, the file reload, the admin
//! preview, the store's validator and the store follower all call it, and
//! the snapshot it returns is the one that gets served: nothing compiles
//! the same config twice.
//!
//! A compile reuses what did not change since the last one (the
//! [`Sources`] a snapshot keeps): a route whose config, service and plugin
//! environment are unchanged keeps its compiled matcher, its plugin chain
//! (with the plugins' state, such as limit counters) and its route entry;
//! an upstream whose config is unchanged keeps its balancer. So a write of
//! one route out of thousands compiles one route and re-indexes the table.
//!
//! A config change publishes a whole new [`Snapshot`] with `arc_swap`;
//! requests in flight keep the `Arc` of the snapshot they started on and
//! finish on it. Nothing here is parsed or validated per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};

use crate::config::{
    Config, ConfigErrors, ConsumerConfig, HostHeader, PluginMap, Problems, RouteConfig,
    ServiceConfig, Settings, SubscriptionConfig, UpstreamConfig,
};
use crate::consumer::Consumers;
use crate::plugin::{Chain, ChainLevels};
use crate::router::{Matcher, RegexCache, Router};
use crate::stores::{BuildStores, Stores};
use crate::telemetry::Telemetry;
use crate::upstream::{Pools, Upstream};

/// What a matched route resolves to.
pub struct Route {
    /// Route id.
    pub id: Arc<str>,
    /// Service id, if the route uses one.
    pub service: Option<Arc<str>>,
    /// Where requests go.
    pub upstream: Arc<Upstream>,
    /// `Host` header sent upstream.
    pub host_header: HostHeaderRt,
    /// The route's path templates as configured, for `http.route`.
    pub paths: Box<[Arc<str>]>,
    /// The compiled plugin chain; `None` when the route has no plugins.
    pub plugins: Option<Arc<Chain>>,
    /// What `%2F` and `%5C` in the request path do on this route.
    pub escaped_slashes: crate::config::EscapedSlashes,
}

/// Compiled `Host` rule.
pub enum HostHeaderRt {
    /// The client's Host.
    Pass,
    /// The chosen target's address.
    Target,
    /// A fixed value.
    Rewrite(HeaderValue),
}

/// One immutable configuration, ready for the data path.
pub struct Snapshot {
    /// The route table.
    pub router: Router<Arc<Route>>,
    /// Upstreams by id.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Process-wide settings.
    pub settings: Settings,
    /// The `observability:` section it was built from (the sinks are
    /// started once; a change takes a restart).
    pub observability: weir_observability::config::ObservabilityConfig,
    /// `Via` value, pre-built.
    pub via: Option<HeaderValue>,
    /// The consumers, with their credential indexes.
    pub consumers: Arc<Consumers>,
    /// Header naming the authenticated consumer upstream.
    pub consumer_name_header: Option<HeaderName>,
    /// Header listing the authenticated consumer's groups upstream.
    pub consumer_groups_header: Option<HeaderName>,
    /// Counts the snapshots published by this process (1 = the first);
    /// 0 until this one is published.
    generation: AtomicU64,
    /// When it was built.
    pub built_at: SystemTime,
    /// What it was compiled from, for the next compile to reuse.
    sources: Sources,
}

impl Snapshot {
    /// Counts the snapshots published by this process (1 = the first).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

// === sources: what the next compile may reuse ===

/// The inputs of a compiled snapshot, kept with it so the next compile
/// reuses every part whose inputs are equal.
#[derive(Default)]
struct Sources {
    /// Region and zone the upstreams were built for.
    locality: (String, String),
    upstreams: HashMap<String, Arc<UpstreamSource>>,
    plugins: Option<Arc<PluginSource>>,
    routes: foldhash::HashSet<ById>,
}

struct UpstreamSource {
    config: UpstreamConfig,
    built: Arc<Upstream>,
}

/// Everything a plugin chain may depend on besides the route itself: when
/// any of it changes, every chain is rebuilt.
struct PluginSource {
    global: PluginMap,
    services: Vec<ServiceConfig>,
    consumer_configs: Vec<ConsumerConfig>,
    subscriptions: Vec<SubscriptionConfig>,
    settings: Settings,
    consumers: Arc<Consumers>,
    levels: ChainLevels,
}

impl PluginSource {
    fn same_inputs(&self, c: &Config) -> bool {
        self.global == c.plugins
            && self.services == c.services
            && self.consumer_configs == c.consumers
            && self.subscriptions == c.subscriptions
            && self.settings == c.settings
    }
}

/// A route's source, found by the route's id (the id is not stored twice).
struct ById(Arc<RouteSource>);

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.route.id
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.route.id == other.0.route.id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.route.id.hash(h)
    }
}

struct RouteSource {
    config: Arc<RouteConfig>,
    /// The Host rule in effect, the route's own or its service's.
    host_header: Option<HostHeader>,
    matcher: Matcher,
    route: Arc<Route>,
}

// === the one compile ===

/// Validates `config` and compiles it into a snapshot, reusing from `prev`
/// (the last snapshot this process compiled, served or not) every part
/// whose inputs did not change. Returns every problem found, each with its
/// path (`routes[3].paths[0]`), or the snapshot. `pools` provides upstream
/// connection pools and `stores` the plugins' limit and cache state;
/// compiling creates pools and stores for new targets and limits but never
/// drops any (that happens when a snapshot is published).
pub fn compile(
    config: &Config,
    pools: &Pools,
    stores: &BuildStores,
    prev: Option<&Snapshot>,
) -> Result<Snapshot, ConfigErrors> {
    let mut p = Problems::default();
    let upstream_ok = config.check(&mut p);
    let (region, zone) = config
        .cluster
        .as_ref()
        .map_or(("", ""), |c| (c.region.as_str(), c.zone.as_str()));
    let prev_snapshot = prev;
    let prev = prev.map(|s| &s.sources);
    let same_locality = prev.is_some_and(|s| s.locality.0 == region && s.locality.1 == zone);

    // Upstreams: an unchanged config keeps its built upstream.
    let mut upstreams = HashMap::with_capacity(config.upstreams.len());
    let mut upstream_sources = HashMap::with_capacity(config.upstreams.len());
    for (u, ok) in config.upstreams.iter().zip(&upstream_ok) {
        if !ok {
            continue;
        }
        let reused = prev
            .filter(|_| same_locality)
            .and_then(|s| s.upstreams.get(&u.id))
            .filter(|s| s.config == *u)
            .cloned();
        let source = match reused {
            Some(s) => s,
            None => match pools.upstream(u, region, zone) {
                Ok(built) => Arc::new(UpstreamSource {
                    config: u.clone(),
                    built: Arc::new(built),
                }),
                Err(e) => {
                    p.0.extend(e.0);
                    continue;
                }
            },
        };
        upstreams.insert(u.id.clone(), source.built.clone());
        upstream_sources.insert(u.id.clone(), source);
    }

    // Routes: matchers first (they are the routes' validation), reused
    // while the route's config is unchanged.
    let services: foldhash::HashMap<&str, &ServiceConfig> =
        config.services.iter().map(|s| (s.id.as_str(), s)).collect();
    let upstream_ids: foldhash::HashSet<&str> =
        config.upstreams.iter().map(|u| u.id.as_str()).collect();
    let mut regexes = RegexCache::default();
    let mut matchers = Vec::with_capacity(config.routes.len());
    let mut route_ids =
        foldhash::HashSet::with_capacity_and_hasher(config.routes.len(), Default::default());
    for (i, r) in config.routes.iter().enumerate() {
        let old = prev
            .and_then(|s| s.routes.get(r.id.as_str()))
            .map(|s| &s.0)
            .filter(|s| Arc::ptr_eq(&s.config, r) || *s.config == **r);
        if old.is_none() {
            crate::config::check_id(&mut p, &format!("routes[{i}]"), &r.id);
        }
        if !route_ids.insert(r.id.as_str()) {
            p.push(
                format!("routes[{i}].id"),
                format!("duplicate route id `{}`", r.id),
            );
        }
        check_route_refs(&services, &upstream_ids, i, r, &mut p);
        if old.is_none()
            && let Some(h) = &r.host_header
        {
            crate::config::check_host_header(&mut p, &format!("routes[{i}].host_header"), h);
        }
        let matcher = match old {
            Some(old) => Some(old.matcher.clone()),
            None => Matcher::compile(r, &format!("routes[{i}]"), &mut p, &mut regexes),
        };
        matchers.push((old, matcher));
    }

    // Consumers and the plugin levels: rebuilt when any of their inputs
    // changed, in which case every chain is rebuilt too.
    let reused_plugins = prev
        .and_then(|s| s.plugins.as_ref())
        .filter(|s| s.same_inputs(config))
        .cloned();
    let plugins = match reused_plugins {
        Some(s) => s,
        None => {
            let consumers = match Consumers::build(config, stores) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    p.0.extend(e.0);
                    Arc::new(Consumers::default())
                }
            };
            let levels = ChainLevels::build(config, &consumers, stores, &mut p);
            Arc::new(PluginSource {
                global: config.plugins.clone(),
                services: config.services.clone(),
                consumer_configs: config.consumers.clone(),
                subscriptions: config.subscriptions.clone(),
                settings: config.settings.clone(),
                consumers,
                levels,
            })
        }
    };
    let plugins_reused = prev
        .and_then(|s| s.plugins.as_ref())
        .is_some_and(|s| Arc::ptr_eq(s, &plugins));

    // Route entries: reused whole while the route, its upstream and its
    // chain are unchanged.
    let upstream_by_id: foldhash::HashMap<&str, &Arc<Upstream>> =
        upstreams.iter().map(|(id, u)| (id.as_str(), u)).collect();
    let mut table = Vec::with_capacity(config.routes.len());
    // The key's hash and equality read only the route id, which never
    // changes; the interior mutability clippy sees is in compiled regexes.
    #[allow(clippy::mutable_key_type)]
    let mut route_sources =
        foldhash::HashSet::with_capacity_and_hasher(config.routes.len(), Default::default());
    for (i, (r, (old, matcher))) in config.routes.iter().zip(matchers).enumerate() {
        let upstream_id = r.upstream.as_deref().or_else(|| {
            r.service
                .as_deref()
                .and_then(|s| services.get(s))
                .map(|s| s.upstream.as_str())
        });
        let upstream = upstream_id.and_then(|u| upstream_by_id.get(u).copied());
        // An unchanged route whose upstream, chain and Host rule are the
        // ones it was built with is reused whole. (A route without plugins
        // has no chain to show that its service changed: the Host rule it
        // may inherit is compared on its own.)
        let whole = old.filter(|old| {
            plugins_reused
                && upstream.is_some_and(|u| Arc::ptr_eq(&old.route.upstream, u))
                && old.host_header.as_ref() == host_header_of(r, &services)
        });
        if let (Some(old), Some(matcher)) = (whole, matcher.clone()) {
            table.push((matcher, old.route.clone()));
            route_sources.insert(ById(old.clone()));
            continue;
        }
        let chain = match old {
            Some(old) if plugins_reused => old.route.plugins.clone(),
            _ => plugins.levels.route(config, i, r, &mut p),
        };
        let (Some(matcher), Some(upstream)) = (matcher, upstream) else {
            continue;
        };
        let route = match old {
            Some(old)
                if Arc::ptr_eq(&old.route.upstream, upstream)
                    && same_chain(&old.route.plugins, &chain)
                    && old.host_header.as_ref() == host_header_of(r, &services) =>
            {
                old.route.clone()
            }
            _ => match route_entry(r, &services, upstream, chain, i) {
                Ok(route) => Arc::new(route),
                Err(e) => {
                    p.0.extend(e.0);
                    continue;
                }
            },
        };
        let source = match old {
            Some(old) if Arc::ptr_eq(&old.route, &route) => old.clone(),
            _ => Arc::new(RouteSource {
                config: r.clone(),
                host_header: host_header_of(r, &services).cloned(),
                matcher: matcher.clone(),
                route: route.clone(),
            }),
        };
        route_sources.insert(ById(source));
        table.push((matcher, route));
    }
    if !p.0.is_empty() {
        return Err(ConfigErrors(p.0));
    }
    let router = match prev_snapshot {
        Some(prev) => Router::update(&prev.router, table)?,
        None => Router::from_compiled(table)?,
    };
    let via = if config.settings.via.is_empty() {
        None
    } else {
        HeaderValue::from_str(&config.settings.via).ok()
    };
    let header = |name: &str| {
        if name.is_empty() {
            None
        } else {
            HeaderName::from_bytes(name.as_bytes()).ok()
        }
    };
    Ok(Snapshot {
        router,
        upstreams,
        settings: config.settings.clone(),
        observability: config.observability.clone(),
        via,
        consumers: plugins.consumers.clone(),
        consumer_name_header: header(&config.settings.consumer_headers.name),
        consumer_groups_header: header(&config.settings.consumer_headers.groups),
        generation: AtomicU64::new(0),
        built_at: SystemTime::now(),
        sources: Sources {
            locality: (region.to_string(), zone.to_string()),
            upstreams: upstream_sources,
            plugins: Some(plugins),
            routes: route_sources,
        },
    })
}

/// Validates `config` as [`compile`] does, building nothing that lasts
/// (the pools and stores it makes are its own).
pub fn validate(config: &Config) -> Result<(), ConfigErrors> {
    compile(config, &Pools::default(), &BuildStores::scratch(), None).map(|_| ())
}

/// That the service and upstream a route names exist (the objects may
/// change while the route does not, so this runs for every route).
fn check_route_refs(
    services: &foldhash::HashMap<&str, &ServiceConfig>,
    upstreams: &foldhash::HashSet<&str>,
    i: usize,
    r: &RouteConfig,
    p: &mut Problems,
) {
    match (&r.service, &r.upstream) {
        (None, None) => p.push(
            format!("routes[{i}]"),
            "a route needs `service` or `upstream`",
        ),
        (Some(s), _) if !services.contains_key(s.as_str()) => p.push(
            format!("routes[{i}].service"),
            format!("no service with id `{s}`"),
        ),
        _ => {}
    }
    if let Some(u) = &r.upstream
        && !upstreams.contains(u.as_str())
    {
        p.push(
            format!("routes[{i}].upstream"),
            format!("no upstream with id `{u}`"),
        );
    }
}

fn host_header_of<'c>(
    r: &'c RouteConfig,
    services: &foldhash::HashMap<&str, &'c ServiceConfig>,
) -> Option<&'c HostHeader> {
    r.host_header.as_ref().or_else(|| {
        r.service
            .as_deref()
            .and_then(|s| services.get(s))
            .and_then(|s| s.host_header.as_ref())
    })
}

fn same_chain(a: &Option<Arc<Chain>>, b: &Option<Arc<Chain>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn route_entry(
    r: &RouteConfig,
    services: &foldhash::HashMap<&str, &ServiceConfig>,
    upstream: &Arc<Upstream>,
    plugins: Option<Arc<Chain>>,
    i: usize,
) -> Result<Route, ConfigErrors> {
    let host_header = match host_header_of(r, services) {
        None | Some(HostHeader::Pass) => HostHeaderRt::Pass,
        Some(HostHeader::Target) => HostHeaderRt::Target,
        Some(HostHeader::Rewrite(v)) => {
            HostHeaderRt::Rewrite(HeaderValue::from_str(v).map_err(|_| {
                ConfigErrors::one(
                    format!("routes[{i}].host_header"),
                    format!("`{v}` is not a valid Host header value"),
                )
            })?)
        }
    };
    Ok(Route {
        id: r.id.as_str().into(),
        service: r.service.as_deref().map(Into::into),
        upstream: upstream.clone(),
        host_header,
        paths: r.paths.iter().map(|p| Arc::from(p.as_str())).collect(),
        plugins,
        escaped_slashes: r.escaped_slashes,
    })
}

// === the published snapshot ===

/// The published snapshot and what is needed to build the next one.
pub struct State {
    current: ArcSwap<Snapshot>,
    telemetry: Arc<Telemetry>,
    pools: Pools,
    /// Limit and cache state, kept across snapshots (ADR 0030).
    stores: Arc<Stores>,
    next_generation: AtomicU64,
    /// The last snapshot compiled (published or not), which the next
    /// compile reuses from, and what it was compiled from when that was a
    /// set of stored documents (so the follower can publish it as is).
    /// Compiles are serialised by this lock.
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    compiled: Option<Arc<Snapshot>>,
    /// The stores handle `compiled` was built with.
    build: Option<BuildStores>,
    /// The stored documents `compiled` was made from, if it was.
    docs: Option<crate::docs::DocsKey>,
}

impl State {
    /// Builds the first snapshot.
    pub fn new(config: &Config) -> Result<Arc<State>, ConfigErrors> {
        State::with_telemetry(config, Arc::default())
    }

    /// Builds the first snapshot; requests report to `telemetry`.
    pub fn with_telemetry(
        config: &Config,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<State>, ConfigErrors> {
        let pools = Pools::default();
        let stores = Arc::new(Stores::default());
        let build = stores.begin();
        let snap = compile(config, &pools, &build, None)?;
        snap.generation.store(1, Ordering::Relaxed);
        let snap = Arc::new(snap);
        pools.retain(&config.upstreams);
        stores.published(&build);
        Ok(Arc::new(State {
            current: ArcSwap::new(snap.clone()),
            telemetry,
            pools,
            stores,
            next_generation: AtomicU64::new(2),
            last: Mutex::new(Last {
                compiled: Some(snap),
                build: Some(build),
                docs: None,
            }),
        }))
    }

    /// Where requests report.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The node's limit and cache state.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// The snapshot requests should use now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Compiles `config` and publishes it; on error the running snapshot
    /// stays.
    pub fn apply(&self, config: &Config) -> Result<u64, ConfigErrors> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let build = self.stores.begin();
        let snap = compile(config, &self.pools, &build, last.compiled.as_deref())?;
        let snap = Arc::new(snap);
        *last = Last {
            compiled: Some(snap.clone()),
            build: Some(build.clone()),
            docs: None,
        };
        Ok(self.publish(snap, &config.upstreams, &build))
    }

    /// Compiles `config` (made from the stored documents `docs`) without
    /// publishing it, and keeps it so that [`State::publish_prepared`] of
    /// the same documents serves it without compiling again. This is what
    /// the store's validator runs on every write.
    pub fn prepare(
        &self,
        config: &Config,
        docs: crate::docs::DocsKey,
    ) -> Result<Arc<Snapshot>, ConfigErrors> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let build = self.stores.begin();
        let snap = Arc::new(compile(
            config,
            &self.pools,
            &build,
            last.compiled.as_deref(),
        )?);
        *last = Last {
            compiled: Some(snap.clone()),
            build: Some(build),
            docs: Some(docs),
        };
        Ok(snap)
    }

    /// Publishes the snapshot [`State::prepare`] made from `docs`, if it
    /// was the last compile; otherwise compiles `config` (made from
    /// `docs`) and publishes that.
    pub fn publish_prepared(
        &self,
        config: impl FnOnce() -> Result<Config, ConfigErrors>,
        docs: crate::docs::DocsKey,
    ) -> Result<u64, ConfigErrors> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let ready = last
            .docs
            .as_ref()
            .filter(|d| **d == docs)
            .and(last.compiled.clone().zip(last.build.clone()));
        let (snap, upstreams, build) = match ready {
            Some((snap, build)) => {
                let upstreams: Vec<UpstreamConfig> = snap
                    .sources
                    .upstreams
                    .values()
                    .map(|u| u.config.clone())
                    .collect();
                (snap, upstreams, build)
            }
            None => {
                let config = config()?;
                let build = self.stores.begin();
                let snap = Arc::new(compile(
                    &config,
                    &self.pools,
                    &build,
                    last.compiled.as_deref(),
                )?);
                *last = Last {
                    compiled: Some(snap.clone()),
                    build: Some(build.clone()),
                    docs: Some(docs),
                };
                (snap, config.upstreams, build)
            }
        };
        Ok(self.publish(snap, &upstreams, &build))
    }

    /// Serves `snap`, then lets go of the pools and the limit and cache
    /// state that nothing serves any more.
    fn publish(
        &self,
        snap: Arc<Snapshot>,
        upstreams: &[UpstreamConfig],
        build: &BuildStores,
    ) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        snap.generation.store(generation, Ordering::Relaxed);
        self.current.store(snap);
        self.pools.retain(upstreams);
        self.stores.published(build);
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(src: &str) -> Config {
        serde_yaml_ng::from_str(src).expect("a config")
    }

    const BASE: &str = r#"
upstreams:
  - {id: u, targets: [{addr: "127.0.0.1:9"}]}
  - {id: v, targets: [{addr: "127.0.0.1:10"}]}
routes:
  - {id: a, paths: ["/a"], upstream: u, plugins: {limit-count: {count: 1, time_window: 60s}}}
  - {id: b, paths: ["/b/:x"], upstream: u}
  - {id: c, paths: ["/c/*"], upstream: v, headers: [{name: x-k, regex: "^a+$"}]}
"#;

    fn route<'s>(s: &'s Snapshot, id: &str) -> &'s Arc<Route> {
        &s.sources
            .routes
            .get(id)
            .expect("the route is in the snapshot")
            .0
            .route
    }

    fn compiled(cfg: &Config, prev: Option<&Snapshot>) -> Snapshot {
        compile(cfg, &Pools::default(), &BuildStores::scratch(), prev).expect("compiles")
    }

    fn refused(cfg: &Config, prev: Option<&Snapshot>) -> Option<ConfigErrors> {
        compile(cfg, &Pools::default(), &BuildStores::scratch(), prev).err()
    }

    #[tokio::test]
    async fn a_one_route_change_keeps_every_other_route_and_its_plugins() {
        let first = compiled(&config(BASE), None);
        let mut cfg = config(BASE);
        Arc::make_mut(&mut cfg.routes[1]).paths = vec!["/b2/:x".into()];
        cfg.routes.push(Arc::new(RouteConfig {
            id: "d".into(),
            paths: vec!["/d".into()],
            upstream: Some("v".into()),
            ..RouteConfig::default()
        }));
        let next = compiled(&cfg, Some(&first));
        for id in ["a", "c"] {
            assert!(
                Arc::ptr_eq(route(&first, id), route(&next, id)),
                "{id} reused"
            );
        }
        assert!(!Arc::ptr_eq(route(&first, "b"), route(&next, "b")));
        let (a1, a2) = (&route(&first, "a").plugins, &route(&next, "a").plugins);
        assert!(same_chain(a1, a2), "the limit keeps its instance");
        assert!(Arc::ptr_eq(&first.upstreams["u"], &next.upstreams["u"]));
        // The reused and the new routes all match.
        let headers = http::HeaderMap::new();
        for (path, id) in [("/a", "a"), ("/b2/1", "b"), ("/d", "d"), ("/b/1", "")] {
            let view = crate::router::RequestView {
                method: &http::Method::GET,
                host: None,
                path,
                query: None,
                headers: &headers,
            };
            let found = next.router.lookup(&view).map(|m| m.value.id.to_string());
            assert_eq!(found.unwrap_or_default(), id, "{path}");
        }
    }

    #[tokio::test]
    async fn a_changed_plugin_environment_rebuilds_every_chain() {
        let first = compiled(&config(BASE), None);
        let mut cfg = config(BASE);
        cfg.plugins.insert(
            "cors".into(),
            serde_yaml_ng::from_str("{allow_origins: ['*']}").expect("yaml"),
        );
        let next = compiled(&cfg, Some(&first));
        let chain = |s: &Snapshot, id: &str| route(s, id).plugins.clone();
        assert!(!same_chain(&chain(&first, "a"), &chain(&next, "a")));
        assert!(chain(&first, "b").is_none() && chain(&next, "b").is_some());
    }

    #[tokio::test]
    async fn an_unchanged_route_is_still_checked_against_what_it_names() {
        let first = compiled(&config(BASE), None);
        let mut cfg = config(BASE);
        cfg.upstreams.retain(|u| u.id != "v");
        let with_prev = refused(&cfg, Some(&first)).expect("route c names a deleted upstream");
        let fresh = refused(&cfg, None).expect("the same without reuse");
        assert_eq!(with_prev, fresh);
        assert!(
            with_prev.to_string().contains("routes[2].upstream"),
            "{with_prev}"
        );
    }

    #[tokio::test]
    async fn reuse_never_changes_the_verdict() {
        // Each edit compiled on top of the base gives exactly the problems
        // a fresh compile of it gives.
        let first = compiled(&config(BASE), None);
        let edits: [fn(&mut Config); 5] = [
            |c| Arc::make_mut(&mut c.routes[0]).paths = vec!["no-slash".into()],
            |c| Arc::make_mut(&mut c.routes[2]).id = "a".into(),
            |c| Arc::make_mut(&mut c.routes[1]).upstream = Some("nosuch".into()),
            |c| {
                Arc::make_mut(&mut c.routes[0]).plugins.insert(
                    "limit-count".into(),
                    serde_yaml_ng::from_str("{count: 0, time_window: 1s}").expect("yaml"),
                );
            },
            |c| c.upstreams[0].targets.clear(),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut cfg = config(BASE);
            edit(&mut cfg);
            let a = refused(&cfg, Some(&first));
            let b = refused(&cfg, None);
            assert!(a.is_some(), "edit {i} is refused");
            assert_eq!(a, b, "edit {i}");
        }
    }

    #[tokio::test]
    async fn a_route_follows_a_change_of_its_service() {
        let src = |host: &str| {
            format!(
                "upstreams: [{{id: u, targets: [{{addr: '127.0.0.1:9'}}]}}]\n\
                 services: [{{id: s, upstream: u, host_header: {host}}}]\n\
                 routes: [{{id: r, paths: [/r], service: s}}]\n"
            )
        };
        let first = compiled(&config(&src("pass")), None);
        let next = compiled(&config(&src("target")), Some(&first));
        assert!(matches!(route(&first, "r").host_header, HostHeaderRt::Pass));
        assert!(matches!(
            route(&next, "r").host_header,
            HostHeaderRt::Target
        ));
    }

    #[tokio::test]
    async fn a_reused_limit_keeps_its_state_in_the_node_stores() {
        // Route `a` has a limit; writes to other routes reuse its chain
        // without asking the stores for its counters again, and the sweep
        // after each publish must not drop them: the next write that does
        // rebuild the chain would start the limit over.
        let state = State::new(&config(BASE)).expect("compiles");
        assert_eq!(state.stores().limits().len(), 1);
        let mut cfg = config(BASE);
        Arc::make_mut(&mut cfg.routes[1]).paths = vec!["/b3/:x".into()];
        state.apply(&cfg).expect("applies");
        state.apply(&config(BASE)).expect("applies");
        assert_eq!(state.stores().limits().len(), 1, "the reused limit is kept");
        let mut cfg = config(BASE);
        cfg.routes.remove(0);
        state.apply(&cfg).expect("applies");
        state.apply(&cfg).expect("applies");
        assert_eq!(state.stores().limits().len(), 0, "a removed limit goes");
    }

    #[tokio::test]
    async fn a_prepared_snapshot_is_published_without_a_second_compile() {
        let state = State::new(&config(BASE)).expect("compiles");
        let docs: weir_storage::Docs = Default::default();
        let key = crate::docs::DocsKey::of(&docs);
        let prepared = state.prepare(&config(BASE), key.clone()).expect("compiles");
        let generation = state
            .publish_prepared(|| panic!("compiled again"), key)
            .expect("published");
        assert!(Arc::ptr_eq(&prepared, &state.load()));
        assert_eq!(state.load().generation(), generation);
        // Other documents are compiled when published.
        let mut other: weir_storage::Docs = Default::default();
        other.insert(
            ("routes".into(), "x".into()),
            Arc::new(weir_storage::Document {
                kind: "routes".into(),
                id: "x".into(),
                revision: 1,
                created: 1,
                value: serde_json::json!({}),
                memo: Default::default(),
            }),
        );
        let mut compiled_again = false;
        state
            .publish_prepared(
                || {
                    compiled_again = true;
                    Ok(config(BASE))
                },
                crate::docs::DocsKey::of(&other),
            )
            .expect("published");
        assert!(compiled_again);
        assert!(!Arc::ptr_eq(&prepared, &state.load()));
    }
}
