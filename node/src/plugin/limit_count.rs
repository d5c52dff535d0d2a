//! `limit-count`: at most `count` requests per `time_window` and key, with
//! fixed windows or the sliding window counter; optionally a `soft`
//! threshold below it, `mode: shadow`, and a `dynamic` count that follows
//! the upstream's health (`ratelimit::Modes`). With `scope: region |
//! cluster` the count is shared over the node mesh (`store: mesh`, the
//! default) or through Redis (`store: redis`, ADR 0034), by credit settled
//! in the background or, with `sync: per_request`, one Redis round trip
//! per request.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::cluster_limits::Scope;
use crate::redis_limits::PerRequest;

use super::ratelimit::{self, Common, Compiled, DynamicConfig, ModeConfig, Modes};
use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, ResponseHead,
    parse_config,
};
use weir_limits::{CounterSpec, CounterStore, WindowPolicy, wall_clock_us};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "limit-count",
    priority: 1002,
    build,
};

/// Config of `limit-count`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Requests admitted per window and key.
    count: u64,
    /// Window length, e.g. `60s`.
    #[serde(with = "crate::config::duration")]
    time_window: Duration,
    /// `fixed` (default) or `sliding`.
    #[serde(default)]
    policy: WindowKind,
    /// Most keys kept at once; beyond it the least useful are dropped.
    #[serde(default = "default_max_keys")]
    max_keys: u64,
    /// What makes requests share a limit: `client_ip`, `route`,
    /// `service`, `consumer`, `header:<name>`, or a list of them.
    #[serde(default)]
    key: Vec<String>,
    /// Status of a rejection (400–599). Default 429.
    #[serde(default = "ratelimit::default_rejected")]
    rejected_code: u16,
    /// Whether admitted responses carry the `RateLimit-*` headers.
    #[serde(default = "ratelimit::yes")]
    headers: bool,
    /// A count below `count` past which requests are still admitted but
    /// flagged (`Weir-RateLimit-Soft`) and counted as over-soft.
    #[serde(default)]
    soft: Option<u64>,
    /// `enforce` (default) or `shadow`: count and report, reject nothing.
    #[serde(default)]
    mode: ModeConfig,
    /// Scale `count` (and `soft`) by the upstream's state.
    #[serde(default)]
    dynamic: Option<DynamicConfig>,
    /// Where the count is shared: `node` (default; `cluster` with
    /// `store: redis`), `region` or `cluster`.
    #[serde(default)]
    scope: Option<Scope>,
    /// Where a shared count lives: `mesh` (default, ADR 0035) or `redis`
    /// (the config's `redis:` section, ADR 0034).
    #[serde(default)]
    store: Option<StoreKind>,
    /// How a `store: redis` count settles: `credit` (default: chunks
    /// taken in the background, no Redis call on the request path) or
    /// `per_request` (one Redis round trip per request, exact).
    #[serde(default)]
    sync: SyncMode,
}

/// `store` of a shared limit.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Mesh,
    Redis,
}

/// `sync` of a `store: redis` limit.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum SyncMode {
    #[default]
    Credit,
    PerRequest,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WindowKind {
    #[default]
    Fixed,
    Sliding,
}

pub(super) fn default_max_keys() -> u64 {
    100_000
}

struct LimitCount {
    /// A route-level instance, which defers to the consumer\'s own one.
    overridable: bool,
    policy: WindowPolicy,
    /// Count past which admitted requests are over-soft.
    soft: Option<u64>,
    common: Compiled,
    modes: Modes,
    counts: Counts,
}

/// Where a limit's counts are kept.
enum Counts {
    /// Decided at once from a store (node-local, or credit settled over
    /// the mesh or with Redis in the background).
    Store(Arc<dyn CounterStore>),
    /// One Redis round trip per request.
    PerRequest(PerRequest),
}

/// Checks `scope`, `store` and `sync` together and opens the counts.
fn open_counts(
    raw: &RawConfig,
    id: &weir_limits::LimitId,
    spec: &CounterSpec,
    env: &BuildEnv,
    errs: &mut ConfigErrorList,
) -> Option<Counts> {
    let scope = raw.scope.unwrap_or(match raw.store {
        Some(StoreKind::Redis) => Scope::Cluster,
        _ => Scope::Node,
    });
    if raw.sync == SyncMode::PerRequest && raw.store != Some(StoreKind::Redis) {
        errs.push((
            "sync".into(),
            "`per_request` counts in Redis: it needs `store: redis`".into(),
        ));
        return None;
    }
    let Some(store) = raw.store else {
        return Some(Counts::Store(env.stores().counters_in(id, spec, scope)));
    };
    if scope == Scope::Node {
        errs.push((
            "store".into(),
            "a `scope: node` limit is counted by this node alone; `store` applies to `scope: region` or `cluster`".into(),
        ));
        return None;
    }
    if store == StoreKind::Mesh {
        return Some(Counts::Store(env.stores().counters_in(id, spec, scope)));
    }
    let Some(target) = env.redis() else {
        errs.push((
            "store".into(),
            "`redis` needs the top-level `redis:` section (where Redis is)".into(),
        ));
        return None;
    };
    let stores = env.stores();
    let opened = match raw.sync {
        SyncMode::Credit => stores
            .redis_counters(&target.settings, &target.region, id, spec, scope)
            .map(Counts::Store),
        SyncMode::PerRequest => stores
            .redis_per_request(&target.settings, &target.region, id, spec, scope)
            .map(|pr| match pr {
                Some(pr) => Counts::PerRequest(pr),
                // No runtime (a config check): nothing is served.
                None => Counts::Store(stores.counters(id, spec)),
            }),
    };
    opened.map_err(|e| errs.push(("store".into(), e))).ok()
}

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    ratelimit::at_least_one(raw.count, "count", &mut errs);
    ratelimit::at_least_one(raw.max_keys, "max_keys", &mut errs);
    let window_us = u64::try_from(raw.time_window.as_micros()).unwrap_or(u64::MAX);
    if raw.time_window < Duration::from_millis(1) {
        errs.push(("time_window".into(), "must be at least 1ms".into()));
    }
    if let Some(soft) = raw.soft
        && (soft == 0 || soft >= raw.count)
    {
        errs.push((
            "soft".into(),
            format!(
                "must be at least 1 and below `count` ({}); got {soft}",
                raw.count
            ),
        ));
    }
    let id = ratelimit::limit_id(env, DEF.name, v);
    let modes = Modes::compile(DEF.name, &id, raw.mode, raw.dynamic.as_ref(), &mut errs);
    let common = Common {
        key: &raw.key,
        rejected_code: raw.rejected_code,
        headers: raw.headers,
    }
    .compile(&mut errs);
    let spec = CounterSpec {
        max_keys: raw.max_keys,
        idle: ratelimit::idle_for(raw.time_window),
    };
    let counts = open_counts(&raw, &id, &spec, env, &mut errs);
    let (Some(common), Some(counts), true) = (common, counts, errs.is_empty()) else {
        return Err(errs);
    };
    Ok(Arc::new(LimitCount {
        overridable: !env.consumer_level(),
        policy: WindowPolicy {
            limit: raw.count,
            window_us,
            sliding: raw.policy == WindowKind::Sliding,
        },
        soft: raw.soft,
        common,
        modes,
        counts,
    }))
}

#[async_trait::async_trait]
impl Plugin for LimitCount {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        if self.overridable
            && let Some(own) = super::overrides::consumer_limit(ctx, DEF.name)
        {
            return own.access(req, ctx).await;
        }
        let key = self.common.key.key(req.headers, ctx);
        let scale = self.modes.scale(ctx);
        let policy = self.policy.scaled(scale);
        let v = match &self.counts {
            Counts::Store(s) => s.hit_window(&key, &policy, wall_clock_us(), 1),
            Counts::PerRequest(pr) => pr.hit_window(&key, &policy, wall_clock_us()).await,
        };
        let over_soft = self
            .soft
            .is_some_and(|soft| WindowPolicy::past_soft(&v, scale.apply(soft)));
        ratelimit::decide(&v, over_soft, &self.common, &self.modes, ctx)
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        ratelimit::response_headers(resp.headers, ctx);
    }
}
