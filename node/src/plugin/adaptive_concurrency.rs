//! `adaptive-concurrency`: a limit on requests in flight to a route's
//! upstream that follows its latency (AIMD, `weir_limits::adaptive`).
//! Requests over the limit get 503 `overloaded`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, ResponseHead,
    parse_config,
};
use weir_limits::adaptive::{Adaptive, AdaptiveConfig, Permit};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "adaptive-concurrency",
    priority: 1000,
    build,
};

/// Config of `adaptive-concurrency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Limit at start. Default 20.
    #[serde(default = "d_initial")]
    initial_limit: u64,
    /// Lowest limit. Default 1.
    #[serde(default = "d_min")]
    min_limit: u64,
    /// Highest limit. Default 1000.
    #[serde(default = "d_max")]
    max_limit: u64,
    /// Factor applied to the limit on a slow or failed response
    /// (0.5–0.99). Default 0.9.
    #[serde(default = "d_backoff")]
    backoff: f64,
    /// A response is slow past `baseline × tolerance + slack`. Default 2.
    #[serde(default = "d_tolerance")]
    tolerance: f64,
    /// Default 10ms.
    #[serde(default = "d_slack", with = "crate::config::duration")]
    slack: Duration,
    /// How often the baseline latency is re-learnt. Default 60s.
    #[serde(default = "d_window", with = "crate::config::duration")]
    baseline_window: Duration,
}

fn d_initial() -> u64 {
    20
}
fn d_min() -> u64 {
    1
}
fn d_max() -> u64 {
    1000
}
fn d_backoff() -> f64 {
    0.9
}
fn d_tolerance() -> f64 {
    2.0
}
fn d_slack() -> Duration {
    Duration::from_millis(10)
}
fn d_window() -> Duration {
    Duration::from_secs(60)
}

/// One limit per route: an instance set globally or on a service is
/// shared by routes, but each route's upstream latency is its own.
struct AdaptiveConcurrency {
    cfg: AdaptiveConfig,
    by_route: Mutex<HashMap<Arc<str>, Arc<Adaptive>>>,
}

/// The admitted request's place and start time.
#[derive(Clone)]
struct Held {
    permit: Arc<Permit>,
    start: Instant,
}

fn build(v: &serde_yaml_ng::Value, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs: ConfigErrorList = Vec::new();
    if raw.min_limit == 0 {
        errs.push(("min_limit".into(), "must be at least 1".into()));
    }
    if raw.max_limit < raw.min_limit {
        errs.push(("max_limit".into(), "must be at least `min_limit`".into()));
    }
    if !(raw.min_limit..=raw.max_limit).contains(&raw.initial_limit) {
        errs.push((
            "initial_limit".into(),
            "must be between `min_limit` and `max_limit`".into(),
        ));
    }
    if !(0.5..=0.99).contains(&raw.backoff) {
        errs.push(("backoff".into(), "must be between 0.5 and 0.99".into()));
    }
    if !(1.0..=100.0).contains(&raw.tolerance) {
        errs.push(("tolerance".into(), "must be between 1 and 100".into()));
    }
    if raw.baseline_window < Duration::from_secs(1) {
        errs.push(("baseline_window".into(), "must be at least 1s".into()));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Arc::new(AdaptiveConcurrency {
        cfg: AdaptiveConfig {
            min_limit: raw.min_limit,
            max_limit: raw.max_limit,
            initial_limit: raw.initial_limit,
            backoff: raw.backoff,
            tolerance: raw.tolerance,
            slack: raw.slack,
            baseline_window: raw.baseline_window,
        },
        by_route: Mutex::new(HashMap::new()),
    }))
}

#[async_trait::async_trait]
impl Plugin for AdaptiveConcurrency {
    async fn access(&self, _req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let limit = {
            // Bounded by the routes of the config.
            let mut m = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(ctx.route_id.clone())
                .or_insert_with(|| Arc::new(Adaptive::new(self.cfg)))
                .clone()
        };
        match limit.try_acquire() {
            Some(permit) => {
                ctx.ext.insert(Held {
                    permit: Arc::new(permit),
                    start: Instant::now(),
                });
                Ok(())
            }
            None => Err(Early::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the upstream is at its concurrency limit",
            )),
        }
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        // Only requests this plugin admitted carry a place; a gateway error
        // (502/504, upstream unreachable or too slow) counts as a drop.
        if let Some(h) = ctx.ext.get::<Held>() {
            let s = resp.status.as_u16();
            let ok = !matches!(s, 502..=504);
            h.permit.sample(h.start.elapsed(), ok);
        }
    }
}
