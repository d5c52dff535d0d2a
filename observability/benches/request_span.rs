//! Cost on the request path of one request's tracing: `start_request`,
//! `set_route`, `start_attempt`, `inject`, and ending both spans, when
//! tracing is off, when the request is sampled out, and when it is
//! recorded (spans then go to a bounded queue; the collector address
//! refuses connections, so most are dropped, which is the cheapest path
//! for a recorded span and what a dead collector costs).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Request, StatusCode};
use weir_observability::config::{NodeInfo, TracingConfig};
use weir_observability::trace::{EnvVars, RequestInfo, Tracing};

fn tracing(sample_ratio: f64) -> Tracing {
    let cfg = TracingConfig {
        enabled: true,
        // Nothing listens on port 1: exports fail at once.
        endpoint: Some("http://127.0.0.1:1".into()),
        sample_ratio,
        ..TracingConfig::default()
    };
    let node = NodeInfo {
        node_id: "bench".into(),
        region: Some("local".into()),
        admin: None,
    };
    Tracing::init_with_env(&cfg, &node, &EnvVars::default()).expect("tracing starts")
}

fn one_request(tracing: &Tracing, req: &Request<()>, client: SocketAddr) -> HeaderMap {
    let mut span = tracing.start_request(&RequestInfo::new(req, client, "http"));
    span.set_route("/users/:id");
    let attempt = span.start_attempt("10.0.0.7:8080");
    let mut upstream = HeaderMap::new();
    attempt.inject(&mut upstream);
    attempt.end(StatusCode::OK);
    span.end(StatusCode::OK);
    upstream
}

fn request_path(c: &mut Criterion) {
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let plain = Request::builder()
        .uri("/users/42")
        .header("host", "api.example")
        .header("user-agent", "bench/1.0")
        .body(())
        .unwrap();
    let with_parent = Request::builder()
        .uri("/users/42")
        .header("host", "api.example")
        .header("user-agent", "bench/1.0")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .body(())
        .unwrap();

    let mut g = c.benchmark_group("request_span");
    let off = Tracing::disabled();
    g.bench_function("disabled", |b| {
        b.iter(|| black_box(one_request(&off, black_box(&plain), client)))
    });
    let out = tracing(0.0);
    g.bench_function("sampled_out", |b| {
        b.iter(|| black_box(one_request(&out, black_box(&plain), client)))
    });
    g.bench_function("sampled_out_with_parent", |b| {
        b.iter(|| black_box(one_request(&out, black_box(&with_parent), client)))
    });
    let on = tracing(1.0);
    g.bench_function("recorded", |b| {
        b.iter(|| black_box(one_request(&on, black_box(&plain), client)))
    });
    g.finish();
    eprintln!(
        "recorded run: {} spans dropped at the full queue, {} lost in failed exports",
        on.dropped_spans(),
        on.failed_spans()
    );
    for t in [out, on] {
        t.shutdown();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = request_path
}
criterion_main!(benches);
