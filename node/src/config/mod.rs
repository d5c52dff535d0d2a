//! The declarative configuration: what `weir serve --config FILE` reads,
//! what the admin API stores as documents, and what `weir validate -f FILE`
//! checks.
//!
//! Plain data at the bottom of the node: serde types with
//! `deny_unknown_fields` ([`parse_str`] reads YAML and reports a problem
//! with its path and `line:column`), and the checks that need nothing but
//! the config ([`Config::validate_local`]). Nothing here imports the rest
//! of the node: the checks that need the router, consumers or plugins, and
//! compiling a config into a snapshot, are `compile` and `snapshot`. The
//! data path never sees these types.
//!
//! - `settings.rs`: `settings:`;
//! - `upstream.rs` and `health_check.rs`: `upstreams:`;
//! - `route.rs`: `services:` and `routes:`;
//! - `consumer.rs`: `consumers:` and `subscriptions:`;
//! - `cluster.rs`: `cluster:`;
//! - `redis:` is `weir_storage::redis_store::RedisSettings`, validated here;
//! - `errors.rs`: problems and their paths;
//! - `duration.rs`: durations, with their upper bounds;
//! - `bounds.rs`: the limits on input size, nesting, alias expansion and
//!   counts, checked before a document is deserialized.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod bounds;
mod cluster;
mod consumer;
pub mod duration;
mod errors;
mod health_check;
mod route;
mod settings;
mod upstream;

pub(crate) use cluster::is_label;
pub use cluster::{ClusterConfig, DEFAULT_GOSSIP_PORT};
pub use consumer::{
    BasicCredential, ConsumerConfig, CredentialsConfig, HmacCredential, JwtCredential,
    KeyCredential, SubscriptionConfig, SubscriptionState,
};
pub use errors::{ConfigErrors, ConfigProblem};
pub(crate) use errors::{Problems, locate_problems};
pub use health_check::{CheckKind, HealthCheckConfig};
pub use route::{
    EscapedSlashes, HostHeader, LifecycleConfig, LifecycleStatus, RouteConfig, ServiceConfig,
    ValueMatch, ValueRule, VersionMatch, VersionSource,
};
pub use settings::{ConsumerHeaders, MAX_HEADER_COUNT, Settings};
pub use upstream::{
    BalancerConfig, HashOn, KeepaliveConfig, Locality, MAX_RETRIES_PER_SEC, PassiveHealthConfig,
    RetryBudgetConfig, StickyConfig, TargetConfig, TimeoutConfig, UpstreamConfig, UpstreamScheme,
};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of the file. Only `1` exists.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Process-wide settings: listeners, workers, timeouts.
    #[serde(default)]
    pub settings: Settings,
    /// Upstreams: groups of targets behind a balancer.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Services: an upstream plus settings shared by several routes.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Routes: what requests match and where they go.
    #[serde(default)]
    pub routes: Vec<Arc<RouteConfig>>,
    /// Traces, metrics and the access log.
    #[serde(default)]
    pub observability: weir_observability::config::ObservabilityConfig,
    /// Gossip membership; absent means this node runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// Plugins for every route; a service's or route's own entry of the
    /// same name replaces it (see `docs/plugins.md`).
    #[serde(default)]
    pub plugins: PluginMap,
    /// Consumers: named API clients and their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Subscriptions of consumers to routes and services.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Where Redis is, for limits with `store: redis` (ADR 0034); absent
    /// means no Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<weir_storage::redis_store::RedisSettings>,
}

/// A `plugins:` map in config: plugin name → that plugin's config.
pub type PluginMap = BTreeMap<String, serde_yaml_ng::Value>;

fn default_version() -> u32 {
    1
}

impl Default for Config {
    /// The embedded default: version 1, default settings, no routes.
    fn default() -> Self {
        Config {
            version: default_version(),
            settings: Settings::default(),
            upstreams: Vec::new(),
            services: Vec::new(),
            routes: Vec::new(),
            observability: Default::default(),
            plugins: Default::default(),
            consumers: Vec::new(),
            cluster: None,
            subscriptions: Vec::new(),
            redis: None,
        }
    }
}

// === loading ===

/// Parses a YAML document into a [`Config`], without checking it (that is
/// `compile::validate`). A problem is reported with its field path, and
/// with `line:column` where the YAML parser knows it. Every unknown field
/// is reported, not only the first. A document over the bounds of
/// [`bounds`] is refused before it is deserialized.
pub fn parse_str(src: &str) -> Result<Config, ConfigErrors> {
    if src.trim().is_empty() {
        return Ok(Config::default());
    }
    check_bounds(src)?;
    let de = serde_yaml_ng::Deserializer::from_str(src);
    let config: Config = match serde_path_to_error::deserialize(de) {
        Ok(c) => c,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let location = inner.location().map(|l| (l.line(), l.column()));
            let first = problem_of(path, location, inner.to_string());
            let mut problems = vec![first];
            if problems[0].reason.starts_with("unknown field") {
                problems.extend(more_unknown_fields(src, &problems[0].path));
            }
            return Err(ConfigErrors(problems));
        }
    };
    Ok(config)
}

/// `src` within the size, nesting and alias-expansion bounds, or the
/// problem (a YAML syntax error is reported as one, at its position).
fn check_bounds(src: &str) -> Result<(), ConfigErrors> {
    match bounds::check(src) {
        Ok(()) => Ok(()),
        Err(bounds::Refused::Limit(reason, location)) => Err(ConfigErrors(vec![ConfigProblem {
            path: "(document)".into(),
            location,
            reason,
        }])),
        // YAML that does not parse is a syntax error at its position, not
        // a problem of whatever field the parser was in when it stopped.
        Err(bounds::Refused::Syntax(e)) => {
            let mut reason = e.to_string();
            if let Some(i) = reason.find(" at line ") {
                reason.truncate(i);
            }
            Err(ConfigErrors(vec![ConfigProblem {
                path: String::new(),
                location: e.location().map(|l| (l.line(), l.column())),
                reason: format!("YAML syntax error: {reason}"),
            }]))
        }
    }
}

/// A deserialization error as a problem: the path once, the location
/// apart from the reason.
fn problem_of(path: String, location: Option<(usize, usize)>, reason: String) -> ConfigProblem {
    // serde_yaml_ng appends " at line X column Y"; the location is
    // reported separately.
    let mut reason = reason;
    if let Some(i) = reason.find(" at line ") {
        reason.truncate(i);
    }
    let path = if path == "." {
        "(document)".to_string()
    } else {
        path
    };
    // The YAML parser may start its message with (part of) the path; say
    // the path once.
    if let Some((head, rest)) = reason.split_once(": ")
        && path.starts_with(head)
    {
        reason = rest.to_string();
    }
    ConfigProblem {
        path,
        location,
        reason,
    }
}

/// Most unknown fields reported for one document.
const MAX_UNKNOWN_FIELDS: usize = 100;

/// The unknown fields of `src` after the first (at `first`): the first is
/// taken out and the document read again, until it reads or fails for
/// another reason.
fn more_unknown_fields(src: &str, first: &str) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    let Ok(mut doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(src) else {
        return out;
    };
    let mut gone = first.to_string();
    while out.len() < MAX_UNKNOWN_FIELDS && errors::remove_at(&mut doc, &gone) {
        let Err(e) = serde_path_to_error::deserialize::<_, Config>(doc.clone()) else {
            break;
        };
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        if !reason.starts_with("unknown field") {
            break;
        }
        let mut p = problem_of(path, None, reason);
        p.location = errors::locate(src, &p.path);
        gone = p.path.clone();
        out.push(p);
    }
    out
}

/// Parses a YAML document (a `/v1/apply` body) into JSON, within the
/// bounds of [`bounds`].
pub fn parse_value(src: &str) -> Result<serde_json::Value, ConfigErrors> {
    check_bounds(src)?;
    serde_yaml_ng::from_str(src).map_err(|e| {
        let location = e.location().map(|l| (l.line(), l.column()));
        ConfigErrors(vec![problem_of(".".into(), location, e.to_string())])
    })
}

/// Reads and parses a config file, without checking it.
pub fn parse_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    parse_str(&read_file(path)?)
}

/// Reads a config file, refusing one over the document size bound before
/// reading it.
pub fn read_file(path: &std::path::Path) -> Result<String, ConfigErrors> {
    let cannot = |e: std::io::Error| {
        ConfigErrors::one(path.display().to_string(), format!("cannot read file: {e}"))
    };
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > bounds::MAX_DOCUMENT_BYTES as u64 {
        return Err(ConfigErrors::one(
            path.display().to_string(),
            format!(
                "the file is {len} bytes; the limit (document size) is {} bytes ({} MiB)",
                bounds::MAX_DOCUMENT_BYTES,
                bounds::MAX_DOCUMENT_BYTES >> 20
            ),
        ));
    }
    std::fs::read_to_string(path).map_err(cannot)
}

// === validation ===

impl Config {
    /// The checks of this document alone, before anything is compiled:
    /// version, settings, cluster and observability sections, and the
    /// upstreams and services (ids, references, values). Routes, consumers
    /// and plugins are checked as they are compiled
    /// (`snapshot::compile`, which runs these too). Returns every problem,
    /// not just the first.
    pub fn validate_local(&self) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        self.check(&mut p);
        p.into_result()
    }

    /// Runs the checks of [`Config::validate_local`] into `p`. Returns,
    /// for each upstream, whether it passed (only those are built).
    pub(crate) fn check(&self, p: &mut Problems) -> Vec<bool> {
        if self.version != 1 {
            p.push(
                "version",
                format!(
                    "unsupported config version {}; this weir reads version 1",
                    self.version
                ),
            );
        }
        self.settings.validate(p);
        for (path, reason) in self.cluster.iter().flat_map(|c| c.validate()) {
            p.push(format!("cluster.{path}"), reason);
        }
        for (path, reason) in self.observability.validate() {
            p.push(format!("observability.{path}"), reason);
        }
        if let Some(Err(e)) = self.redis.as_ref().map(|r| r.validate()) {
            p.push(format!("redis.{}", e.field), e.reason);
        }

        let mut upstream_ids = HashSet::new();
        let mut upstream_ok = Vec::with_capacity(self.upstreams.len());
        for (i, u) in self.upstreams.iter().enumerate() {
            let before = p.0.len();
            let at = format!("upstreams[{i}]");
            check_id(p, &at, &u.id);
            if !upstream_ids.insert(u.id.as_str()) {
                p.push(
                    format!("{at}.id"),
                    format!("duplicate upstream id `{}`", u.id),
                );
            }
            u.validate(&at, p);
            upstream_ok.push(p.0.len() == before);
        }
        check_routes(&self.routes, p);
        let mut service_ids = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            check_id(p, &at, &s.id);
            if !service_ids.insert(s.id.as_str()) {
                p.push(
                    format!("{at}.id"),
                    format!("duplicate service id `{}`", s.id),
                );
            }
            if !upstream_ids.contains(s.upstream.as_str()) {
                p.push(
                    format!("{at}.upstream"),
                    format!("no upstream with id `{}`", s.upstream),
                );
            }
            if let Some(h) = &s.host_header {
                check_host_header(p, &format!("{at}.host_header"), h);
            }
        }
        upstream_ok
    }
}

/// The bounds on routes: how many, how many paths each, and paths that
/// can never match (too long, or with a dot segment, which a request path
/// never has once it is resolved).
fn check_routes(routes: &[Arc<RouteConfig>], p: &mut Problems) {
    use bounds::{MAX_PATH_BYTES, MAX_PATHS_PER_ROUTE, MAX_ROUTES};
    if routes.len() > MAX_ROUTES {
        p.push(
            "routes",
            format!(
                "{} routes; the limit (routes) is {MAX_ROUTES}",
                routes.len()
            ),
        );
    }
    for (i, r) in routes.iter().enumerate() {
        if r.paths.len() > MAX_PATHS_PER_ROUTE {
            p.push(
                format!("routes[{i}].paths"),
                format!(
                    "{} paths; the limit (paths per route) is {MAX_PATHS_PER_ROUTE}",
                    r.paths.len()
                ),
            );
            continue;
        }
        for (j, path) in r.paths.iter().enumerate() {
            let at = format!("routes[{i}].paths[{j}]");
            if path.len() > MAX_PATH_BYTES {
                p.push(
                    at,
                    format!(
                        "the path is {} bytes; the limit (path length) is {MAX_PATH_BYTES} bytes",
                        path.len()
                    ),
                );
            } else if let Some(seg) = dot_segment(path) {
                p.push(
                    at,
                    format!(
                        "`{path}` has the dot segment `{seg}`: request paths are resolved before routing, so it can never match"
                    ),
                );
            }
        }
    }
}

/// The first segment of `path` that is `.` or `..`, percent-encoded or
/// not.
fn dot_segment(path: &str) -> Option<&str> {
    path.split('/').find(|s| {
        let lower = s.to_ascii_lowercase();
        let decoded = lower.replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

pub(crate) fn check_id(p: &mut Problems, at: &str, id: &str) {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        p.push(
            format!("{at}.id"),
            format!("`{id}` is not a valid id: use 1 to 128 of letters, digits, `-`, `_`, `.`"),
        );
    }
}

pub(crate) fn check_host_header(p: &mut Problems, at: &str, h: &HostHeader) {
    if let HostHeader::Rewrite(v) = h
        && http::HeaderValue::from_str(v).is_err()
    {
        p.push(at, format!("`{v}` is not a valid Host header value"));
    }
}

#[cfg(test)]
mod redis_section_tests {
    use super::*;

    #[test]
    fn a_redis_section_is_read_and_its_bad_fields_are_named() {
        let c =
            parse_str("redis:\n  urls: [\"rediss://r.example:6380\"]\n  response_timeout: 100ms\n")
                .unwrap();
        c.validate_local().unwrap();
        let r = c.redis.as_ref().unwrap();
        assert_eq!(r.response_timeout, std::time::Duration::from_millis(100));
        assert!(parse_str("version: 1\n").unwrap().redis.is_none());

        let c =
            parse_str("redis:\n  urls: [\"redis://:pw@r:1\"]\n  response_timeout: 0s\n").unwrap();
        let e = c.validate_local().unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["redis.urls[0]"],
            "the first problem of the section: {e}"
        );
        let e = parse_str("redis:\n  password: hunter2\n").unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
    }
}
