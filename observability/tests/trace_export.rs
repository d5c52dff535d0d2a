//! OTLP trace export against a real receiver, over gRPC and HTTP/protobuf.
//!
//! Every test runs on a current-thread tokio runtime that also serves the
//! receiver: if creating, ending or exporting spans ever blocked the
//! calling thread, the receiver could not answer and the test would fail.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use weir_observability::config::{NodeInfo, OtlpProtocol, TracingConfig};
use weir_observability::trace::{
    EnvVars, RequestInfo, RequestSpan, TraceError, Tracing, parse_traceparent,
};
use weir_testsupport::{OtlpReceiver, ReceivedSpan, SpanKind, SpanStatus, wait_until};

const WAIT: Duration = Duration::from_secs(10);
const CLIENT: &str = "127.0.0.1:50123";

fn node() -> NodeInfo {
    NodeInfo {
        node_id: "node-a".into(),
        region: Some("eu-1".into()),
        admin: None,
    }
}

fn config(receiver: &OtlpReceiver, protocol: OtlpProtocol) -> TracingConfig {
    TracingConfig {
        enabled: true,
        endpoint: Some(receiver.endpoint()),
        protocol,
        scheduled_delay: Duration::from_millis(50),
        export_timeout: Duration::from_secs(2),
        ..TracingConfig::default()
    }
}

fn start(cfg: &TracingConfig) -> Tracing {
    start_with_env(cfg, &[])
}

fn start_with_env(cfg: &TracingConfig, env: &[(&str, &str)]) -> Tracing {
    let tracing = Tracing::init_with_env(cfg, &node(), &EnvVars::from_pairs(env.iter().copied()))
        .expect("tracing starts");
    assert!(tracing.is_enabled());
    tracing
}

/// Flushes and stops off the runtime thread, which the receiver needs.
async fn finish(tracing: Tracing) -> Tracing {
    tokio::task::spawn_blocking(move || {
        tracing.shutdown();
        tracing
    })
    .await
    .expect("shutdown")
}

fn request(traceparent: Option<&str>) -> Request<()> {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri("/users/42?token=secret")
        .header("host", "api.example:8443")
        .header("user-agent", "trace-test/1.0");
    if let Some(tp) = traceparent {
        b = b.header("traceparent", tp);
    }
    b.body(()).unwrap()
}

fn start_request(tracing: &Tracing, req: &Request<()>) -> RequestSpan {
    let client: SocketAddr = CLIENT.parse().unwrap();
    tracing.start_request(&RequestInfo::new(req, client, "http"))
}

fn only(spans: &[ReceivedSpan], kind: SpanKind) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.kind == kind).collect()
}

/// (trace id, span id, flags) of the `traceparent` in `headers`.
fn sent_traceparent(headers: &HeaderMap) -> (String, String, u8) {
    let raw = headers.get("traceparent").expect("traceparent injected");
    let (t, s, f) = parse_traceparent(raw.as_bytes()).expect("valid traceparent");
    (t.to_string(), s.to_string(), f.to_u8())
}

// === spans, attributes and links ===

async fn one_request_one_attempt(receiver: OtlpReceiver, protocol: OtlpProtocol) {
    let tracing = start(&config(&receiver, protocol));
    let req = request(None);
    let mut span = start_request(&tracing, &req);
    span.set_route("/users/:id");
    span.set_route_id("users");
    span.set_service_id("user-svc");
    span.set_consumer("alice");
    span.set_cache_status("miss");
    span.set_ratelimit_decision("allowed");
    let mut attempt = span.start_attempt("127.0.0.1:9001");
    let mut upstream = HeaderMap::new();
    attempt.inject(&mut upstream);
    attempt.set_peer_address("127.0.0.1:9001".parse().unwrap());
    attempt.end(StatusCode::OK);
    span.end(StatusCode::OK);

    let spans = receiver.wait_for_spans(2, WAIT).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = only(&spans, SpanKind::Server)[0];
    let client = only(&spans, SpanKind::Client)[0];

    // The names and the SERVER → CLIENT link.
    assert_eq!(server.name, "GET /users/:id");
    assert_eq!(client.name, "GET");
    assert_eq!(server.parent_span_id, None);
    assert_eq!(
        client.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );
    assert_eq!(client.trace_id, server.trace_id);

    // What the upstream was told is what the collector got.
    let (trace_id, parent_id, flags) = sent_traceparent(&upstream);
    assert_eq!(trace_id, server.trace_id);
    assert_eq!(parent_id, client.span_id);
    assert_eq!(flags, 1);

    let s = |k: &str| {
        server
            .str_attr(k)
            .unwrap_or_else(|| panic!("server span lacks {k}"))
    };
    assert_eq!(s("http.request.method"), "GET");
    assert_eq!(s("url.path"), "/users/42");
    assert_eq!(s("url.scheme"), "http");
    assert_eq!(s("http.route"), "/users/:id");
    assert_eq!(s("server.address"), "api.example");
    assert_eq!(server.int_attr("server.port"), Some(8443));
    assert_eq!(s("client.address"), "127.0.0.1");
    assert_eq!(s("network.protocol.version"), "1.1");
    assert_eq!(s("user_agent.original"), "trace-test/1.0");
    assert_eq!(server.int_attr("http.response.status_code"), Some(200));
    assert_eq!(s("weir.route.id"), "users");
    assert_eq!(s("weir.service.id"), "user-svc");
    assert_eq!(s("weir.consumer"), "alice");
    assert_eq!(s("weir.cache.status"), "miss");
    assert_eq!(s("weir.ratelimit.decision"), "allowed");
    assert_eq!(s("weir.node.id"), "node-a");
    assert_eq!(s("weir.region"), "eu-1");
    assert!(!server.attributes.contains_key("error.type"));
    assert_eq!(server.status, SpanStatus::Unset);
    // The query may carry secrets and is never exported.
    assert!(
        !format!("{:?}", server.attributes).contains("secret"),
        "{server:#?}"
    );

    let c = |k: &str| {
        client
            .str_attr(k)
            .unwrap_or_else(|| panic!("client span lacks {k}"))
    };
    assert_eq!(c("http.request.method"), "GET");
    assert_eq!(c("server.address"), "127.0.0.1");
    assert_eq!(client.int_attr("server.port"), Some(9001));
    assert_eq!(c("network.peer.address"), "127.0.0.1");
    assert_eq!(c("weir.upstream.target"), "127.0.0.1:9001");
    assert_eq!(client.int_attr("http.response.status_code"), Some(200));
    assert!(!client.attributes.contains_key("http.request.resend_count"));
    assert_eq!(client.status, SpanStatus::Unset);

    for span in [server, client] {
        assert_eq!(span.resource_str("service.name"), Some("weir"));
        assert_eq!(span.resource_str("service.instance.id"), Some("node-a"));
        assert_eq!(span.resource_str("cloud.region"), Some("eu-1"));
        assert_eq!(
            span.resource_str("service.version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(span.scope, "weir");
        assert!(span.end_unix_nanos >= span.start_unix_nanos);
    }

    wait_until("the exported count", WAIT, || async {
        tracing.exported_spans() == 2
    })
    .await;
    assert_eq!(tracing.dropped_spans(), 0);
    finish(tracing).await;
}

#[tokio::test]
async fn spans_arrive_over_grpc() {
    one_request_one_attempt(OtlpReceiver::grpc().await, OtlpProtocol::Grpc).await;
}

#[tokio::test]
async fn spans_arrive_over_http_protobuf() {
    one_request_one_attempt(OtlpReceiver::http().await, OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test]
async fn retries_show_as_two_client_spans() {
    let receiver = OtlpReceiver::grpc().await;
    let tracing = start(&config(&receiver, OtlpProtocol::Grpc));
    let req = request(None);
    let mut span = start_request(&tracing, &req);
    span.set_route("/users/:id");

    let first = span.start_attempt("127.0.0.1:9001");
    let mut first_headers = HeaderMap::new();
    first.inject(&mut first_headers);
    first.end_with_error("connect");
    let second = span.start_attempt("127.0.0.1:9002");
    let mut second_headers = HeaderMap::new();
    second.inject(&mut second_headers);
    second.end(StatusCode::SERVICE_UNAVAILABLE);
    span.end(StatusCode::SERVICE_UNAVAILABLE);

    let spans = receiver.wait_for_spans(3, WAIT).await;
    let server = only(&spans, SpanKind::Server)[0];
    let clients = only(&spans, SpanKind::Client);
    assert_eq!(clients.len(), 2, "{spans:#?}");
    let by_target = |t: &str| {
        *clients
            .iter()
            .find(|c| c.str_attr("weir.upstream.target") == Some(t))
            .unwrap()
    };
    let (a, b) = (by_target("127.0.0.1:9001"), by_target("127.0.0.1:9002"));
    for c in [a, b] {
        assert_eq!(c.parent_span_id.as_deref(), Some(server.span_id.as_str()));
        assert_eq!(c.trace_id, server.trace_id);
        assert_eq!(c.status, SpanStatus::Error);
    }
    assert_ne!(a.span_id, b.span_id);
    assert_eq!(a.str_attr("error.type"), Some("connect"));
    assert!(!a.attributes.contains_key("http.request.resend_count"));
    assert!(!a.attributes.contains_key("http.response.status_code"));
    assert_eq!(b.str_attr("error.type"), Some("503"));
    assert_eq!(b.int_attr("http.request.resend_count"), Some(1));
    assert_eq!(b.int_attr("http.response.status_code"), Some(503));
    // Each attempt tells its upstream its own parent.
    assert_eq!(sent_traceparent(&first_headers).1, a.span_id);
    assert_eq!(sent_traceparent(&second_headers).1, b.span_id);

    assert_eq!(server.status, SpanStatus::Error);
    assert_eq!(server.str_attr("error.type"), Some("503"));
    finish(tracing).await;
}

#[tokio::test]
async fn client_errors_fail_the_client_span_not_the_server_span() {
    let receiver = OtlpReceiver::http().await;
    let tracing = start(&config(&receiver, OtlpProtocol::HttpProtobuf));
    let req = request(None);
    let span = start_request(&tracing, &req);
    span.start_attempt("127.0.0.1:9001")
        .end(StatusCode::NOT_FOUND);
    span.end(StatusCode::NOT_FOUND);

    let spans = receiver.wait_for_spans(2, WAIT).await;
    let server = only(&spans, SpanKind::Server)[0];
    let client = only(&spans, SpanKind::Client)[0];
    // No route was set: the name is the method alone.
    assert_eq!(server.name, "GET");
    assert_eq!(server.status, SpanStatus::Unset);
    assert!(!server.attributes.contains_key("error.type"));
    assert_eq!(client.status, SpanStatus::Error);
    assert_eq!(client.str_attr("error.type"), Some("404"));
    finish(tracing).await;
}

#[tokio::test]
async fn a_gateway_error_type_marks_the_server_span() {
    let receiver = OtlpReceiver::grpc().await;
    let tracing = start(&config(&receiver, OtlpProtocol::Grpc));
    let req = Request::builder()
        .method("PURGE")
        .uri("/cache/x")
        .body(())
        .unwrap();
    let mut span = start_request(&tracing, &req);
    span.set_route("/cache/*");
    span.set_error_type("upstream_timeout");
    span.end(StatusCode::GATEWAY_TIMEOUT);

    let spans = receiver.wait_for_spans(1, WAIT).await;
    let server = &spans[0];
    // Unknown methods keep span names few.
    assert_eq!(server.name, "HTTP /cache/*");
    assert_eq!(server.str_attr("http.request.method"), Some("_OTHER"));
    assert_eq!(
        server.str_attr("http.request.method_original"),
        Some("PURGE")
    );
    assert_eq!(server.str_attr("error.type"), Some("upstream_timeout"));
    assert_eq!(server.status, SpanStatus::Error);
    finish(tracing).await;
}

// === sampling and propagation ===

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN: &str = "00f067aa0ba902b7";

fn incoming(flags: &str) -> String {
    format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-{flags}")
}

#[tokio::test]
async fn an_incoming_sampled_parent_is_honoured() {
    let receiver = OtlpReceiver::grpc().await;
    // Even at ratio 0: the parent decided.
    let cfg = TracingConfig {
        sample_ratio: 0.0,
        ..config(&receiver, OtlpProtocol::Grpc)
    };
    let tracing = start(&cfg);
    let mut req = request(Some(&incoming("01")));
    req.headers_mut()
        .insert("tracestate", HeaderValue::from_static("vendor=abc"));
    let span = start_request(&tracing, &req);
    assert!(span.is_recording());
    let attempt = span.start_attempt("127.0.0.1:9001");
    let mut upstream = HeaderMap::new();
    attempt.inject(&mut upstream);
    attempt.end(StatusCode::OK);
    span.end(StatusCode::OK);

    let spans = receiver.wait_for_spans(2, WAIT).await;
    let server = only(&spans, SpanKind::Server)[0];
    let client = only(&spans, SpanKind::Client)[0];
    assert_eq!(server.trace_id, INCOMING_TRACE);
    assert_eq!(server.parent_span_id.as_deref(), Some(INCOMING_SPAN));
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(client.trace_id, INCOMING_TRACE);
    let (trace_id, parent, flags) = sent_traceparent(&upstream);
    assert_eq!((trace_id.as_str(), flags), (INCOMING_TRACE, 1));
    assert_eq!(parent, client.span_id);
    assert_eq!(upstream["tracestate"], "vendor=abc");
    finish(tracing).await;
}

/// Runs one request with an attempt and returns what the upstream got.
fn sampled_out_request(tracing: &Tracing, traceparent: Option<&str>) -> HeaderMap {
    let req = request(traceparent);
    let mut span = start_request(tracing, &req);
    assert!(!span.is_recording());
    span.set_route("/users/:id");
    let attempt = span.start_attempt("127.0.0.1:9001");
    // The proxy forwards the client's headers, then injects.
    let mut upstream = req.headers().clone();
    attempt.inject(&mut upstream);
    assert_eq!(span.trace_id(), attempt.trace_id());
    attempt.end(StatusCode::OK);
    span.end(StatusCode::OK);
    upstream
}

#[tokio::test]
async fn sampled_out_requests_propagate_but_export_nothing() {
    let receiver = OtlpReceiver::grpc().await;
    let cfg = TracingConfig {
        sample_ratio: 0.0,
        ..config(&receiver, OtlpProtocol::Grpc)
    };
    let tracing = start(&cfg);

    // No incoming context: a fresh trace, flags 00.
    let upstream = sampled_out_request(&tracing, None);
    let (fresh, _, flags) = sent_traceparent(&upstream);
    assert_eq!(flags, 0);
    assert_ne!(fresh, INCOMING_TRACE);
    assert_ne!(fresh, "0".repeat(32));

    // An incoming unsampled parent: its trace continues, still 00, with a
    // new parent id for the upstream.
    let upstream = sampled_out_request(&tracing, Some(&incoming("00")));
    let (trace_id, parent, flags) = sent_traceparent(&upstream);
    assert_eq!((trace_id.as_str(), flags), (INCOMING_TRACE, 0));
    assert_ne!(parent, INCOMING_SPAN);

    // Everything is flushed by shutdown: had anything been recorded, it
    // would be at the receiver now.
    let tracing = finish(tracing).await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
    assert_eq!(receiver.export_requests(), 0);
    assert_eq!(tracing.exported_spans() + tracing.dropped_spans(), 0);
}

#[tokio::test]
async fn a_non_parent_based_sampler_overrides_a_sampled_parent() {
    let receiver = OtlpReceiver::http().await;
    let cfg = config(&receiver, OtlpProtocol::HttpProtobuf);
    let tracing = start_with_env(
        &cfg,
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    );
    let upstream = sampled_out_request(&tracing, Some(&incoming("01")));
    let (trace_id, _, flags) = sent_traceparent(&upstream);
    assert_eq!((trace_id.as_str(), flags), (INCOMING_TRACE, 0));
    let tracing = finish(tracing).await;
    assert!(receiver.spans().is_empty());
    assert_eq!(tracing.exported_spans(), 0);
}

// === a dead or hung collector costs requests nothing ===

const SPANS_PER_REQUEST: u64 = 2;
const REQUESTS: u64 = 10_000;

/// Small queue, so 20,000 spans overflow it.
fn overload_config(endpoint: String, protocol: OtlpProtocol) -> TracingConfig {
    TracingConfig {
        enabled: true,
        endpoint: Some(endpoint),
        protocol,
        max_queue_size: 256,
        max_export_batch_size: 64,
        scheduled_delay: Duration::from_millis(20),
        export_timeout: Duration::from_millis(300),
        ..TracingConfig::default()
    }
}

/// Creates and ends 10,000 request spans, each with an attempt, and
/// returns how long it took.
fn hammer(tracing: &Tracing) -> Duration {
    let req = request(None);
    let client: SocketAddr = CLIENT.parse().unwrap();
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let mut span = tracing.start_request(&RequestInfo::new(&req, client, "http"));
        span.set_route("/users/:id");
        let attempt = span.start_attempt("127.0.0.1:9001");
        let mut upstream = HeaderMap::new();
        attempt.inject(&mut upstream);
        attempt.end(StatusCode::OK);
        span.end(StatusCode::OK);
    }
    started.elapsed()
}

/// `hung`: exports hang until their timeout, so the queue must overflow.
/// A refusing collector fails exports at once and may keep up.
async fn requests_do_not_wait_for(receiver: &OtlpReceiver, protocol: OtlpProtocol, hung: bool) {
    let endpoint = receiver.endpoint();
    let tracing = start(&overload_config(endpoint, protocol));
    let took = hammer(&tracing);
    // The guarantee is that ending a span never waits: it is a non-blocking
    // push onto a bounded queue, and the export (and its timeout) happens
    // on other threads. 10,000 requests take a few tens of milliseconds
    // here; 5 s is generous for a loaded two-core machine in a debug
    // build, and still far below what waiting on even one export timeout
    // per batch would cost.
    assert!(
        took < Duration::from_secs(5),
        "10,000 requests took {took:?}"
    );
    if hung {
        // The queue holds 256 spans and the exporter is stuck: most of the
        // 20,000 overflowed, and were counted.
        let dropped = tracing.dropped_spans();
        assert!(
            dropped >= REQUESTS * SPANS_PER_REQUEST / 2,
            "only {dropped} dropped"
        );
    }

    let tracing = finish(tracing).await;
    // Every span is accounted for: dropped at the queue, or lost in a
    // failed export. (Shutdown may return before the batch thread has
    // failed the last batches on a very busy machine; they fail fast once
    // the deadline has passed.)
    wait_until("every span accounted for", WAIT, || async {
        tracing.dropped_spans() + tracing.failed_spans() == REQUESTS * SPANS_PER_REQUEST
    })
    .await;
    assert_eq!(tracing.exported_spans(), 0);
}

#[tokio::test]
async fn a_stopped_collector_costs_requests_nothing() {
    let receiver = OtlpReceiver::grpc().await;
    receiver.stop().await;
    requests_do_not_wait_for(&receiver, OtlpProtocol::Grpc, false).await;
}

#[tokio::test]
async fn a_stopped_http_collector_costs_requests_nothing() {
    let receiver = OtlpReceiver::http().await;
    receiver.stop().await;
    requests_do_not_wait_for(&receiver, OtlpProtocol::HttpProtobuf, false).await;
}

#[tokio::test]
async fn a_silent_collector_costs_requests_nothing() {
    // Accepts TCP, never answers: the gRPC handshake never completes.
    let receiver = OtlpReceiver::silent().await;
    requests_do_not_wait_for(&receiver, OtlpProtocol::Grpc, true).await;
}

#[tokio::test]
async fn a_stalling_grpc_collector_costs_requests_nothing() {
    let receiver = OtlpReceiver::grpc().await;
    receiver.set_stalling(true);
    requests_do_not_wait_for(&receiver, OtlpProtocol::Grpc, true).await;
    assert!(
        receiver.export_requests() > 0,
        "exports reached the receiver"
    );
    assert!(receiver.spans().is_empty());
}

#[tokio::test]
async fn a_stalling_http_collector_costs_requests_nothing() {
    let receiver = OtlpReceiver::http().await;
    receiver.set_stalling(true);
    requests_do_not_wait_for(&receiver, OtlpProtocol::HttpProtobuf, true).await;
    assert!(
        receiver.export_requests() > 0,
        "exports reached the receiver"
    );
}

#[tokio::test]
async fn export_resumes_when_the_collector_answers_again() {
    let receiver = OtlpReceiver::grpc().await;
    receiver.set_stalling(true);
    let cfg = TracingConfig {
        export_timeout: Duration::from_millis(300),
        ..config(&receiver, OtlpProtocol::Grpc)
    };
    let tracing = start(&cfg);
    let req = request(None);
    let mut first = start_request(&tracing, &req);
    first.set_route("/first");
    first.end(StatusCode::OK);
    wait_until("a failed export", WAIT, || async {
        tracing.failed_spans() == 1
    })
    .await;

    receiver.set_stalling(false);
    let mut second = start_request(&tracing, &req);
    second.set_route("/second");
    second.end(StatusCode::OK);
    wait_until("the second span at the receiver", WAIT, || async {
        receiver.spans().iter().any(|s| s.name == "GET /second")
    })
    .await;
    wait_until("the exported count", WAIT, || async {
        tracing.exported_spans() == 1
    })
    .await;
    assert_eq!(tracing.failed_spans(), 1);
    finish(tracing).await;
}

// === configuration from the environment ===

#[tokio::test]
async fn environment_beats_the_file_end_to_end() {
    let file_target = OtlpReceiver::grpc().await;
    let env_target = OtlpReceiver::http().await;
    // The file says gRPC to one receiver; the environment says HTTP to
    // another, with its own headers and resource.
    let cfg = TracingConfig {
        headers: vec![
            ("x-from-file".into(), "file".into()),
            ("x-api-key".into(), "file-key".into()),
        ],
        service_name: "from-file".into(),
        ..config(&file_target, OtlpProtocol::Grpc)
    };
    let endpoint = env_target.endpoint();
    let tracing = start_with_env(
        &cfg,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=generic-key"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "x-api-key=traces%20key",
            ),
            ("OTEL_SERVICE_NAME", "from-env"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test,service.name=ignored",
            ),
        ],
    );
    let settings = tracing.settings().unwrap();
    assert_eq!(settings.endpoint, format!("{endpoint}/v1/traces"));
    start_request(&tracing, &request(None)).end(StatusCode::OK);

    let spans = env_target.wait_for_spans(1, WAIT).await;
    assert_eq!(spans[0].resource_str("service.name"), Some("from-env"));
    assert_eq!(
        spans[0].resource_str("deployment.environment"),
        Some("test")
    );
    let headers = &env_target.request_headers()[0];
    assert_eq!(headers["x-api-key"], "traces key");
    assert_eq!(headers["x-from-file"], "file");
    finish(tracing).await;
    assert!(file_target.spans().is_empty());
}

#[tokio::test]
async fn the_traces_endpoint_beats_the_generic_one_and_enables_tracing() {
    let generic = OtlpReceiver::http().await;
    let signal = OtlpReceiver::http().await;
    // Tracing is off in the file: the endpoint variable turns it on.
    let cfg = TracingConfig::default();
    let tracing = start_with_env(
        &cfg,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", generic.endpoint().as_str()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                signal.traces_url().as_str(),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    start_request(&tracing, &request(None)).end(StatusCode::OK);
    let spans = signal.wait_for_spans(1, WAIT).await;
    assert_eq!(spans[0].resource_str("service.name"), Some("weir"));
    finish(tracing).await;
    assert!(generic.spans().is_empty());
}

#[tokio::test]
async fn grpc_headers_become_metadata() {
    let receiver = OtlpReceiver::grpc().await;
    let cfg = TracingConfig {
        headers: vec![("x-tenant".into(), "t1".into())],
        ..config(&receiver, OtlpProtocol::Grpc)
    };
    let tracing = start_with_env(&cfg, &[("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=k1")]);
    start_request(&tracing, &request(None)).end(StatusCode::OK);
    receiver.wait_for_spans(1, WAIT).await;
    let headers = &receiver.request_headers()[0];
    assert_eq!(headers["x-tenant"], "t1");
    assert_eq!(headers["x-api-key"], "k1");
    finish(tracing).await;
}

#[test]
fn sdk_disabled_turns_tracing_off() {
    let env = EnvVars::from_pairs([
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
    ]);
    let cfg = TracingConfig {
        enabled: true,
        ..TracingConfig::default()
    };
    let tracing = Tracing::init_with_env(&cfg, &node(), &env).unwrap();
    assert!(!tracing.is_enabled());
}

#[test]
fn bad_variables_stop_init_and_name_the_variable() {
    let cfg = TracingConfig {
        enabled: true,
        ..TracingConfig::default()
    };
    for (var, value) in [
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ("OTEL_RESOURCE_ATTRIBUTES", "=x"),
        ("OTEL_SDK_DISABLED", "maybe"),
    ] {
        let env = EnvVars::from_pairs([(var, value)]);
        let err = Tracing::init_with_env(&cfg, &node(), &env).unwrap_err();
        assert!(
            matches!(err, TraceError::Env { var: v, .. } if v == var),
            "{var}: {err}"
        );
        assert!(err.to_string().contains(var), "{err}");
    }
}

#[test]
fn works_without_any_tokio_runtime_around() {
    // The gateway builds `Tracing` before its runtime starts; nothing here
    // may assume a runtime on the calling thread.
    let cfg = TracingConfig {
        enabled: true,
        endpoint: Some("http://127.0.0.1:1".into()),
        scheduled_delay: Duration::from_millis(10),
        export_timeout: Duration::from_millis(200),
        ..TracingConfig::default()
    };
    let tracing = Tracing::init_with_env(&cfg, &node(), &EnvVars::default()).unwrap();
    for _ in 0..10 {
        let span = start_request(&tracing, &request(None));
        span.start_attempt("127.0.0.1:9001")
            .end_with_error("connect");
        span.end(StatusCode::BAD_GATEWAY);
    }
    tracing.shutdown();
    let deadline = Instant::now() + WAIT;
    while tracing.dropped_spans() + tracing.failed_spans() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(tracing.dropped_spans() + tracing.failed_spans(), 20);
    // Spans after shutdown are not recorded, and propagate nothing new.
    let span = start_request(&tracing, &request(None));
    assert!(!span.is_recording());
    span.end(StatusCode::OK);
}
