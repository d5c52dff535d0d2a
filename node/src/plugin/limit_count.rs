//! `limit-count`: at most `count` requests per `time_window` and key, with
//! fixed windows or the sliding window counter; optionally a `soft`
//! threshold below it, `mode: shadow`, and a `dynamic` count that follows
//! the upstream's health (`ratelimit::Modes`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::cluster_limits::Scope;

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
    #[serde(with = "humantime_serde")]
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
    /// Where the count is shared: `node` (default), `region` or
    /// `cluster` (over the node mesh, ADR 0035).
    #[serde(default)]
    scope: Scope,
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
    store: Arc<dyn CounterStore>,
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
    let Some(common) = common.filter(|_| errs.is_empty()) else {
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
        store: env.stores().counters_in(
            &id,
            &CounterSpec {
                max_keys: raw.max_keys,
                idle: ratelimit::idle_for(raw.time_window),
            },
            raw.scope,
        ),
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
        let v = self
            .store
            .hit_window(&key, &self.policy.scaled(scale), wall_clock_us(), 1);
        let over_soft = self
            .soft
            .is_some_and(|soft| WindowPolicy::past_soft(&v, scale.apply(soft)));
        ratelimit::decide(&v, over_soft, &self.common, &self.modes, ctx)
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        ratelimit::response_headers(resp.headers, ctx);
    }
}
