//! Cost of `Balancer::pick` for each algorithm, on an upstream of 10
//! targets with weights 1 to 10.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use weir_node::balance::{Balancer, PickCtx};
use weir_node::config::{BalancerConfig, HashOn, TargetConfig};

fn targets() -> Vec<TargetConfig> {
    (1..=10)
        .map(|i| TargetConfig {
            addr: format!("10.0.0.{i}:8080"),
            weight: i,
            region: String::new(),
            zone: String::new(),
        })
        .collect()
}

fn kinds() -> Vec<(&'static str, BalancerConfig)> {
    vec![
        ("round_robin", BalancerConfig::RoundRobin),
        ("least_conn", BalancerConfig::LeastConn),
        ("random", BalancerConfig::Random),
        (
            "hash_ip",
            BalancerConfig::ConsistentHash {
                hash_on: HashOn::Ip,
            },
        ),
        (
            "hash_cookie",
            BalancerConfig::ConsistentHash {
                hash_on: HashOn::Cookie("sid".into()),
            },
        ),
        (
            "hash_uri",
            BalancerConfig::ConsistentHash {
                hash_on: HashOn::Uri,
            },
        ),
        (
            "peak_ewma",
            BalancerConfig::PeakEwma {
                decay: Duration::from_secs(10),
            },
        ),
    ]
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        "theme=dark; sid=7f3c2a9e; lang=en".parse().unwrap(),
    );
    h.insert("user-agent", "bench".parse().unwrap());
    h
}

fn ctx(headers: &HeaderMap) -> PickCtx<'_> {
    PickCtx {
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 17)),
        headers,
        path_and_query: "/api/v1/items/12345?expand=owner",
    }
}

fn pick(c: &mut Criterion) {
    let headers = headers();
    let ctx = ctx(&headers);
    let mut group = c.benchmark_group("pick");
    for (name, cfg) in kinds() {
        let b = Balancer::new(&cfg, &targets());
        group.bench_function(name, |bench| {
            bench.iter(|| black_box(b.pick(black_box(&ctx), &|_| true)))
        });
        // A retry: the first choice and one other target are out.
        group.bench_function(format!("{name}/two_out"), |bench| {
            bench.iter(|| black_box(b.pick(black_box(&ctx), &|i| i != 9 && i != 4)))
        });
    }
    group.finish();
}

/// pick + on_start + on_end, the whole per-attempt cost for the algorithms
/// that track load.
fn pick_and_track(c: &mut Criterion) {
    let headers = headers();
    let ctx = ctx(&headers);
    let mut group = c.benchmark_group("pick_start_end");
    for (name, cfg) in kinds() {
        if !matches!(name, "least_conn" | "peak_ewma") {
            continue;
        }
        let b = Balancer::new(&cfg, &targets());
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let i = b.pick(black_box(&ctx), &|_| true).unwrap();
                b.on_start(i);
                b.on_end(i, Duration::from_micros(300));
            })
        });
    }
    group.finish();
}

/// Two threads picking from one balancer at once: the time per pick as
/// seen by each thread (round robin's lock is contended here).
fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_2_threads");
    for (name, cfg) in kinds() {
        if !matches!(name, "round_robin" | "least_conn" | "peak_ewma") {
            continue;
        }
        let b = Arc::new(Balancer::new(&cfg, &targets()));
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(2));
                let workers: Vec<_> = (0..2)
                    .map(|_| {
                        let (b, barrier) = (b.clone(), barrier.clone());
                        std::thread::spawn(move || {
                            let headers = headers();
                            let ctx = ctx(&headers);
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                let i = b.pick(black_box(&ctx), &|_| true).unwrap();
                                b.on_start(i);
                                b.on_end(i, Duration::from_micros(300));
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                let total: Duration = workers.into_iter().map(|w| w.join().unwrap()).sum();
                total / 2
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, pick_and_track, contended);
criterion_main!(benches);
