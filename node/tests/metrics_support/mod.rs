//! Helpers the gateway metrics tests share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::Method;
use weir_node::metrics::{
    AttemptMetrics, AttemptOutcome, CacheStatus, GatewayMetrics, Metrics, RateLimitDecision,
    RequestMetrics, RetryReason,
};
use weir_observability::config::MetricsConfig;

/// The Debian package that provides `promtool` and `prometheus`.
pub const PROMETHEUS_HINT: &str = "install Debian's `prometheus` package \
    (apt-get install -y --no-install-recommends prometheus); scripts/test does this";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives one level below the root")
        .to_path_buf()
}

/// Fails the test with an install hint when `tool` is not on PATH.
pub fn require_tool(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("`{tool}` is not on PATH: {PROMETHEUS_HINT}"))
}

/// Runs `promtool` with `args` and `stdin`, returning (success, output).
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let bin = require_tool("promtool");
    let mut child = Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    {
        let mut input = child.stdin.take().expect("stdin is piped");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("promtool reads stdin");
        }
    }
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A request as the proxy would record it.
pub fn request<'a>(route: &'a str, method: &'a Method, status: u16) -> RequestMetrics<'a> {
    RequestMetrics {
        route,
        service: "accounts",
        upstream: "users",
        method,
        status,
        duration: Duration::from_millis(12),
        upstream_duration: Some(Duration::from_millis(9)),
        bytes_in: 128,
        bytes_out: 2048,
    }
}

/// Metrics with every built-in family holding at least one series.
pub fn populated_metrics() -> Metrics {
    let m = Metrics::new(&MetricsConfig::default());
    for _ in 0..7 {
        m.record_request(&request("users", &Method::GET, 200));
    }
    m.record_request(&request("users", &Method::POST, 503));
    m.record_request(&RequestMetrics {
        route: "",
        service: "",
        upstream: "",
        upstream_duration: None,
        ..request("", &Method::GET, 404)
    });
    m.record_attempt(&AttemptMetrics {
        upstream: "users",
        target: "127.0.0.1:8081",
        outcome: AttemptOutcome::Status(200),
        duration: Duration::from_millis(8),
    });
    m.record_attempt(&AttemptMetrics {
        upstream: "users",
        target: "127.0.0.1:8082",
        outcome: AttemptOutcome::ConnectError,
        duration: Duration::from_millis(1),
    });
    m.record_retry("users", RetryReason::ConnectError);
    m.record_retry_budget_exhausted("users");
    m.set_target_health("users", "127.0.0.1:8081", true);
    m.set_target_health("users", "127.0.0.1:8082", false);
    m.record_auth_failure("users", "invalid");
    m.record_ratelimit("users", RateLimitDecision::Allowed);
    m.record_ratelimit("users", RateLimitDecision::Rejected);
    m.record_cache("users", CacheStatus::Hit, 2048);
    m.record_cache("users", CacheStatus::Miss, 0);
    m.inc_access_log_dropped();
    m.inc_access_log_lines(3);
    m.inc_spans_dropped(2);
    m.set_config_generation(4);
    m.record_config_reload(true);
    m.record_config_reload(false);
    m
}

/// Sample names (`name` before `{` or a space) of a text exposition.
pub fn sample_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}
