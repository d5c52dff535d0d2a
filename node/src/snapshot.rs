//! The compiled, immutable view of a config that the data path reads.
//!
//! A config change builds a whole new [`Snapshot`] and publishes it with
//! `arc_swap`; requests in flight keep the `Arc` of the snapshot they
//! started on and finish on it. Nothing here is parsed or validated per
//! request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};

use crate::config::{Config, ConfigErrors, HostHeader, Settings};
use crate::consumer::Consumers;
use crate::plugin::Chain;
use crate::router::Router;
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
    pub router: Router<Route>,
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
    /// Counts the snapshots built by this process (1 = the first).
    pub generation: u64,
    /// When it was built.
    pub built_at: SystemTime,
}

impl Snapshot {
    /// Compiles a validated config; its plugins take their state from
    /// `stores`.
    pub fn build(
        config: &Config,
        pools: &Pools,
        stores: &BuildStores,
        generation: u64,
    ) -> Result<Snapshot, ConfigErrors> {
        config.validate()?;
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let (region, zone) = config
                    .cluster
                    .as_ref()
                    .map_or(("", ""), |c| (c.region.as_str(), c.zone.as_str()));
                Ok((u.id.clone(), Arc::new(pools.upstream(u, region, zone)?)))
            })
            .collect::<Result<_, ConfigErrors>>()?;
        pools.retain(&config.upstreams);
        let services: HashMap<&str, _> =
            config.services.iter().map(|s| (s.id.as_str(), s)).collect();
        let consumers = Arc::new(Consumers::build(config, stores)?);
        let mut chains = crate::plugin::build_chains(config, &consumers, stores)?.into_iter();

        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let service = r.service.as_deref().and_then(|s| services.get(s));
            let upstream_id = r
                .upstream
                .as_deref()
                .or(service.map(|s| s.upstream.as_str()))
                .ok_or_else(|| ConfigErrors::one(&at, "a route needs `service` or `upstream`"))?;
            let upstream = upstreams
                .get(upstream_id)
                .ok_or_else(|| {
                    ConfigErrors::one(
                        format!("{at}.upstream"),
                        format!("no upstream with id `{upstream_id}`"),
                    )
                })?
                .clone();
            let host_header = match r
                .host_header
                .as_ref()
                .or(service.and_then(|s| s.host_header.as_ref()))
            {
                None | Some(HostHeader::Pass) => HostHeaderRt::Pass,
                Some(HostHeader::Target) => HostHeaderRt::Target,
                Some(HostHeader::Rewrite(v)) => {
                    HostHeaderRt::Rewrite(HeaderValue::from_str(v).map_err(|_| {
                        ConfigErrors::one(
                            format!("{at}.host_header"),
                            format!("`{v}` is not a valid Host header value"),
                        )
                    })?)
                }
            };
            routes.push((
                r,
                Route {
                    id: r.id.as_str().into(),
                    service: r.service.as_deref().map(Into::into),
                    upstream,
                    host_header,
                    paths: r.paths.iter().map(|p| Arc::from(p.as_str())).collect(),
                    plugins: chains.next().flatten(),
                },
            ));
        }
        let router = Router::build(routes)?;
        let via =
            if config.settings.via.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(&config.settings.via).map_err(|_| {
                    ConfigErrors::one("settings.via", "is not a valid header value")
                })?)
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
            consumers,
            consumer_name_header: header(&config.settings.consumer_headers.name),
            consumer_groups_header: header(&config.settings.consumer_headers.groups),
            generation,
            built_at: SystemTime::now(),
        })
    }
}

/// The published snapshot and what is needed to build the next one.
pub struct State {
    current: ArcSwap<Snapshot>,
    telemetry: Arc<Telemetry>,
    pools: Pools,
    /// Limit and cache state, kept across snapshots (ADR 0030).
    stores: Arc<Stores>,
    next_generation: std::sync::atomic::AtomicU64,
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
        let snap = Snapshot::build(config, &pools, &build, 1)?;
        stores.published(&build);
        Ok(Arc::new(State {
            current: ArcSwap::from_pointee(snap),
            telemetry,
            pools,
            stores,
            next_generation: std::sync::atomic::AtomicU64::new(2),
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

    /// Builds a snapshot from `config` and publishes it; on error the
    /// running snapshot stays.
    pub fn apply(&self, config: &Config) -> Result<u64, ConfigErrors> {
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let build = self.stores.begin();
        let snap = Snapshot::build(config, &self.pools, &build, generation)?;
        self.current.store(Arc::new(snap));
        self.stores.published(&build);
        Ok(generation)
    }
}
