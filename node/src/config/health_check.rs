//! `upstreams[].health_check`: how a target is actively probed and how
//! many nodes probe it, with its defaults and checks. The prober itself is
//! `health`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a target is probed.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// An HTTP/1.1 `GET` of `path`; healthy when the status is expected.
    #[default]
    Http,
    /// A TCP connect; healthy when it succeeds.
    Tcp,
}

/// `upstreams[].health_check`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// Path of the HTTP check.
    pub path: String,
    /// Statuses that count as healthy.
    pub expected_statuses: Vec<u16>,
    /// `Host` header of the HTTP check; empty sends the target's address.
    pub host: String,
    /// Time between probes of one target by one prober.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub interval: Duration,
    /// How long a probe may take.
    #[serde(with = "crate::config::duration")]
    #[schema(value_type = String, example = "5s")]
    pub timeout: Duration,
    /// Consecutive successes that bring a target back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a target out.
    pub unhealthy_threshold: u32,
    /// How many nodes probe each target.
    pub probers: usize,
    /// Down reports needed to take a target out cluster-wide; absent means
    /// a majority of its probers.
    pub quorum: Option<usize>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Http,
            path: "/health".to_string(),
            expected_statuses: vec![200],
            host: String::new(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            probers: 2,
            quorum: None,
        }
    }
}

impl HealthCheckConfig {
    /// Problems as `(key, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, r: &str| p.push((k.to_string(), r.to_string()));
        if self.kind == CheckKind::Http
            && (!self.path.starts_with('/')
                || http::uri::PathAndQuery::try_from(self.path.as_str()).is_err())
        {
            push("path", "must be a path starting with `/`");
        }
        if self.kind == CheckKind::Http && self.expected_statuses.is_empty() {
            push("expected_statuses", "must list at least one status");
        }
        if self
            .expected_statuses
            .iter()
            .any(|s| !(100..=599).contains(s))
        {
            push("expected_statuses", "statuses must be between 100 and 599");
        }
        if !self.host.is_empty() && http::HeaderValue::from_str(&self.host).is_err() {
            push("host", "is not a valid Host header value");
        }
        if self.interval < Duration::from_millis(100) {
            push("interval", "must be at least 100ms");
        }
        if self.interval > super::duration::MAX_TIMEOUT {
            push("interval", "must be at most 1day");
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            push("timeout", "must be above zero and at most `interval`");
        }
        if self.healthy_threshold == 0 || self.healthy_threshold > 100 {
            push("healthy_threshold", "must be between 1 and 100");
        }
        if self.unhealthy_threshold == 0 || self.unhealthy_threshold > 100 {
            push("unhealthy_threshold", "must be between 1 and 100");
        }
        if self.probers == 0 || self.probers > 16 {
            push("probers", "must be between 1 and 16");
        }
        if let Some(q) = self.quorum
            && (q == 0 || q > self.probers)
        {
            push("quorum", "must be between 1 and `probers`");
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_each_bad_key() {
        let hc = HealthCheckConfig {
            path: "health".into(),
            expected_statuses: vec![],
            interval: Duration::from_millis(10),
            probers: 0,
            quorum: Some(3),
            ..HealthCheckConfig::default()
        };
        let keys: Vec<String> = hc.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "path",
                "expected_statuses",
                "interval",
                "timeout",
                "probers",
                "quorum"
            ]
        );
        assert!(HealthCheckConfig::default().validate().is_empty());
    }
}
