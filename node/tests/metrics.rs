//! The exposition checked by the real tools: `promtool check metrics`, a
//! real Prometheus server scraping it, and the deploy files (dashboard,
//! Prometheus and Collector configs) checked against what weir exposes.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package;
//! these tests install nothing and fail with a hint when it is missing.

mod metrics_support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_support::{
    populated_metrics, promtool, repo_root, request, require_tool, sample_names,
};
use tokio::time::Instant;
use weir_node::metrics::GatewayMetrics;
use weir_observability::metrics::{Format, Metrics};

/// Metric names the dashboard may use before weir exposes them.
const LATER_METRICS: &[&str] = &["weir_cluster_members"];

/// Prometheus start-up plus a few 1 s scrapes on a busy two-core machine.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(60);

// === the exposition itself ===

#[test]
fn promtool_accepts_the_exposition() {
    let m = populated_metrics();
    let _ = m.gauge(
        "weir_cluster_members",
        "Live cluster members seen by this node.",
    );
    let text = m.encode();
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok,
        "promtool check metrics failed:\n{out}\n--- exposition ---\n{text}"
    );
}

#[test]
fn the_exposition_has_every_documented_family() {
    let text = populated_metrics().encode();
    let names = sample_names(&text);
    for expected in [
        "weir_http_server_requests_total",
        "http_server_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_count",
        "weir_http_server_upstream_duration_seconds_bucket",
        "weir_http_server_request_body_bytes_total",
        "weir_http_server_response_body_bytes_total",
        "http_server_active_requests",
        "http_client_request_duration_seconds_bucket",
        "weir_upstream_target_up",
        "weir_upstream_retries_total",
        "weir_upstream_retry_budget_exhausted_total",
        "weir_auth_failures_total",
        "weir_ratelimit_decisions_total",
        "weir_cache_requests_total",
        "weir_cache_response_body_bytes_total",
        "weir_access_log_lines_total",
        "weir_access_log_dropped_total",
        "weir_trace_spans_dropped_total",
        "weir_config_generation",
        "weir_config_reloads_total",
        "weir_metrics_series_folded_total",
        "weir_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(
            names.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
    assert!(text.contains(
        r#"weir_http_server_requests_total{weir_route="users",weir_service="accounts",http_request_method="GET",http_response_status_class="2xx",weir_upstream="users"} 7"#
    ));
    assert!(text.contains(r#"weir_config_reloads_total{result="failed"} 1"#));
    assert!(text.contains("weir_config_generation 4\n"));
}

#[test]
fn docs_describe_every_exposed_family() {
    let docs = std::fs::read_to_string(repo_root().join("docs/observability.md"))
        .expect("docs/observability.md exists");
    let text = populated_metrics().encode();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(
                docs.contains(&format!("`{name}`")),
                "docs/observability.md does not describe `{name}`"
            );
        }
    }
}

// === a real Prometheus server ===

/// Kills and reaps the child when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `metrics` at `/metrics` like the admin listener does, and keeps
/// the `Accept` headers it saw.
async fn serve_metrics(metrics: Arc<Metrics>, accepts: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            let accepts = accepts.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let accept = req
                        .headers()
                        .get(header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    accepts
                        .lock()
                        .unwrap()
                        .push(accept.clone().unwrap_or_default());
                    let format = Format::from_accept(accept.as_deref());
                    let resp = Response::builder()
                        .header(header::CONTENT_TYPE, format.content_type())
                        .body(Full::new(Bytes::from(metrics.encode_as(format))))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Prometheus {
    _child: KillOnDrop,
    api: String,
    http: reqwest::Client,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = require_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: weir\n    static_configs:\n      \
                 - targets: ['{target}']\n        labels:\n          region: test-region\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            _child: KillOnDrop(child),
            api: format!("http://127.0.0.1:{port}/api/v1/query"),
            http: reqwest::Client::new(),
            log,
            _dir: dir,
        }
    }

    /// The query's JSON answer, or `None` while the server is not up.
    async fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let resp = self
            .http
            .get(&self.api)
            .query(&[("query", promql)])
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// The single value a vector query returns, once it returns one.
    async fn value(&self, promql: &str) -> Option<f64> {
        let v = self.query(promql).await?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls until `promql` returns `want`; fails with the server's log.
    async fn wait_value(&self, promql: &str, want: f64) {
        let deadline = Instant::now() + SCRAPE_DEADLINE;
        loop {
            if self.value(promql).await == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for `{promql}` to be {want}; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_request_counter() {
    let metrics = Arc::new(populated_metrics());
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let target = serve_metrics(metrics.clone(), accepts.clone()).await;
    let prom = Prometheus::start(target);

    let query = r#"weir_http_server_requests_total{weir_route="users",http_request_method="GET",http_response_status_class="2xx"}"#;
    prom.wait_value(query, 7.0).await;

    // New requests show up on a later scrape.
    for _ in 0..5 {
        metrics.record_request(&request("users", &Method::GET, 200));
    }
    prom.wait_value(query, 12.0).await;

    // The region label the scrape config adds is what the dashboard groups by.
    let by_region = r#"sum by (region) (weir_http_server_requests_total{region="test-region"})"#;
    let total = prom.value(by_region).await.expect("a per-region sum");
    assert_eq!(total, 14.0);
    let rss = prom
        .value("process_resident_memory_bytes")
        .await
        .expect("process metrics are scraped");
    assert!(rss > 0.0);

    // Prometheus asked for OpenMetrics, and got it.
    let seen = accepts.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|a| a.contains("application/openmetrics-text")),
        "{seen:?}"
    );

    // Every dashboard query is valid PromQL that this server accepts.
    for expr in dashboard_exprs() {
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$region", ".*")
            .replace("$route", ".*")
            .replace("$upstream", ".*");
        let answer = prom.query(&promql).await.expect("prometheus answers");
        assert_eq!(
            answer["status"], "success",
            "dashboard query `{expr}` failed: {answer}"
        );
    }
}

// === deploy files ===

fn dashboard() -> serde_json::Value {
    let path = repo_root().join("deploy/grafana/weir.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/weir.json exists");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every PromQL expression of every panel.
fn dashboard_exprs() -> Vec<String> {
    let mut out = Vec::new();
    let d = dashboard();
    for panel in d["panels"].as_array().expect("panels") {
        let nested = panel["panels"].as_array().cloned().unwrap_or_default();
        for p in std::iter::once(panel).chain(nested.iter()) {
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
        }
    }
    out
}

/// Metric names in a PromQL expression: identifiers outside label
/// matchers and grouping clauses that look like ours.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut prev_word = String::new();
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'{' {
            // Skip label matchers.
            while i < bytes.len() && bytes[i] != b'}' {
                i += 1;
            }
        } else if c == b'('
            && matches!(
                prev_word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            )
        {
            while i < bytes.len() && bytes[i] != b')' {
                i += 1;
            }
            prev_word.clear();
        } else if c == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            if ["weir_", "http_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                names.insert(word.to_string());
            }
            prev_word = word.to_string();
            continue;
        } else if !c.is_ascii_whitespace() {
            prev_word.clear();
        }
        i += 1;
    }
    names
}

#[test]
fn dashboard_queries_only_use_exposed_metrics() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let input = &d["__inputs"][0];
    assert_eq!(input["name"], "DS_PROMETHEUS");
    assert_eq!(input["pluginId"], "prometheus");

    let m = populated_metrics();
    let exposed = sample_names(&m.encode());
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 8, "the dashboard has its panels: {exprs:?}");
    let mut used = BTreeSet::new();
    for e in &exprs {
        used.extend(metric_names(e));
    }
    for name in &used {
        assert!(
            exposed.contains(name) || LATER_METRICS.contains(&name.as_str()),
            "the dashboard queries `{name}`, which weir does not expose"
        );
    }
    assert!(used.contains("weir_cluster_members"));
}

#[test]
fn metric_name_extraction_skips_labels() {
    let names = metric_names(
        r#"sum by (weir_route, region) (rate(weir_http_server_requests_total{http_response_status_class="5xx", weir_route=~"$route"}[$__rate_interval]))"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["weir_http_server_requests_total"]
    );
}

#[test]
fn deploy_yaml_files_parse() {
    for file in [
        "deploy/otel/collector.yaml",
        "deploy/prometheus/prometheus.yml",
    ] {
        let text = std::fs::read_to_string(repo_root().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(v.is_mapping(), "{file} is a mapping");
    }
    let collector: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/otel/collector.yaml")).unwrap(),
    )
    .unwrap();
    let receivers = &collector["receivers"]["otlp"]["protocols"];
    assert!(
        receivers["grpc"]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(":4317")
    );
    assert!(
        receivers["http"]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(":4318")
    );
    let pipeline = &collector["service"]["pipelines"]["traces"];
    assert_eq!(pipeline["receivers"][0], "otlp");
    assert!(
        pipeline["processors"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p == "batch")
    );
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let path = repo_root().join("deploy/prometheus/prometheus.yml");
    let (ok, out) = promtool(&["check", "config", path.to_str().unwrap()], None);
    assert!(ok, "promtool check config failed:\n{out}");
}
