//! `limit-req`: a token bucket per key, `rate` requests per second with a
//! `burst`; in delay mode requests over the rate wait their turn (up to
//! `burst` of them) instead of being rejected. Optionally a `soft` rate
//! below `rate`, `mode: shadow`, and a `dynamic` rate that follows the
//! upstream's health (`ratelimit::Modes`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::cluster_limits::Scope;

use super::limit_count::default_max_keys;
use super::ratelimit::{self, Common, Compiled, DynamicConfig, ModeConfig, Modes};
use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, ResponseHead,
    parse_config,
};
use weir_limits::{BucketPolicy, CounterSpec, CounterStore, Mode, wall_clock_us};

fn soft_key(key: &str) -> String {
    let mut k = String::with_capacity(SOFT_KEY.len() + key.len());
    k.push_str(SOFT_KEY);
    k.push_str(key);
    k
}

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "limit-req",
    priority: 1001,
    build,
};

/// Config of `limit-req`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    rate: f64,
    /// Bucket size: requests admitted at once above the rate (reject
    /// mode), or requests that may wait (delay mode). Default 1.
    #[serde(default = "one")]
    burst: u64,
    /// Queue requests over the rate instead of rejecting them.
    #[serde(default)]
    delay: bool,
    /// Most keys kept at once.
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
    /// A rate below `rate` (requests per second, same `burst`) past which
    /// requests are still admitted but flagged (`Weir-RateLimit-Soft`)
    /// and counted as over-soft.
    #[serde(default)]
    soft: Option<f64>,
    /// `enforce` (default) or `shadow`: count and report, reject nothing
    /// (and delay nothing).
    #[serde(default)]
    mode: ModeConfig,
    /// Scale `rate`, `burst` (and `soft`) by the upstream's state.
    #[serde(default)]
    dynamic: Option<DynamicConfig>,
    /// Where the count is shared: `node` (default), `region` or
    /// `cluster` (over the node mesh, ADR 0035).
    #[serde(default)]
    scope: Scope,
}

fn one() -> u64 {
    1
}

struct LimitReq {
    /// A route-level instance, which defers to the consumer\'s own one.
    overridable: bool,
    policy: BucketPolicy,
    /// The bucket of the soft rate, counted under its own keys in the same
    /// store.
    soft: Option<BucketPolicy>,
    common: Compiled,
    modes: Modes,
    store: Arc<dyn CounterStore>,
}

/// Prefix of the soft bucket's key: two more `\n`-separated parts than
/// any of the limit's own keys has (no part holds a `\n`), so a soft key
/// never meets a hard one.
const SOFT_KEY: &str = "\nsoft\n";

fn interval_of(rate: f64) -> u64 {
    (1_000_000.0 / rate).round().max(1.0) as u64
}

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    if !(raw.rate.is_finite() && (0.001..=1_000_000.0).contains(&raw.rate)) {
        errs.push((
            "rate".into(),
            "must be between 0.001 and 1000000 requests per second".into(),
        ));
    }
    ratelimit::at_least_one(raw.burst, "burst", &mut errs);
    ratelimit::at_least_one(raw.max_keys, "max_keys", &mut errs);
    if let Some(soft) = raw.soft
        && !(soft.is_finite() && soft >= 0.001 && soft < raw.rate)
    {
        errs.push((
            "soft".into(),
            format!(
                "must be at least 0.001 and below `rate` ({}) requests per second; got {soft}",
                raw.rate
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
    let interval_us = interval_of(raw.rate);
    let policy = BucketPolicy {
        interval_us,
        burst: raw.burst,
        delay: raw.delay,
    };
    // The soft bucket refills slowest: it sets how long keys must live.
    let slowest = raw.soft.map_or(interval_us, interval_of);
    let full = Duration::from_micros(slowest.saturating_mul(raw.burst));
    Ok(Arc::new(LimitReq {
        overridable: !env.consumer_level(),
        policy,
        soft: raw.soft.map(|s| policy.soft(interval_of(s))),
        common,
        modes,
        store: env.stores().counters_in(
            &id,
            &CounterSpec {
                max_keys: raw.max_keys,
                idle: ratelimit::idle_for(full),
            },
            raw.scope,
        ),
    }))
}

#[async_trait::async_trait]
impl Plugin for LimitReq {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        if self.overridable
            && let Some(own) = super::overrides::consumer_limit(ctx, DEF.name)
        {
            return own.access(req, ctx).await;
        }
        let key = self.common.key.key(req.headers, ctx);
        let scale = self.modes.scale(ctx);
        let now = wall_clock_us();
        let v = match self.policy.scaled(scale) {
            Some(p) => self.store.hit_bucket(&key, &p, now),
            None => ratelimit::closed(),
        };
        // The soft bucket counts only what the hard one admitted.
        let over_soft = v.admitted
            && self
                .soft
                .and_then(|s| s.scaled(scale))
                .is_some_and(|s| !self.store.hit_bucket(&soft_key(&key), &s, now).admitted);
        ratelimit::decide(&v, over_soft, &self.common, &self.modes, ctx)?;
        if v.delay_us > 0 && self.modes.mode == Mode::Enforce {
            tokio::time::sleep(Duration::from_micros(v.delay_us)).await;
        }
        Ok(())
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        ratelimit::response_headers(resp.headers, ctx);
    }
}
