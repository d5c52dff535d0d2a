//! Observability through the real binary: what a proxied request leaves
//! behind in `/metrics`, in a real Prometheus server, in the JSON access
//! log and at a real OTLP receiver.

mod common;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{one_upstream, sample, weir_bin};
use weir_testsupport::{
    Behaviour, Gateway, OtlpReceiver, ReceivedSpan, Signal, SpanKind, SpanStatus, Upstream,
    http_client, unused_addr, wait_for, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

async fn start(yaml: &str) -> Gateway {
    Gateway::start(weir_bin(), &Gateway::config(yaml))
        .await
        .expect("weir starts")
}

async fn metrics_text(gw: &Gateway) -> String {
    let resp = http_client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

// === metrics ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_are_counted_by_route_status_and_upstream() {
    let up = Upstream::start("up").await;
    let gw = start(&one_upstream(&[up.target()], "")).await;
    let c = http_client();
    for _ in 0..5 {
        let r = c.get(gw.url("/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    for _ in 0..2 {
        let r = c
            .post(gw.url("/status/404"))
            .body("12345")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        r.bytes().await.unwrap();
    }

    // Requests are recorded when their body is done, which is before the
    // client sees the end of it; still, wait rather than assume.
    let text = wait_for("7 requests counted", WAIT, || async {
        let t = metrics_text(&gw).await;
        let ok = sample(
            &t,
            "weir_http_server_requests_total",
            &[("weir_route", "all"), ("http_response_status_class", "2xx")],
        );
        let nf = sample(
            &t,
            "weir_http_server_requests_total",
            &[("weir_route", "all"), ("http_response_status_class", "4xx")],
        );
        (ok == Some(5.0) && nf == Some(2.0)).then_some(t)
    })
    .await;
    let get_2xx = [
        ("weir_route", "all"),
        ("http_request_method", "GET"),
        ("http_response_status_class", "2xx"),
        ("weir_upstream", "u"),
    ];
    assert_eq!(
        sample(
            &text,
            "http_server_request_duration_seconds_count",
            &get_2xx
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            "weir_http_server_upstream_duration_seconds_count",
            &get_2xx
        ),
        Some(5.0)
    );
    let post_4xx = [
        ("http_request_method", "POST"),
        ("http_response_status_class", "4xx"),
    ];
    assert_eq!(
        sample(
            &text,
            "weir_http_server_request_body_bytes_total",
            &post_4xx
        ),
        Some(10.0),
        "two 5-byte bodies"
    );
    assert!(
        sample(
            &text,
            "weir_http_server_response_body_bytes_total",
            &get_2xx
        )
        .is_some_and(|b| b > 0.0)
    );
    let target = up.target();
    assert_eq!(
        sample(
            &text,
            "http_client_request_duration_seconds_count",
            &[("weir_target", target.as_str()), ("outcome", "2xx")]
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            "weir_upstream_target_up",
            &[("weir_target", target.as_str())]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "http_server_active_requests", &[]), Some(0.0));
    // No raw path ever becomes a label.
    assert!(!text.contains("/ok") && !text.contains("/status/404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_failures_and_target_health_show_in_metrics() {
    let bad = Upstream::start_with("bad", Behaviour::failing(503)).await;
    let dead = unused_addr().to_string();
    let gw = start(&one_upstream(
        &[bad.target(), dead.clone()],
        "    retries: 1\n    passive_health: {max_fails: 1, fail_timeout: 60s}\n",
    ))
    .await;
    let r = http_client().get(gw.url("/x")).send().await.unwrap();
    // Round robin picks either order; the client gets the last failure: the
    // upstream's own 503, or a 502 for the connect error.
    assert!(matches!(r.status().as_u16(), 502 | 503), "{}", r.status());
    let text = metrics_text(&gw).await;
    let retries: f64 = ["status", "connect_error"]
        .iter()
        .filter_map(|reason| {
            sample(
                &text,
                "weir_upstream_retries_total",
                &[("weir_upstream", "u"), ("reason", reason)],
            )
        })
        .sum();
    assert_eq!(retries, 1.0, "one retry:\n{text}");
    assert_eq!(
        sample(
            &text,
            "http_client_request_duration_seconds_count",
            &[("weir_target", dead.as_str()), ("outcome", "connect_error")]
        ),
        Some(1.0)
    );
    // max_fails 1: both targets are out of rotation now.
    for t in [bad.target(), dead] {
        assert_eq!(
            sample(
                &text,
                "weir_upstream_target_up",
                &[("weir_target", t.as_str())]
            ),
            Some(0.0),
            "{t} should be down:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_counted_and_removed_targets_lose_their_series() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = start(&one_upstream(&[a.target(), b.target()], "")).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        sample(
            &text,
            "weir_upstream_target_up",
            &[("weir_target", b.target().as_str())]
        ),
        Some(1.0)
    );

    gw.rewrite_config(&Gateway::config(&one_upstream(&[a.target()], "")))
        .unwrap();
    // A scrape that began before the reload published may show the count
    // with the old generation: wait for both.
    let text = wait_for("the reload is counted and published", WAIT, || async {
        let t = metrics_text(&gw).await;
        (sample(&t, "weir_config_reloads_total", &[("result", "ok")]) == Some(1.0)
            && sample(&t, "weir_config_generation", &[]) == Some(2.0))
        .then_some(t)
    })
    .await;
    assert!(
        !text.contains(&b.target()),
        "a removed target keeps its series:\n{text}"
    );

    gw.rewrite_config("upstreams: [oops").unwrap();
    wait_until("the failed reload is counted", WAIT, || async {
        let t = metrics_text(&gw).await;
        sample(&t, "weir_config_reloads_total", &[("result", "failed")]) == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_switched_off() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "{}observability:\n  metrics: {{enabled: false}}\n",
        one_upstream(&[up.target()], "")
    );
    let gw = start(&yaml).await;
    let r = http_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m = http_client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 404);
}

/// Runs `promtool check metrics` on `text`.
fn promtool_check(text: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package `prometheus`; ./scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_nodes_metrics_pass_promtool() {
    let up = Upstream::start("up").await;
    let gw = start(&one_upstream(
        &[up.target(), unused_addr().to_string()],
        "    retries: 1\n",
    ))
    .await;
    let c = http_client();
    for path in ["/a", "/status/500", "/status/302", "/b"] {
        c.get(gw.url(path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let text = metrics_text(&gw).await;
    let out = promtool_check(&text);
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus server on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(scrape: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
                 scrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: ['{scrape}']\n"
            ),
        )
        .unwrap();
        // Prometheus has no port 0: take a free port and hand it over.
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (Debian package `prometheus`; ./scripts/test installs it)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query with a single result.
    async fn query(&self, q: &str) -> Option<String> {
        let resp = http_client()
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", q)])
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = resp.json().await.ok()?;
        let result = v["data"]["result"].as_array()?;
        Some(result.first()?["value"][1].as_str()?.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_request_counter() {
    let up = Upstream::start("up").await;
    let gw = start(&one_upstream(&[up.target()], "")).await;
    let c = http_client();
    for _ in 0..7 {
        c.get(gw.url("/x"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let prom = Prometheus::start(gw.admin_addr());
    let query = r#"sum(weir_http_server_requests_total{job="weir",weir_route="all",http_response_status_class="2xx"})"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if prom.query(query).await.as_deref() == Some("7") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw 7 requests; last answer {:?}\n{}",
            prom.query(query).await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The scrape itself is healthy.
    assert_eq!(prom.query(r#"up{job="weir"}"#).await.as_deref(), Some("1"));
}

// === access log ===

const SECRETS: [&str; 5] = [
    "Bearer-s3cr3t-token-1",
    "qk-secret-2",
    "ck-secret-3",
    "dXNlcjpwYXNzLXNlY3JldC00", // base64 of user:pass-secret-4
    "pass-secret-4",
];

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_and_carry_no_credentials() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "{}observability:\n  access_log: {{enabled: true, target: !file {}}}\n",
        one_upstream(&[up.target()], ""),
        log.display()
    );
    let gw = start(&yaml).await;
    let c = http_client();
    let r = c
        .get(gw.url(&format!("/items/7?api_key={}", SECRETS[1])))
        .header("authorization", format!("Bearer {}", SECRETS[0]))
        .header("cookie", format!("session={}", SECRETS[2]))
        .header("x-request-id", "req-one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = c
        .post(gw.url("/upload"))
        .basic_auth("user", Some(SECRETS[4]))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    let post_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    r.bytes().await.unwrap();
    let r = c
        .get(gw.url("/status/503"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    r.bytes().await.unwrap();

    let lines = wait_for("3 access-log lines", WAIT, || async {
        let l = read_lines(&log);
        (l.len() >= 3).then_some(l)
    })
    .await;
    assert_eq!(lines.len(), 3);
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-one");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/items/7", "the query is never logged");
    assert_eq!(first["route"], "all");
    assert_eq!(first["status"], 200);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["upstream"], up.target());
    assert!(first["duration_ms"].as_f64().is_some());
    assert!(first["upstream_ms"].as_f64().is_some());
    assert!(first["bytes_out"].as_u64().is_some_and(|b| b > 0));
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let second = &lines[1];
    assert_eq!(second["request_id"], post_id.as_str());
    assert_eq!(second["bytes_in"], 1000);
    let third = &lines[2];
    assert_eq!(third["status"], 503);
    assert_eq!(third["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let raw = std::fs::read_to_string(&log).unwrap();
    let gateway_log = gw.log();
    for secret in SECRETS {
        assert!(!raw.contains(secret), "access log leaks {secret}:\n{raw}");
        assert!(
            !gateway_log.contains(secret),
            "gateway log leaks {secret}:\n{gateway_log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_are_configurable_and_flushed_on_shutdown() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "{}observability:\n  access_log:\n    enabled: true\n    target: !file {}\n    fields: [status, route, method]\n",
        one_upstream(&[up.target()], ""),
        log.display()
    );
    let mut gw = start(&yaml).await;
    let r = http_client().delete(gw.url("/x")).send().await.unwrap();
    r.bytes().await.unwrap();
    gw.signal(Signal::Term).unwrap();
    gw.wait_exit(WAIT).await.unwrap();
    // Shutdown flushes: the line is there without waiting for the timer.
    let lines = read_lines(&log);
    assert_eq!(
        lines,
        vec![serde_json::json!({"status": 200, "route": "all", "method": "DELETE"})]
    );
}

// === traces ===

fn traced(upstream_yaml: &str, receiver: &OtlpReceiver, extra: &str) -> String {
    let protocol = match receiver.protocol() {
        weir_testsupport::ReceiverKind::HttpProtobuf => "http/protobuf",
        _ => "grpc",
    };
    format!(
        "{upstream_yaml}observability:\n  tracing:\n    enabled: true\n    endpoint: {}\n    protocol: {protocol}\n    scheduled_delay: 50ms\n    export_timeout: 2s\n{extra}",
        receiver.endpoint()
    )
}

fn of_kind(spans: &[ReceivedSpan], kind: SpanKind) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.kind == kind).collect()
}

/// (trace id, parent span id, flags) of a `traceparent`.
fn parse_tp(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "bad traceparent {v}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

async fn one_traced_request(receiver: OtlpReceiver) {
    let up = Upstream::start("up").await;
    let yaml = traced(
        "upstreams:\n  - id: u\n    targets: [{addr: \"TARGET\"}]\nservices:\n  - {id: svc, upstream: u}\nroutes:\n  - {id: users, paths: [\"/users/:id\", \"/people/:id\"], service: svc}\n"
            .replace("TARGET", &up.target())
            .as_str(),
        &receiver,
        "",
    );
    let gw = start(&yaml).await;
    let r = http_client()
        .get(gw.url("/people/42?q=secret"))
        .header("user-agent", "obs-test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last_request_headers().unwrap();
    r.bytes().await.unwrap();

    let spans = receiver.wait_for_spans(2, WAIT).await;
    let servers = of_kind(&spans, SpanKind::Server);
    let clients = of_kind(&spans, SpanKind::Client);
    assert_eq!((servers.len(), clients.len()), (1, 1), "{spans:#?}");
    let (server, client) = (servers[0], clients[0]);
    assert_eq!(server.name, "GET /people/:id");
    assert_eq!(server.parent_span_id, None);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(
        client.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );
    assert_eq!(server.str_attr("http.request.method"), Some("GET"));
    assert_eq!(server.str_attr("url.path"), Some("/people/42"));
    assert_eq!(server.str_attr("http.route"), Some("/people/:id"));
    assert_eq!(server.int_attr("http.response.status_code"), Some(200));
    assert_eq!(server.str_attr("client.address"), Some("127.0.0.1"));
    assert_eq!(server.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(server.str_attr("weir.route.id"), Some("users"));
    assert_eq!(server.str_attr("weir.service.id"), Some("svc"));
    assert!(server.str_attr("weir.node.id").is_some());
    assert_eq!(server.resource_str("service.name"), Some("weir"));
    assert!(server.resource_str("service.instance.id").is_some());
    assert_ne!(server.status, SpanStatus::Error);
    assert_eq!(
        client.str_attr("weir.upstream.target"),
        Some(up.target().as_str())
    );
    assert_eq!(client.str_attr("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(client.int_attr("http.response.status_code"), Some(200));
    // No query anywhere in the span.
    assert!(!format!("{spans:?}").contains("secret"));

    // The upstream was told the exported trace and the CLIENT span.
    let tp = seen["traceparent"].to_str().unwrap();
    let (trace, parent, flags) = parse_tp(tp);
    assert_eq!(trace, server.trace_id);
    assert_eq!(parent, client.span_id);
    assert_eq!(flags, "01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_exports_server_and_client_spans_over_grpc() {
    one_traced_request(OtlpReceiver::grpc().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_exports_server_and_client_spans_over_http_protobuf() {
    one_traced_request(OtlpReceiver::http().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_trace_is_continued_and_retries_show_as_two_client_spans() {
    let receiver = OtlpReceiver::grpc().await;
    let a = Upstream::start_with("a", Behaviour::failing(503)).await;
    let b = Upstream::start_with("b", Behaviour::failing(503)).await;
    let yaml = traced(
        &one_upstream(
            &[a.target(), b.target()],
            "    retries: 1\n    passive_health: {max_fails: 0}\n",
        ),
        &receiver,
        "",
    );
    let gw = start(&yaml).await;
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let r = http_client()
        .get(gw.url("/x"))
        .header(
            "traceparent",
            format!("00-{client_trace}-b7ad6b7169203331-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    r.bytes().await.unwrap();

    let spans = receiver.wait_for_spans(3, WAIT).await;
    let servers = of_kind(&spans, SpanKind::Server);
    let clients = of_kind(&spans, SpanKind::Client);
    assert_eq!((servers.len(), clients.len()), (1, 2), "{spans:#?}");
    let server = servers[0];
    assert_eq!(server.trace_id, client_trace);
    assert_eq!(server.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(server.status, SpanStatus::Error);
    assert_eq!(server.int_attr("http.response.status_code"), Some(503));
    for c in &clients {
        assert_eq!(c.parent_span_id.as_deref(), Some(server.span_id.as_str()));
        assert_eq!(c.int_attr("http.response.status_code"), Some(503));
    }
    let resends: Vec<Option<i64>> = clients
        .iter()
        .map(|c| c.int_attr("http.request.resend_count"))
        .collect();
    assert!(
        resends.contains(&None) && resends.contains(&Some(1)),
        "{resends:?}"
    );
    // Each target saw its own attempt's span as parent.
    for up in [&a, &b] {
        let h = up.last_request_headers().unwrap();
        let (trace, parent, _) = parse_tp(h["traceparent"].to_str().unwrap());
        assert_eq!(trace, client_trace);
        assert!(clients.iter().any(|c| c.span_id == parent));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_ratio_zero_exports_nothing_but_still_propagates() {
    let receiver = OtlpReceiver::grpc().await;
    let up = Upstream::start("up").await;
    let yaml = traced(
        &one_upstream(&[up.target()], ""),
        &receiver,
        "    sample_ratio: 0.0\n",
    );
    let mut gw = start(&yaml).await;
    let c = http_client();
    // A new trace: the upstream gets a valid, unsampled traceparent.
    let r = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let h = up.last_request_headers().unwrap();
    let (trace, _, flags) = parse_tp(h["traceparent"].to_str().unwrap());
    assert_eq!(flags, "00");
    assert_ne!(trace, "0".repeat(32));
    // An unsampled parent: its trace goes on, unsampled.
    let parent = "11111111111111111111111111111111";
    let r = c
        .get(gw.url("/y"))
        .header("traceparent", format!("00-{parent}-2222222222222222-00"))
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap();
    let h = up.last_request_headers().unwrap();
    let (trace, span, flags) = parse_tp(h["traceparent"].to_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (parent, "00"));
    assert_ne!(span, "2222222222222222", "the gateway is a hop of its own");

    // A graceful stop flushes whatever was queued: nothing was.
    gw.signal(Signal::Term).unwrap();
    gw.wait_exit(WAIT).await.unwrap();
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
}

/// Sends `n` requests one after the other; returns the slowest.
async fn run_requests(gw: &Gateway, n: usize) -> Duration {
    let c = http_client();
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        r.bytes().await.unwrap();
        slowest = slowest.max(t.elapsed());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_stalled_collector_costs_clients_nothing() {
    let up = Upstream::start("up").await;
    // Export timeout far above anything a request should take: a request
    // that waited for the collector would show it.
    let yaml_for = |r: &OtlpReceiver| {
        format!(
            "{}observability:\n  tracing:\n    enabled: true\n    endpoint: {}\n    scheduled_delay: 50ms\n    export_timeout: 10s\n    max_queue_size: 64\n    max_export_batch_size: 16\n",
            one_upstream(&[up.target()], ""),
            r.endpoint()
        )
    };

    // Stopped: connections are refused.
    let stopped = OtlpReceiver::grpc().await;
    stopped.stop().await;
    let gw = start(&yaml_for(&stopped)).await;
    let slowest = run_requests(&gw, 300).await;
    assert!(slowest < Duration::from_secs(5), "slowest {slowest:?}");
    drop(gw);

    // Stalling: requests are read and never answered, so the queue fills
    // and spans are dropped and counted.
    let stalling = OtlpReceiver::grpc().await;
    stalling.set_stalling(true);
    let gw = start(&yaml_for(&stalling)).await;
    let slowest = run_requests(&gw, 300).await;
    assert!(slowest < Duration::from_secs(5), "slowest {slowest:?}");
    wait_until("dropped spans are counted", WAIT, || async {
        let t = metrics_text(&gw).await;
        sample(&t, "weir_trace_spans_dropped_total", &[]).is_some_and(|n| n > 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_environment_variables_win_over_the_file() {
    let file_receiver = OtlpReceiver::grpc().await;
    let env_receiver = OtlpReceiver::http().await;
    let up = Upstream::start("up").await;
    let yaml = traced(&one_upstream(&[up.target()], ""), &file_receiver, "");
    let gw = Gateway::builder(weir_bin())
        .config(Gateway::config(&yaml))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", env_receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "edge-gw")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .start()
        .await
        .unwrap();
    let r = http_client().get(gw.url("/x")).send().await.unwrap();
    r.bytes().await.unwrap();
    let spans = env_receiver.wait_for_spans(2, WAIT).await;
    assert_eq!(spans[0].resource_str("service.name"), Some("edge-gw"));
    assert_eq!(
        spans[0].resource_str("deployment.environment"),
        Some("test")
    );
    assert!(file_receiver.spans().is_empty());
}

// === plugins in the log phase ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_reaches_the_access_log_and_span_and_auth_failures_are_counted() {
    use sha2::Digest;
    const KEY: &str = "obs-test-key-9f8e7d";
    let receiver = OtlpReceiver::grpc().await;
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let sha: String = sha2::Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let yaml = format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{}\"}}]}}]
consumers:
  - name: alice
    credentials:
      key-auth: [{{key_sha256: {sha}}}]
routes:
  - id: keyed
    paths: [/*]
    upstream: u
    plugins:
      key-auth: {{}}
observability:
  access_log: {{enabled: true, target: !file {}}}
  tracing: {{enabled: true, endpoint: {}, scheduled_delay: 50ms}}
",
        up.target(),
        log.display(),
        receiver.endpoint()
    );
    let gw = start(&yaml).await;
    let c = http_client();
    let ok = c
        .get(gw.url("/a"))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();
    let denied = c
        .get(gw.url("/b"))
        .header("apikey", "wrong-key-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    denied.bytes().await.unwrap();

    let lines = wait_for("2 access-log lines", WAIT, || async {
        let l = read_lines(&log);
        (l.len() >= 2).then_some(l)
    })
    .await;
    assert_eq!(lines[0]["consumer"], "alice");
    assert_eq!(lines[0]["status"], 200);
    assert!(lines[0]["bytes_out"].as_u64().is_some_and(|b| b > 0));
    assert_eq!(lines[1]["consumer"], serde_json::Value::Null);
    assert_eq!(lines[1]["status"], 401);

    let spans = receiver.wait_for_spans(3, WAIT).await;
    let servers = of_kind(&spans, SpanKind::Server);
    assert!(
        servers
            .iter()
            .any(|s| s.str_attr("weir.consumer") == Some("alice")),
        "{servers:#?}"
    );

    let text = metrics_text(&gw).await;
    let failures: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("weir_auth_failures_total{") && l.contains("weir_route=\"keyed\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 1.0, "{text}");

    let raw = std::fs::read_to_string(&log).unwrap();
    for secret in [KEY, "wrong-key-1234"] {
        assert!(!raw.contains(secret) && !gw.log().contains(secret));
    }
}

/// A request's log line (the first of `route` with `status`).
fn line_of<'a>(lines: &'a [serde_json::Value], route: &str, status: u16) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["route"] == route && l["status"] == status)
        .unwrap_or_else(|| panic!("no {status} line of {route}: {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_limit_and_consumer_verdicts_reach_the_access_log_spans_and_upstream_label() {
    use weir_testsupport::{Origin, OriginScript};
    const KEY: &str = "verdict-test-key-5a4b3c";
    let receiver = OtlpReceiver::grpc().await;
    let origin = Origin::start().await;
    origin.script(
        "/c",
        OriginScript::ok("cached body", &[("cache-control", "max-age=60")]),
    );
    origin.script("/l", OriginScript::ok("limited body", &[]));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "{}observability:
  access_log: {{enabled: true, target: !file {}}}
  tracing: {{enabled: true, endpoint: {}, scheduled_delay: 50ms}}
",
        common::verdict_routes(&origin.target(), KEY, ""),
        log.display(),
        receiver.endpoint()
    );
    let gw = start(&yaml).await;
    let c = http_client();
    let mut statuses = Vec::new();
    for (path, key) in [
        ("/c", None),
        ("/c", None),
        ("/l", Some(KEY)),
        ("/l", Some(KEY)),
        ("/l", None),
    ] {
        let mut rb = c.get(gw.url(path));
        if let Some(k) = key {
            rb = rb.header("apikey", k);
        }
        let r = rb.send().await.unwrap();
        statuses.push(r.status().as_u16());
        r.bytes().await.unwrap();
    }
    assert_eq!(statuses, [200, 200, 200, 429, 401]);
    assert_eq!(origin.hits("/c"), 1, "the second /c is a hit");

    let lines = wait_for("5 access-log lines", WAIT, || async {
        let l = read_lines(&log);
        (l.len() >= 5).then_some(l)
    })
    .await;
    let cached: Vec<&serde_json::Value> = lines.iter().filter(|l| l["route"] == "cached").collect();
    assert_eq!(cached[0]["cache_status"], "miss", "{lines:#?}");
    assert_eq!(cached[1]["cache_status"], "hit", "{lines:#?}");
    assert_eq!(cached[0]["ratelimit_decision"], serde_json::Value::Null);
    let allowed = line_of(&lines, "limited", 200);
    assert_eq!(allowed["ratelimit_decision"], "allowed");
    assert_eq!(allowed["consumer"], "alice");
    assert_eq!(allowed["cache_status"], serde_json::Value::Null);
    let rejected = line_of(&lines, "limited", 429);
    assert_eq!(rejected["ratelimit_decision"], "rejected");
    assert_eq!(rejected["consumer"], "alice");
    let denied = line_of(&lines, "limited", 401);
    assert_eq!(denied["consumer"], serde_json::Value::Null);

    let spans = receiver.wait_for_spans(5, WAIT).await;
    let servers = of_kind(&spans, SpanKind::Server);
    let attrs = |name: &str| -> Vec<Option<&str>> {
        let mut v: Vec<Option<&str>> = servers.iter().map(|s| s.str_attr(name)).collect();
        v.sort();
        v
    };
    assert_eq!(
        attrs("weir.cache.status"),
        [None, None, None, Some("hit"), Some("miss")],
        "{servers:#?}"
    );
    assert_eq!(
        attrs("weir.ratelimit.decision"),
        [None, None, None, Some("allowed"), Some("rejected")],
        "{servers:#?}"
    );
    assert_eq!(
        attrs("weir.consumer"),
        [None, None, None, Some("alice"), Some("alice")],
        "{servers:#?}"
    );

    // Requests no upstream saw (the hit, the 429, the 401) carry an empty
    // upstream label; those it answered carry its id.
    let text = metrics_text(&gw).await;
    let requests = |route: &str, class: &str, upstream: &str| {
        sample(
            &text,
            "weir_http_server_requests_total",
            &[
                ("weir_route", route),
                ("http_response_status_class", class),
                ("weir_upstream", upstream),
            ],
        )
    };
    assert_eq!(requests("limited", "4xx", ""), Some(2.0), "{text}");
    assert_eq!(requests("limited", "4xx", "u"), None, "{text}");
    assert_eq!(requests("limited", "2xx", "u"), Some(1.0), "{text}");
    assert_eq!(requests("cached", "2xx", "u"), Some(1.0), "{text}");
    assert_eq!(requests("cached", "2xx", ""), Some(1.0), "{text}");
}
