//! Recording on the request path does not allocate once a label set
//! exists. One test per binary: the allocator counts every thread.

use std::alloc::System;
use std::time::Duration;

use http::Method;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use weir_node::metrics::{
    AttemptMetrics, AttemptOutcome, CacheStatus, GatewayMetrics, Metrics, RateLimitDecision,
    RequestMetrics,
};
use weir_observability::config::MetricsConfig;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn record_all(m: &Metrics, route: &str) {
    m.record_request(&RequestMetrics {
        route,
        service: "",
        upstream: "users",
        method: &Method::GET,
        status: 200,
        duration: Duration::from_micros(1500),
        upstream_duration: Some(Duration::from_micros(1200)),
        bytes_in: 10,
        bytes_out: 100,
    });
    m.record_attempt(&AttemptMetrics {
        upstream: "users",
        target: "10.0.0.1:80",
        outcome: AttemptOutcome::Status(200),
        duration: Duration::from_micros(1100),
    });
    m.record_ratelimit(route, RateLimitDecision::Allowed);
    m.record_cache(route, CacheStatus::Hit, 100);
    m.set_target_health("users", "10.0.0.1:80", true);
    let _active = m.active_request();
}

#[test]
fn steady_state_recording_does_not_allocate() {
    let m = Metrics::new(&MetricsConfig::default());
    let routes: Vec<String> = (0..20).map(|i| format!("route-{i}")).collect();
    for r in &routes {
        record_all(&m, r);
    }

    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        for r in &routes {
            record_all(&m, r);
        }
    }
    let change = region.change();
    // The allocator counts every thread of the process, and the test
    // harness's own threads allocate now and then. 20,000 recordings that
    // allocated would show at least 20,000 allocations; a handful is the
    // harness, not the recording.
    assert!(
        change.allocations + change.reallocations < 20,
        "recording allocated: {change:?}"
    );
}
