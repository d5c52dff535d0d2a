//! `limit-req`: a token bucket per key, `rate` requests per second with a
//! `burst`; in delay mode requests over the rate wait their turn (up to
//! `burst` of them) instead of being rejected.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::limit_count::default_max_keys;
use super::ratelimit::{self, Common, Compiled};
use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, ResponseHead,
    parse_config,
};
use weir_limits::{BucketPolicy, CounterSpec, CounterStore, wall_clock_us};

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
}

fn one() -> u64 {
    1
}

struct LimitReq {
    /// A route-level instance, which defers to the consumer\'s own one.
    overridable: bool,
    policy: BucketPolicy,
    common: Compiled,
    store: Arc<dyn CounterStore>,
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
    let common = Common {
        key: &raw.key,
        rejected_code: raw.rejected_code,
        headers: raw.headers,
    }
    .compile(&mut errs);
    let Some(common) = common.filter(|_| errs.is_empty()) else {
        return Err(errs);
    };
    let interval_us = (1_000_000.0 / raw.rate).round().max(1.0) as u64;
    let full = Duration::from_micros(interval_us.saturating_mul(raw.burst));
    Ok(Arc::new(LimitReq {
        overridable: !env.consumer_level(),
        policy: BucketPolicy {
            interval_us,
            burst: raw.burst,
            delay: raw.delay,
        },
        common,
        store: env.stores().counters(
            &env.limit_id(DEF.name, v),
            &CounterSpec {
                max_keys: raw.max_keys,
                idle: ratelimit::idle_for(full),
            },
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
        let v = self.store.hit_bucket(&key, &self.policy, wall_clock_us());
        ratelimit::decide(&v, &self.common, ctx)?;
        if v.delay_us > 0 {
            tokio::time::sleep(Duration::from_micros(v.delay_us)).await;
        }
        Ok(())
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        ratelimit::response_headers(resp.headers, ctx);
    }
}
