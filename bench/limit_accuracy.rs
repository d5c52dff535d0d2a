//! How exactly a shared `limit-count` holds across real `weir` nodes on
//! loopback (issue 14's accuracy table): admitted per window over L with
//! 2 L offered, evenly and 90% on one node, over the mesh
//! (`scope: cluster`, also with 100 ms one-way delay injected on every
//! mesh link by the chaos fault proxies) and through Redis (`store: redis`, credit and
//! per request); and APISIX's published case, two nodes sharing a sliding
//! 500 req/s limit with 800 req/s offered for 30 s. Prints a Markdown
//! table; see `docs/benchmarks.md`.
//!
//! ```sh
//! cargo bench --profile dev --bench limit_accuracy
//! WEIR_BENCH_BIN=target/release/weir WINDOWS=5 cargo bench --profile dev --bench limit_accuracy
//! ```
//!
//! Needs `redis-server` on the PATH for the Redis rows (`scripts/test`
//! installs it); without it those rows are skipped and say so.

#[path = "../tests/common/windows.rs"]
#[allow(dead_code)]
mod windows;

use std::time::Duration;

use weir_chaos::{Cluster, ClusterSpec};
use weir_faultproxy::{Stream, Toxic, ToxicKind};
use weir_testsupport::{RedisServer, Upstream};

/// The limit per window of the table's rows.
const L: u64 = 1000;
/// Their window, in seconds.
const WINDOW_S: u64 = 5;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(target: &str, redis: Option<&RedisServer>, limit: &str) -> String {
    let redis = redis.map_or_else(String::new, |r| {
        format!(
            "redis:\n  urls: [\"{}\"]\n  response_timeout: 100ms\n",
            r.url()
        )
    });
    format!(
        "{redis}upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]
routes:
  - id: limited
    paths: [/limited]
    upstream: u
    plugins:
      limit-count: {limit}
"
    )
}

async fn cluster(bin: &std::path::Path, n: usize, config: String) -> Cluster {
    cluster_with(bin, ClusterSpec::new(n).config(config)).await
}

async fn cluster_with(bin: &std::path::Path, spec: ClusterSpec) -> Cluster {
    let c = Cluster::start(bin, spec).await.expect("cluster starts");
    c.wait_converged(Duration::from_secs(60))
        .await
        .expect("converges");
    // Let every node see the others over the mesh before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    c
}

/// Admitted over L in `windows` windows with `per_node` offered.
async fn rows(c: &Cluster, what: &str, per_node: &[usize], windows: u64) {
    let urls: Vec<String> = (0..c.nodes().len())
        .map(|i| c.node(i).gateway().url("/limited"))
        .collect();
    let mut ratios = Vec::new();
    for _ in 0..windows {
        let per = windows::measure(WINDOW_S, &urls, per_node).await;
        ratios.push(per.iter().sum::<u64>() as f64 / L as f64);
    }
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(0.0, f64::max);
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!(
        "| {what} | {} | {windows} | {min:.3} | {mean:.3} | {max:.3} |",
        per_node.iter().sum::<usize>() as f64 / L as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    // Only under `cargo bench` (test runners list every target).
    let Some(bin) = weir_testsupport::raftnode::bench_bin(env!("CARGO_BIN_EXE_weir")) else {
        return Ok(());
    };
    let windows = env_or("WINDOWS", 5);
    let up = Upstream::start("a").await;
    let redis = RedisServer::start()
        .inspect_err(|e| eprintln!("no Redis rows: {e:#}"))
        .ok();
    let even = [667usize, 667, 666];
    let skip_table = std::env::var_os("APISIX_ONLY").is_some();
    let skewed = [1800usize, 100, 100];

    println!(
        "3 nodes, L = {L} per {WINDOW_S} s window, 2 L offered per window (paced over 60% of it)\n"
    );
    println!("| limit | offered / L | windows | admitted / L min | mean | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mesh = format!("{{count: {L}, time_window: {WINDOW_S}s, key: [route], scope: cluster}}");
    if !skip_table {
        let c = cluster(&bin, 3, config(&up.target(), None, &mesh)).await;
        rows(&c, "mesh, even", &even, windows).await;
        rows(&c, "mesh, 90% on one node", &skewed, windows).await;
        drop(c);
        // 100 ms one-way on every mesh link: each node's mesh sits behind
        // a user-space UDP proxy that delays both directions.
        let c = cluster_with(
            &bin,
            ClusterSpec::new(3)
                .config(config(&up.target(), None, &mesh))
                .mesh_behind_proxies(),
        )
        .await;
        for i in 0..3 {
            let p = c
                .node(i)
                .mesh_proxy()
                .expect("the mesh runs behind a proxy");
            for (name, stream) in [("in", Stream::Upstream), ("out", Stream::Downstream)] {
                p.add_toxic(Toxic::new(
                    name,
                    stream,
                    ToxicKind::Latency {
                        latency_ms: 100,
                        jitter_ms: 0,
                    },
                ))?;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        rows(&c, "mesh, 100 ms one-way delay, even", &even, windows).await;
        rows(
            &c,
            "mesh, 100 ms one-way delay, 90% on one node",
            &skewed,
            windows,
        )
        .await;
    }
    if let Some(r) = redis.as_ref().filter(|_| !skip_table) {
        for (name, limit) in [
            (
                "redis credit",
                format!("{{count: {L}, time_window: {WINDOW_S}s, key: [route], store: redis}}"),
            ),
            (
                "redis per_request",
                format!(
                    "{{count: {L}, time_window: {WINDOW_S}s, key: [route], store: redis, sync: per_request}}"
                ),
            ),
        ] {
            let c = cluster(&bin, 3, config(&up.target(), Some(r), &limit)).await;
            rows(&c, &format!("{name}, even"), &even, windows).await;
            rows(&c, &format!("{name}, 90% on one node"), &skewed, windows).await;
            drop(c);
            r.command(&["FLUSHALL"])?;
        }
    }

    // APISIX's case: 2 nodes, a sliding 500 req/s limit, 800 req/s offered
    // (400 per node) for 30 s.
    let secs = env_or("APISIX_SECONDS", 30);
    let scope = std::env::var("APISIX_SCOPE").unwrap_or_else(|_| "cluster".into());
    let nodes = env_or("APISIX_NODES", 2) as usize;
    let policy = std::env::var("APISIX_POLICY").unwrap_or_else(|_| "sliding".into());
    let limit =
        format!("{{count: 500, time_window: 1s, policy: {policy}, key: [route], scope: {scope}}}");
    let c = cluster(&bin, nodes, config(&up.target(), None, &limit)).await;
    let urls: Vec<String> = (0..nodes)
        .map(|i| c.node(i).gateway().url("/limited"))
        .collect();
    let per = (800 * secs) as usize / nodes;
    let start = windows::next_window(1).await;
    let tasks = windows::offer(secs, start, &urls, &vec![per; nodes], &vec![100; nodes], 8);
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await?.1;
    }
    for i in 0..nodes {
        let m = windows::metrics(c.node(i).gateway()).await;
        for l in m.lines().filter(|l| l.starts_with("weir_limit_scope_")) {
            eprintln!("node {i}: {l}");
        }
    }
    let want = 500 * secs;
    println!(
        "\nAPISIX's case: {nodes} nodes, scope {scope}, {policy} 500 req/s, 800 req/s offered for {secs} s: admitted {admitted} of {want} ({:+.1}%)",
        (admitted as f64 / want as f64 - 1.0) * 100.0
    );
    Ok(())
}
