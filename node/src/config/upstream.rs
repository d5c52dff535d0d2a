//! `upstreams:`: targets, balancer, keepalive, timeouts, retries, retry
//! budget, passive health and sticky sessions, with their defaults and the
//! checks of one upstream. The active health check's own section is in
//! `health_check.rs`; pools and balancers built from this are elsewhere
//! (`upstream`, `balance`).

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HealthCheckConfig, Problems};

/// A group of targets and how to reach and balance them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique id, referenced by services and routes.
    pub id: String,
    /// The targets, `host:port` with a weight.
    pub targets: Vec<TargetConfig>,
    /// How a target is chosen.
    #[serde(default)]
    pub balancer: BalancerConfig,
    /// Protocol spoken to the targets.
    #[serde(default)]
    pub scheme: UpstreamScheme,
    /// Connection pool settings.
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    /// Timeouts for each attempt and for the whole request.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// Extra attempts after the first, each on a different target.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Caps retries to a share of the traffic.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// Passive health: failures on live traffic take a target out.
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    /// Session persistence through a cookie naming the target.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// Active health checks, sharded over the cluster.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Zone and region preference when targets carry `zone`/`region`
    /// labels and the node has a zone/region (`cluster.zone`,
    /// `cluster.region`).
    #[serde(default)]
    pub locality: Locality,
    /// The next tier (own zone → own region → every region) is used while
    /// the healthy weight of the nearer one is below this.
    #[serde(default = "default_locality_min_weight")]
    pub locality_min_weight: u32,
}

fn default_locality_min_weight() -> u32 {
    1
}

/// How a node weighs targets by region.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Locality {
    /// The nearest tier whose healthy weight is at least
    /// `locality_min_weight`: the node's zone, else its region, else every
    /// region.
    #[default]
    PreferLocal,
    /// The node's zone while it has that weight, else its region, even
    /// when none there is healthy; never another region.
    StrictLocal,
    /// Every target, whatever its region.
    None,
}

fn default_retries() -> u32 {
    1
}

/// One target of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `host:port`; the host may be a name, resolved when connecting.
    pub addr: String,
    /// Relative share of traffic; 0 keeps the target configured but unused.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Region label, for locality and region-aware health-check sharding.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Zone label, for locality inside a region.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
}

fn default_weight() -> u32 {
    1
}

/// Protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamScheme {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http,
    /// HTTP/2 over cleartext with prior knowledge, multiplexed.
    H2c,
}

/// Balancing algorithm and its parameters.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum BalancerConfig {
    /// Smooth weighted round robin (nginx semantics).
    #[default]
    RoundRobin,
    /// Fewest requests in flight relative to weight.
    LeastConn,
    /// Weighted random.
    Random,
    /// Consistent hashing (ketama) on a request key.
    ConsistentHash {
        /// What the hash key is taken from.
        hash_on: HashOn,
    },
    /// Peak-EWMA latency with power-of-two-choices.
    PeakEwma {
        /// How fast old latency observations decay.
        #[serde(default = "default_ewma_decay", with = "crate::config::duration")]
        #[schema(value_type = String, example = "10s")]
        decay: Duration,
    },
}

fn default_ewma_decay() -> Duration {
    Duration::from_secs(10)
}

/// The request part a consistent hash is computed over.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(
    deny_unknown_fields,
    tag = "source",
    content = "name",
    rename_all = "snake_case"
)]
pub enum HashOn {
    /// The client IP ("IP hash").
    Ip,
    /// A request header; a missing header hashes as empty.
    Header(String),
    /// A cookie; a missing cookie hashes as empty.
    Cookie(String),
    /// Path and query.
    Uri,
}

/// Upstream connection pool settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// Idle connections kept per target.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub idle_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            max_idle: 256,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Most idle connections kept per target: more than a process has file
/// descriptors for.
pub const MAX_IDLE: usize = 65_536;

/// Most retries a budget always allows per second.
pub const MAX_RETRIES_PER_SEC: u32 = 1_000_000;

/// Upstream timeouts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Establishing the TCP connection.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub connect: Duration,
    /// Longest gap while forwarding the request body to the upstream.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub send: Duration,
    /// Waiting for the response head, and the longest gap between two
    /// chunks of the response body.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub read: Duration,
    /// From the first attempt to the response head, retries included.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub total: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: Duration::from_secs(5),
            send: Duration::from_secs(60),
            read: Duration::from_secs(60),
            total: Duration::from_secs(120),
        }
    }
}

/// Retry budget: retries may add at most `ratio` of the requests, plus
/// `min_per_sec` so that low traffic can still retry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Share of requests that may be retried (0.0 to 1.0).
    pub ratio: f32,
    /// Retries always allowed per second.
    pub min_per_sec: u32,
    /// Window the ratio is measured over.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Passive health (nginx `max_fails` / `fail_timeout` semantics).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Failures within `fail_timeout` that take a target out; 0 disables.
    pub max_fails: u32,
    /// The window failures are counted in, and how long a target stays out.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub fail_timeout: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// Sticky sessions: the gateway sets a cookie naming the chosen target and
/// sends later requests carrying it to the same target while it is healthy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// Cookie name.
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// Cookie lifetime; absent means a session cookie.
    #[serde(default, with = "crate::config::duration")]
    #[schema(value_type = Option<String>, example = "1h")]
    pub ttl: Option<Duration>,
}

fn default_sticky_cookie() -> String {
    "weir_sticky".to_string()
}

impl UpstreamConfig {
    pub(super) fn validate(&self, at: &str, p: &mut Problems) {
        if self.targets.is_empty() {
            p.push(
                format!("{at}.targets"),
                "an upstream needs at least one target",
            );
        }
        if self.targets.len() > super::bounds::MAX_TARGETS_PER_UPSTREAM {
            p.push(
                format!("{at}.targets"),
                format!(
                    "{} targets; the limit (targets per upstream) is {}",
                    self.targets.len(),
                    super::bounds::MAX_TARGETS_PER_UPSTREAM
                ),
            );
        }
        if self.keepalive.max_idle > MAX_IDLE {
            p.push(
                format!("{at}.keepalive.max_idle"),
                format!("must be at most {MAX_IDLE}"),
            );
        }
        let long = super::duration::MAX_TIMEOUT;
        for (name, d) in [
            ("keepalive.idle_timeout", self.keepalive.idle_timeout),
            (
                "passive_health.fail_timeout",
                self.passive_health.fail_timeout,
            ),
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.send", self.timeouts.send),
            ("timeouts.read", self.timeouts.read),
            ("timeouts.total", self.timeouts.total),
        ] {
            super::duration::check_max(p, format!("{at}.{name}"), d, long);
        }
        if let BalancerConfig::PeakEwma { decay } = &self.balancer {
            super::duration::check_max(p, format!("{at}.balancer.decay"), *decay, long);
        }
        let mut seen = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let tat = format!("{at}.targets[{i}].addr");
            match parse_authority(&t.addr) {
                Ok(()) => {}
                Err(why) => p.push(tat.clone(), why),
            }
            if !seen.insert(t.addr.as_str()) {
                p.push(tat, format!("duplicate target `{}`", t.addr));
            }
            if t.weight > 10_000 {
                p.push(format!("{at}.targets[{i}].weight"), "must be at most 10000");
            }
            for (k, v) in [("region", &t.region), ("zone", &t.zone)] {
                if v.len() > 63
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    p.push(
                        format!("{at}.targets[{i}].{k}"),
                        "must be at most 63 characters of letters, digits, `-`, `_` or `.`",
                    );
                }
            }
        }
        for (k, why) in self.health_check.iter().flat_map(|h| h.validate()) {
            p.push(format!("{at}.health_check.{k}"), why);
        }
        // Each unit of weight is 160 points on a ketama ring: keep rings
        // (and reload times) small.
        if matches!(self.balancer, BalancerConfig::ConsistentHash { .. }) {
            for (i, t) in self.targets.iter().enumerate() {
                if t.weight > 100 {
                    p.push(
                        format!("{at}.targets[{i}].weight"),
                        "must be at most 100 with the consistent_hash balancer",
                    );
                }
            }
        }
        if !self.targets.is_empty() && self.targets.iter().all(|t| t.weight == 0) {
            p.push(
                format!("{at}.targets"),
                "at least one target needs a weight above 0",
            );
        }
        if let BalancerConfig::ConsistentHash {
            hash_on: HashOn::Header(n) | HashOn::Cookie(n),
        } = &self.balancer
            && n.is_empty()
        {
            p.push(format!("{at}.balancer.hash_on.name"), "must not be empty");
        }
        if let BalancerConfig::ConsistentHash {
            hash_on: HashOn::Header(n),
        } = &self.balancer
            && http::HeaderName::from_bytes(n.as_bytes()).is_err()
        {
            p.push(
                format!("{at}.balancer.hash_on.name"),
                format!("`{n}` is not a valid header name"),
            );
        }
        if let BalancerConfig::PeakEwma { decay } = &self.balancer
            && decay.is_zero()
        {
            p.push(format!("{at}.balancer.decay"), "must be greater than zero");
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("connect", t.connect),
            ("send", t.send),
            ("read", t.read),
            ("total", t.total),
        ] {
            if d.is_zero() {
                p.push(format!("{at}.timeouts.{name}"), "must be greater than zero");
            }
        }
        if self.retries > 10 {
            p.push(format!("{at}.retries"), "must be at most 10");
        }
        let b = &self.retry_budget;
        if !(0.0..=1000.0).contains(&b.ratio) || b.ratio.is_nan() {
            p.push(
                format!("{at}.retry_budget.ratio"),
                "must be between 0 and 1000",
            );
        }
        // tower's budget panics at i32::MAX; no budget needs a millionth of it.
        if b.min_per_sec > MAX_RETRIES_PER_SEC {
            p.push(
                format!("{at}.retry_budget.min_per_sec"),
                format!("must be at most {MAX_RETRIES_PER_SEC}"),
            );
        }
        if b.ttl < Duration::from_secs(1) || b.ttl > Duration::from_secs(60) {
            p.push(
                format!("{at}.retry_budget.ttl"),
                "must be between 1s and 60s",
            );
        }
        if self.passive_health.max_fails > 0 && self.passive_health.fail_timeout.is_zero() {
            p.push(
                format!("{at}.passive_health.fail_timeout"),
                "must be greater than zero",
            );
        }
        if let Some(ttl) = self.sticky.as_ref().and_then(|s| s.ttl)
            && ttl < Duration::from_secs(1)
        {
            // Max-Age is in whole seconds, and Max-Age=0 deletes the cookie.
            p.push(
                format!("{at}.sticky.ttl"),
                "must be at least 1s (omit it for a session cookie)",
            );
        }
        if let Some(s) = &self.sticky
            && (s.cookie.is_empty()
                || !s
                    .cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            p.push(
                format!("{at}.sticky.cookie"),
                "must be a non-empty token of letters, digits, `_`, `-`",
            );
        }
    }
}

/// Checks a `host:port` authority.
fn parse_authority(addr: &str) -> Result<(), String> {
    let auth: http::uri::Authority = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not a valid host:port"))?;
    if auth.port_u16().is_none() {
        return Err(format!("`{addr}` needs a port"));
    }
    if auth.as_str().contains('@') {
        return Err(format!("`{addr}` must not carry user info"));
    }
    Ok(())
}
