//! OTLP metrics export through the real binary: the series `/metrics`
//! serves arrive at a real OTLP receiver (gRPC and HTTP/protobuf) with the
//! same values, as OpenTelemetry names and attributes, under the traces'
//! resource; the environment wins over the file; a dead or hung collector
//! costs clients nothing.

mod common;

use std::time::{Duration, Instant};

use common::{one_upstream, sample, weir_bin};
use weir_testsupport::{
    Gateway, MetricData, NumberPoint, OtlpReceiver, ReceivedMetrics, Signal, Upstream, http_client,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

async fn metrics_text(gw: &Gateway) -> String {
    let resp = http_client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// `observability:` with metrics pushed to `endpoint` every 100 ms.
fn pushed(endpoint: &str, protocol: &str, extra: &str) -> String {
    format!(
        "observability:\n  metrics:\n    latency_buckets: [0.5, 1, 5]\n    otlp:\n      enabled: true\n      endpoint: {endpoint}\n      protocol: {protocol}\n      export_interval: 100ms\n      export_timeout: 2s\n{extra}"
    )
}

/// Sends 5 GETs answered 200 and 2 POSTs answered 404.
async fn five_ok_two_not_found(gw: &Gateway) {
    let c = http_client();
    for _ in 0..5 {
        let r = c.get(gw.url("/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    for _ in 0..2 {
        let r = c
            .post(gw.url("/status/404"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        r.bytes().await.unwrap();
    }
}

fn str_attr<'a>(p: &'a NumberPoint, key: &str) -> Option<&'a str> {
    p.attributes.get(key).and_then(|v| v.as_str())
}

/// The request counter's point for `class`, if the export has it.
fn requests(m: &ReceivedMetrics, class: &str) -> Option<f64> {
    m.metric("weir.http.server.requests")?
        .number_points()
        .iter()
        .find(|p| str_attr(p, "http.response.status_class") == Some(class))
        .map(|p| p.value)
}

fn has_five_and_two(m: &ReceivedMetrics) -> bool {
    requests(m, "2xx") == Some(5.0) && requests(m, "4xx") == Some(2.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_counter_and_histograms_arrive_over_grpc_under_the_traces_resource() {
    let receiver = OtlpReceiver::grpc().await;
    let up = Upstream::start("up").await;
    let tracing = format!(
        "  tracing:\n    enabled: true\n    endpoint: {}\n    scheduled_delay: 50ms\n",
        receiver.endpoint()
    );
    let yaml = format!(
        "{}{}",
        one_upstream(&[up.target()], ""),
        pushed(&receiver.endpoint(), "grpc", &tracing)
    );
    let gw = Gateway::builder(weir_bin())
        .config(Gateway::config(&yaml))
        .env("OTEL_SERVICE_NAME", "edge-gw")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "cloud.region=eu-test,deployment.environment=test",
        )
        .start()
        .await
        .unwrap();
    five_ok_two_not_found(&gw).await;

    let got = receiver
        .wait_for_metrics("5 + 2 requests counted", WAIT, has_five_and_two)
        .await;
    // The same count `/metrics` shows, under the same labels.
    let text = metrics_text(&gw).await;
    assert_eq!(
        sample(
            &text,
            "weir_http_server_requests_total",
            &[("weir_route", "all"), ("http_response_status_class", "2xx")]
        ),
        Some(5.0)
    );

    let counter = got.metric("weir.http.server.requests").unwrap();
    let MetricData::Sum {
        monotonic,
        cumulative,
        points,
    } = &counter.data
    else {
        panic!("{counter:?}")
    };
    assert!(*monotonic && *cumulative);
    let ok = points
        .iter()
        .find(|p| str_attr(p, "http.response.status_class") == Some("2xx"))
        .unwrap();
    assert_eq!(str_attr(ok, "weir.route"), Some("all"));
    assert_eq!(str_attr(ok, "weir.upstream"), Some("u"));
    assert_eq!(str_attr(ok, "http.request.method"), Some("GET"));
    assert!(ok.start_unix_nanos > 0 && ok.start_unix_nanos < ok.time_unix_nanos);

    let duration = got.metric("http.server.request.duration").unwrap();
    assert_eq!(duration.unit, "s");
    let get = duration
        .histogram_points()
        .iter()
        .find(|p| {
            p.attributes
                .get("http.request.method")
                .and_then(|v| v.as_str())
                == Some("GET")
        })
        .unwrap();
    assert_eq!(get.count, 5);
    assert_eq!(get.bounds, [0.5, 1.0, 5.0]);
    assert_eq!(get.bucket_counts.iter().sum::<u64>(), 5);
    assert!(got.metric("http.client.request.duration").is_some());

    // Read-not-counted series are refreshed before each export, as before
    // a scrape.
    let target = up.target();
    let up_gauge = got.metric("weir.upstream.target.up").unwrap();
    assert!(matches!(up_gauge.data, MetricData::Gauge(_)));
    assert!(
        up_gauge
            .number_points()
            .iter()
            .any(|p| { str_attr(p, "weir.target") == Some(target.as_str()) && p.value == 1.0 })
    );
    assert!(got.metric("process.cpu").is_some());

    // The resource is the traces' resource.
    let spans = receiver.wait_for_spans(2, WAIT).await;
    for key in [
        "service.name",
        "service.instance.id",
        "service.version",
        "cloud.region",
        "deployment.environment",
        "telemetry.sdk.name",
    ] {
        assert!(got.resource.contains_key(key), "{key}: {:?}", got.resource);
        assert_eq!(got.resource.get(key), spans[0].resource.get(key), "{key}");
    }
    assert_eq!(got.resource_str("service.name"), Some("edge-gw"));
    assert_eq!(got.resource_str("cloud.region"), Some("eu-test"));
    assert_eq!(got.scope, "weir");

    // Exports are counted where a scrape sees them.
    wait_until("successful exports counted", WAIT, || async {
        let t = metrics_text(&gw).await;
        sample(&t, "weir_otlp_metrics_exports_total", &[("result", "ok")]).is_some_and(|n| n > 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_and_environment_variables_win_over_the_file() {
    let file_receiver = OtlpReceiver::grpc().await;
    let env_receiver = OtlpReceiver::http().await;
    let up = Upstream::start("up").await;
    // The file asks for a slow interval to a gRPC receiver; the variables
    // move export to HTTP, another receiver and a fast interval.
    let yaml = format!(
        "{}{}",
        one_upstream(&[up.target()], ""),
        pushed(&file_receiver.endpoint(), "grpc", "").replace("100ms", "1h")
    );
    let gw = Gateway::builder(weir_bin())
        .config(Gateway::config(&yaml))
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("{}/v1/metrics", env_receiver.endpoint()),
        )
        .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=t1")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
        .start()
        .await
        .unwrap();
    five_ok_two_not_found(&gw).await;
    let got = env_receiver
        .wait_for_metrics("5 + 2 requests counted over http", WAIT, has_five_and_two)
        .await;
    assert!(got.metric("http.server.request.duration").is_some());
    let headers = env_receiver.request_headers();
    assert!(
        headers
            .iter()
            .all(|h| h.get("x-tenant").is_some_and(|v| v == "t1")),
        "{headers:?}"
    );
    assert!(file_receiver.metrics().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_counts_are_pushed_at_shutdown() {
    let receiver = OtlpReceiver::grpc().await;
    let up = Upstream::start("up").await;
    // No periodic export within the test: only the one at shutdown.
    let yaml = format!(
        "{}{}",
        one_upstream(&[up.target()], ""),
        pushed(&receiver.endpoint(), "grpc", "").replace("100ms", "1h")
    );
    let mut gw = Gateway::start(weir_bin(), &Gateway::config(&yaml))
        .await
        .unwrap();
    five_ok_two_not_found(&gw).await;
    wait_until("7 requests recorded", WAIT, || async {
        let t = metrics_text(&gw).await;
        sample(
            &t,
            "weir_http_server_requests_total",
            &[("weir_route", "all")],
        )
        .is_some()
            && sample(
                &t,
                "weir_http_server_requests_total",
                &[("http_response_status_class", "4xx")],
            ) == Some(2.0)
    })
    .await;
    assert!(receiver.metrics().is_empty());
    gw.signal(Signal::Term).unwrap();
    gw.wait_exit(WAIT).await.unwrap();
    let got = receiver.metrics();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(has_five_and_two(&got[0]), "{got:#?}");
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
async fn a_dead_or_hung_collector_costs_clients_nothing_and_metrics_stay_right() {
    let up = Upstream::start("up").await;
    // An export timeout far above anything a request should take: a
    // request that waited for the collector would show it.
    let yaml_for = |r: &OtlpReceiver| {
        format!(
            "{}{}",
            one_upstream(&[up.target()], ""),
            pushed(&r.endpoint(), "grpc", "").replace("export_timeout: 2s", "export_timeout: 10s")
        )
    };
    let stopped = OtlpReceiver::grpc().await;
    stopped.stop().await;
    let stalling = OtlpReceiver::grpc().await;
    stalling.set_stalling(true);
    for receiver in [&stopped, &stalling] {
        let gw = Gateway::start(weir_bin(), &Gateway::config(&yaml_for(receiver)))
            .await
            .unwrap();
        let slowest = run_requests(&gw, 200).await;
        assert!(slowest < Duration::from_secs(5), "slowest {slowest:?}");
        let text = metrics_text(&gw).await;
        assert_eq!(
            sample(
                &text,
                "weir_http_server_requests_total",
                &[("weir_route", "all")]
            ),
            Some(200.0)
        );
        if receiver.is_running() {
            wait_until("the hung collector is asked", WAIT, || async {
                receiver.export_requests() > 0
            })
            .await;
        } else {
            // Refused connections fail at once and are counted.
            wait_until("failed exports counted", WAIT, || async {
                let t = metrics_text(&gw).await;
                sample(
                    &t,
                    "weir_otlp_metrics_exports_total",
                    &[("result", "failed")],
                )
                .is_some_and(|n| n > 0.0)
            })
            .await;
        }
    }
}

#[test]
fn the_file_cannot_export_what_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("weir.yaml");
    std::fs::write(
        &f,
        "observability:\n  metrics:\n    enabled: false\n    otlp: {enabled: true, export_interval: 0s, endpoint: \"collector:4317\"}\n",
    )
    .unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "observability.metrics.otlp.enabled",
        "observability.metrics.otlp.export_interval",
        "observability.metrics.otlp.endpoint",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_cannot_export_what_is_not_recorded_and_says_so() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "{}observability:\n  metrics:\n    enabled: false\n",
        one_upstream(&[up.target()], "")
    );
    let gw = Gateway::builder(weir_bin())
        .config(Gateway::config(&yaml))
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .start()
        .await
        .unwrap();
    wait_until("the warning is logged", WAIT, || async {
        gw.log().contains("nothing is exported")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_metrics_variable_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("weir.yaml");
    std::fs::write(
        &f,
        "observability:\n  metrics:\n    otlp: {enabled: true}\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(weir_bin())
        .args(["serve", "--config"])
        .arg(&f)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("OTEL_METRIC_EXPORT_INTERVAL", "soon")
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OTEL_METRIC_EXPORT_INTERVAL"), "{err}");
}
