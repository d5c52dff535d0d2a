//! What the limit plugins share: config fields, the 429 answer and the
//! `RateLimit-*` headers (IETF httpapi ratelimit-headers draft, the
//! three-header style of drafts 03–06: `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` in delta seconds); and the
//! soft, shadow and dynamic options of `limit-count` and `limit-req`
//! ([`Modes`]): the `Weir-RateLimit-Soft` header, the per-limit decision
//! metric and the access log's `ratelimit_decision`.
//!
//! Those options act on the policy a plugin hands its store and on the
//! verdict the store returns, never inside the store, so they work the
//! same whatever the limit's store or scope: the scaled policy goes to the
//! store on every call, and as the scale comes from the cluster's merged
//! health view, every node of a scope hands its store the same limit (an
//! authority granting credit can use it as is); the soft threshold is read
//! from the verdict (`limit-count`) or from a second key in the same store
//! (`limit-req`), so it is as wide as the limit; a shadow limit makes the
//! same store calls as an enforced one.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{GatewayMetrics, RateLimitDecision, global};
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::limit_key::KeySpec;
use super::{BuildEnv, ConfigErrorList, Early, RequestCtx};
use weir_limits::{LimitId, Mode, Outcome, Scale, Verdict};

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// Set on an admitted response that went past the soft threshold of one
/// or more enforced limits; the value lists their plugin types.
static SOFT: HeaderName = HeaderName::from_static("weir-ratelimit-soft");

/// How long a client is told to wait when a dynamic limit is at zero
/// (nothing tells when the upstream comes back).
const CLOSED_RETRY_US: u64 = 1_000_000;

/// Fields every limit plugin has (each plugin's config repeats them:
/// `serde(flatten)` cannot be combined with `deny_unknown_fields`).
pub(super) struct Common<'a> {
    /// What makes requests share a limit: `client_ip`, `route`, `service`,
    /// `consumer`, `header:<name>`, or several of them. Default
    /// `[client_ip]`.
    pub key: &'a [String],
    /// Status of a rejection (400–599). Default 429.
    pub rejected_code: u16,
    /// Whether admitted responses carry the `RateLimit-*` headers.
    /// Rejections always do.
    pub headers: bool,
}

/// Default of `rejected_code`.
pub(super) fn default_rejected() -> u16 {
    429
}

/// Default of `headers`.
pub(super) fn yes() -> bool {
    true
}

/// The compiled [`Common`] fields.
pub(super) struct Compiled {
    pub key: KeySpec,
    pub rejected: StatusCode,
    pub headers: bool,
}

impl Common<'_> {
    pub fn compile(&self, errs: &mut ConfigErrorList) -> Option<Compiled> {
        let key = KeySpec::parse(self.key).map_err(|e| errs.extend(e)).ok();
        let rejected = match StatusCode::from_u16(self.rejected_code) {
            Ok(s) if (400..=599).contains(&self.rejected_code) => Some(s),
            _ => {
                errs.push((
                    "rejected_code".into(),
                    format!("{} is not a status between 400 and 599", self.rejected_code),
                ));
                None
            }
        };
        Some(Compiled {
            key: key?,
            rejected: rejected?,
            headers: self.headers,
        })
    }
}

/// Checks that a count-like field is at least 1.
pub(super) fn at_least_one(v: u64, field: &str, errs: &mut ConfigErrorList) {
    if v == 0 {
        errs.push((field.into(), "must be at least 1".into()));
    }
}

/// The quota to show on the admitted response; with several limits on a
/// route, the tightest one (least remaining) is shown.
#[derive(Clone, Copy)]
struct Shown {
    limit: u64,
    remaining: u64,
    reset_secs: u64,
}

fn secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

fn put(h: &mut HeaderMap, s: Shown) {
    h.insert(LIMIT.clone(), HeaderValue::from(s.limit));
    h.insert(REMAINING.clone(), HeaderValue::from(s.remaining));
    h.insert(RESET.clone(), HeaderValue::from(s.reset_secs));
}

/// Turns a verdict into the plugin's answer: `Ok` (remembering the headers
/// for the response phase) or the rejection. `over_soft` says whether an
/// admitted request went past the limit's soft threshold. A shadow limit
/// never answers and shows the client nothing: its decision goes to the
/// metrics and the access log only.
// Same shape as `Plugin::access`, whose answer it is.
#[allow(clippy::result_large_err)]
pub(super) fn decide(
    v: &Verdict,
    over_soft: bool,
    c: &Compiled,
    m: &Modes,
    ctx: &mut RequestCtx,
) -> Result<(), Early> {
    let outcome = Outcome::of(v, over_soft);
    let metrics = global();
    metrics.record_limit_decision(&ctx.route_id, &m.label, m.mode, outcome);
    note(
        ctx,
        match (outcome, m.mode) {
            (Outcome::Admitted, _) => RateLimitDecision::Allowed,
            (Outcome::OverSoft, _) => RateLimitDecision::OverSoft,
            (Outcome::Rejected, Mode::Enforce) => RateLimitDecision::Rejected,
            (Outcome::Rejected, Mode::Shadow) => RateLimitDecision::ShadowRejected,
        },
    );
    if m.mode == Mode::Shadow {
        metrics.record_ratelimit(&ctx.route_id, RateLimitDecision::Allowed);
        return Ok(());
    }
    let shown = Shown {
        limit: v.limit,
        remaining: v.remaining,
        reset_secs: secs(v.reset_us),
    };
    if v.admitted {
        metrics.record_ratelimit(&ctx.route_id, RateLimitDecision::Allowed);
        if over_soft {
            match ctx.ext.get_mut::<SoftPast>() {
                Some(p) if !p.0.contains(&m.plugin) => p.0.push(m.plugin),
                Some(_) => {}
                None => {
                    ctx.ext.insert(SoftPast(vec![m.plugin]));
                }
            }
        }
        if c.headers {
            match ctx.ext.get::<Shown>() {
                Some(old) if old.remaining <= shown.remaining => {}
                _ => {
                    ctx.ext.insert(shown);
                }
            }
        }
        return Ok(());
    }
    metrics.record_ratelimit(&ctx.route_id, RateLimitDecision::Rejected);
    Err(rejection(
        c.rejected,
        Some(shown),
        secs(v.retry_after_us).max(1),
    ))
}

/// A rejection with its headers (the quota ones when there is a quota).
fn rejection(status: StatusCode, shown: Option<Shown>, retry_after: u64) -> Early {
    let mut e = Early::error(status, "rate_limited", "too many requests");
    if let Early::Error { headers, .. } = &mut e {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        if let Some(s) = shown {
            put(headers, s);
        }
    }
    e
}

/// A rejection without a quota to show (`limit-conn`): `Retry-After: 1`.
pub(super) fn busy(status: StatusCode, ctx: &mut RequestCtx) -> Early {
    global().record_ratelimit(&ctx.route_id, RateLimitDecision::Rejected);
    note(ctx, RateLimitDecision::Rejected);
    rejection(status, None, 1)
}

/// Records an admission that shows no quota (`limit-conn`).
pub(super) fn admitted(ctx: &mut RequestCtx) {
    global().record_ratelimit(&ctx.route_id, RateLimitDecision::Allowed);
    note(ctx, RateLimitDecision::Allowed);
}

/// Adds the remembered headers to an admitted response.
pub(super) fn response_headers(h: &mut HeaderMap, ctx: &RequestCtx) {
    if let Some(s) = ctx.ext.get::<Shown>() {
        put(h, *s);
    }
    if let Some(p) = ctx.ext.get::<SoftPast>()
        && let Ok(v) = HeaderValue::from_str(&p.0.join(", "))
    {
        h.insert(SOFT.clone(), v);
    }
}

// === what the request's limits decided ===

/// The limits past their soft threshold, by plugin type.
#[derive(Clone)]
struct SoftPast(Vec<&'static str>);

/// The most telling decision of the request's limits so far.
#[derive(Clone, Copy)]
struct Seen(RateLimitDecision);

fn rank(d: RateLimitDecision) -> u8 {
    match d {
        RateLimitDecision::Allowed => 0,
        RateLimitDecision::OverSoft => 1,
        RateLimitDecision::ShadowRejected => 2,
        RateLimitDecision::Rejected => 3,
    }
}

fn note(ctx: &mut RequestCtx, d: RateLimitDecision) {
    match ctx.ext.get_mut::<Seen>() {
        Some(s) if rank(s.0) >= rank(d) => {}
        Some(s) => s.0 = d,
        None => {
            ctx.ext.insert(Seen(d));
        }
    }
}

/// What the request's limits decided, for the access log: `rejected` over
/// `shadow_rejected` over `over_soft` over `allowed`; `None` when no limit
/// looked at it.
pub fn ratelimit_decision(ctx: &RequestCtx) -> Option<RateLimitDecision> {
    ctx.ext.get::<Seen>().map(|s| s.0)
}

// === soft, shadow and dynamic ===

/// `mode` of `limit-count` and `limit-req`.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum ModeConfig {
    /// Reject requests over the limit.
    #[default]
    Enforce,
    /// Count and report as `enforce` would, reject nothing.
    Shadow,
}

/// `dynamic` of `limit-count` and `limit-req`: what the effective value
/// of the limit follows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DynamicConfig {
    /// The source of the scale: `healthy_targets`, the share of the route
    /// upstream's target weight that the cluster's health view holds up.
    pub by: DynamicSource,
    /// The lowest share of the configured value the limit is scaled to,
    /// 0–1. Default 0.1; only 0 lets the limit reach 0.
    #[serde(default = "default_floor")]
    pub floor: f64,
}

/// What a dynamic limit follows.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum DynamicSource {
    /// The healthy share of the route's upstream.
    HealthyTargets,
}

fn default_floor() -> f64 {
    0.1
}

/// The compiled soft, shadow and dynamic options and the limit's name.
pub(super) struct Modes {
    pub mode: Mode,
    /// `Some(floor)` for a limit scaled by its upstream's health.
    healthy_floor: Option<Scale>,
    /// `<owner>/<plugin>`, the `weir_limit` label.
    label: Arc<str>,
    /// The plugin type, for `Weir-RateLimit-Soft`.
    plugin: &'static str,
}

impl Modes {
    /// Compiles `mode` and `dynamic` for the limit `id` of plugin type
    /// `plugin`.
    pub fn compile(
        plugin: &'static str,
        id: &LimitId,
        mode: ModeConfig,
        dynamic: Option<&DynamicConfig>,
        errs: &mut ConfigErrorList,
    ) -> Modes {
        let healthy_floor = dynamic.map(|d| {
            if !(d.floor.is_finite() && (0.0..=1.0).contains(&d.floor)) {
                errs.push((
                    "dynamic.floor".into(),
                    format!("must be a share between 0 and 1; got {}", d.floor),
                ));
            }
            match d.by {
                DynamicSource::HealthyTargets => Scale::from_fraction(d.floor),
            }
        });
        Modes {
            mode: match mode {
                ModeConfig::Enforce => Mode::Enforce,
                ModeConfig::Shadow => Mode::Shadow,
            },
            healthy_floor,
            label: format!("{}/{}", id.owner, id.plugin).into(),
            plugin,
        }
    }

    /// The share of its configured value the limit is at for this
    /// request: a whole for a static limit; for a dynamic one, the healthy
    /// share of the route's upstream (relaxed atomic loads, no lock),
    /// never below the floor.
    pub fn scale(&self, ctx: &RequestCtx) -> Scale {
        match (self.healthy_floor, &ctx.upstream) {
            (Some(floor), Some(up)) => {
                let (healthy, all) = up.cluster_healthy_weight();
                Scale::share(healthy, all, floor)
            }
            _ => Scale::FULL,
        }
    }
}

/// The verdict of a limit scaled to zero.
pub(super) fn closed() -> Verdict {
    Verdict::closed(CLOSED_RETRY_US)
}

/// The id a limit keeps its counts under: its config without `mode`, so
/// that switching a limit from `shadow` to `enforce` (or back) keeps what
/// it counted.
pub(super) fn limit_id(env: &BuildEnv, plugin: &str, v: &serde_yaml_ng::Value) -> LimitId {
    let mut v = v.clone();
    if let Some(m) = v.as_mapping_mut() {
        m.remove("mode");
    }
    env.limit_id(plugin, &v)
}

/// How long a key's state must outlive its last use: a window limit
/// needs the previous window too.
pub(super) fn idle_for(span: Duration) -> Duration {
    span.saturating_mul(2).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::PluginDef;

    fn env() -> BuildEnv {
        BuildEnv {
            consumers: Arc::default(),
            settings: Arc::default(),
            consumer_level: false,
            stores: crate::stores::BuildStores::scratch(),
            owner: crate::stores::Owner::Global,
            redis: None,
        }
    }

    fn errors(def: &PluginDef, yaml: &str) -> ConfigErrorList {
        match (def.build)(&serde_yaml_ng::from_str(yaml).unwrap(), &env()) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    fn one_error(def: &PluginDef, yaml: &str, field: &str, reason: &str) {
        let e = errors(def, yaml);
        assert!(
            e.len() == 1 && e[0].0 == field && e[0].1.contains(reason),
            "{yaml}: {e:?}"
        );
    }

    #[test]
    fn store_and_sync_are_checked_with_the_scope() {
        let count = &super::super::limit_count::DEF;
        for ok in [
            "{count: 5, time_window: 1s, scope: cluster, store: mesh}",
            "{count: 5, time_window: 1s, scope: region}",
        ] {
            assert_eq!(errors(count, ok), Vec::new(), "{ok}");
        }
        one_error(
            count,
            "{count: 5, time_window: 1s, sync: per_request}",
            "sync",
            "it needs `store: redis`",
        );
        one_error(
            count,
            "{count: 5, time_window: 1s, scope: node, store: mesh}",
            "store",
            "`store` applies to `scope: region` or `cluster`",
        );
        // No `redis:` section in the config.
        one_error(
            count,
            "{count: 5, time_window: 1s, store: redis}",
            "store",
            "needs the top-level `redis:` section",
        );
        one_error(
            count,
            "{count: 5, time_window: 1s, store: etcd}",
            "store",
            "unknown variant `etcd`",
        );
    }

    #[test]
    fn soft_mode_and_dynamic_are_validated_by_field() {
        let count = &super::super::limit_count::DEF;
        let req = &super::super::limit_req::DEF;
        for ok in [
            "{count: 5, time_window: 1s, soft: 4, mode: shadow}",
            "{count: 5, time_window: 1s, mode: enforce, dynamic: {by: healthy_targets}}",
            "{count: 5, time_window: 1s, dynamic: {by: healthy_targets, floor: 0}}",
        ] {
            assert_eq!(errors(count, ok), Vec::new(), "{ok}");
        }
        one_error(
            count,
            "{count: 5, time_window: 1s, soft: 5}",
            "soft",
            "must be at least 1 and below `count` (5); got 5",
        );
        one_error(
            count,
            "{count: 5, time_window: 1s, soft: 0}",
            "soft",
            "got 0",
        );
        one_error(
            count,
            "{count: 5, time_window: 1s, mode: dry-run}",
            "mode",
            "unknown variant `dry-run`",
        );
        one_error(
            count,
            "{count: 5, time_window: 1s, dynamic: {by: healthy_targets, floor: 1.5}}",
            "dynamic.floor",
            "must be a share between 0 and 1; got 1.5",
        );
        one_error(
            count,
            "{count: 5, time_window: 1s, dynamic: {by: moon_phase}}",
            "dynamic.by",
            "unknown variant `moon_phase`",
        );
        one_error(
            count,
            "{count: 5, time_window: 1s, dynamic: {floor: 0.5}}",
            "dynamic",
            "missing field `by`",
        );
        assert_eq!(
            errors(
                req,
                "{rate: 2, soft: 1.5, mode: shadow, dynamic: {by: healthy_targets}}"
            ),
            Vec::new()
        );
        one_error(
            req,
            "{rate: 2, soft: 2}",
            "soft",
            "below `rate` (2) requests per second; got 2",
        );
        one_error(req, "{rate: 2, soft: -1}", "soft", "got -1");
        one_error(
            req,
            "{rate: 2, dynamic: {by: healthy_targets, floor: -0.1}}",
            "dynamic.floor",
            "got -0.1",
        );
    }

    #[test]
    fn shadow_and_enforce_share_their_counts() {
        let e = env();
        let id = |y: &str| limit_id(&e, "limit-count", &serde_yaml_ng::from_str(y).unwrap());
        assert_eq!(
            id("{count: 5, time_window: 1s, mode: shadow}"),
            id("{count: 5, time_window: 1s}")
        );
        assert_ne!(
            id("{count: 5, time_window: 1s}"),
            id("{count: 6, time_window: 1s}")
        );
    }

    fn ctx() -> RequestCtx {
        RequestCtx::new(
            "r".into(),
            None,
            "127.0.0.1:1".parse().unwrap(),
            HeaderValue::from_static("id"),
        )
    }

    fn modes(mode: ModeConfig) -> Modes {
        let id = LimitId {
            owner: "route:r".into(),
            plugin: "limit-count".into(),
            config: 1,
        };
        let mut errs = Vec::new();
        let m = Modes::compile("limit-count", &id, mode, None, &mut errs);
        assert!(errs.is_empty());
        m
    }

    fn compiled() -> Compiled {
        Common {
            key: &[],
            rejected_code: 429,
            headers: true,
        }
        .compile(&mut Vec::new())
        .unwrap()
    }

    fn verdict(admitted: bool, remaining: u64) -> Verdict {
        Verdict {
            admitted,
            limit: 5,
            remaining,
            reset_us: 1_500_000,
            retry_after_us: 1_500_000,
            delay_us: 0,
        }
    }

    #[test]
    fn shadow_rejects_nothing_and_shows_nothing() {
        let (c, m) = (compiled(), modes(ModeConfig::Shadow));
        let mut x = ctx();
        assert!(decide(&verdict(true, 1), true, &c, &m, &mut x).is_ok());
        assert_eq!(ratelimit_decision(&x), Some(RateLimitDecision::OverSoft));
        assert!(decide(&verdict(false, 0), false, &c, &m, &mut x).is_ok());
        assert_eq!(
            ratelimit_decision(&x),
            Some(RateLimitDecision::ShadowRejected)
        );
        let mut h = HeaderMap::new();
        response_headers(&mut h, &x);
        assert!(h.is_empty(), "{h:?}");
        assert!(m.label.as_ref() == "route:r/limit-count");
    }

    #[test]
    fn enforced_soft_flags_the_response_and_keeps_the_quota_truthful() {
        let (c, m) = (compiled(), modes(ModeConfig::Enforce));
        let mut x = ctx();
        assert!(decide(&verdict(true, 1), true, &c, &m, &mut x).is_ok());
        let mut h = HeaderMap::new();
        response_headers(&mut h, &x);
        assert_eq!(h["weir-ratelimit-soft"], "limit-count");
        assert_eq!(h["ratelimit-remaining"], "1");
        assert_eq!(h["ratelimit-limit"], "5");
        assert_eq!(ratelimit_decision(&x), Some(RateLimitDecision::OverSoft));
        let Err(Early::Error {
            status, headers, ..
        }) = decide(&verdict(false, 0), false, &c, &m, &mut x)
        else {
            panic!("an enforced limit rejects");
        };
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(ratelimit_decision(&x), Some(RateLimitDecision::Rejected));
    }
}
