//! What recording the gateway's series costs on the request path.
//!
//! `record_request` runs once per request; it must stay well under a
//! microsecond and not allocate once its label set exists.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use weir_node::metrics::{AttemptMetrics, AttemptOutcome, GatewayMetrics, Metrics, RequestMetrics};
use weir_observability::config::MetricsConfig;

fn record(c: &mut Criterion) {
    let m = Metrics::new(&MetricsConfig::default());
    // A realistic table: 50 routes already seen.
    let routes: Vec<String> = (0..50).map(|i| format!("route-{i}")).collect();
    for r in &routes {
        m.record_request(&request(r));
    }
    let route = routes[17].as_str();
    c.bench_function("record_request", |b| {
        b.iter(|| m.record_request(black_box(&request(route))))
    });
    c.bench_function("record_attempt", |b| {
        b.iter(|| {
            m.record_attempt(black_box(&AttemptMetrics {
                upstream: "users",
                target: "10.0.0.7:8080",
                outcome: AttemptOutcome::Status(200),
                duration: Duration::from_micros(800),
            }))
        })
    });
}

fn request(route: &str) -> RequestMetrics<'_> {
    RequestMetrics {
        route,
        service: "",
        upstream: "users",
        method: &Method::GET,
        status: 200,
        duration: Duration::from_micros(1200),
        upstream_duration: Some(Duration::from_micros(900)),
        bytes_in: 0,
        bytes_out: 512,
    }
}

criterion_group!(benches, record);
criterion_main!(benches);
