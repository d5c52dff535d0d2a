//! Config propagation on a 3-node loopback cluster of real `weir`
//! processes: write accepted → applied on every node (p50/p99 over 1,000
//! writes), admin write throughput, and `apply` of 10,000 routes until
//! every node serves them. Prints a Markdown table; see
//! `docs/benchmarks.md`.
//!
//! ```sh
//! cargo bench --profile dev --bench raft_propagation
//! WEIR_BENCH_BIN=/path/to/other/weir cargo bench --profile dev --bench raft_propagation
//! ```

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_testsupport::raftnode::{Node, cluster, leader_index};
use weir_testsupport::{Upstream, http_client, wait_until};

const WRITES: usize = 1000;
/// One-route writes timed once the large route table is stored.
const ONE_ROUTE_WRITES: usize = 200;
/// Routes for the apply measurement (`WEIR_BENCH_ROUTES`, default
/// 10,000).
fn routes_count() -> usize {
    std::env::var("WEIR_BENCH_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Waits until `n` has applied `rev`: one request that the node answers
/// when it gets there (no polling that would steal the node's CPU), on the
/// caller's client so that its connections are reused: the figure is the
/// cluster's, not a new TCP connection's per measurement.
async fn applied(c: &reqwest::Client, n: &Node, rev: u64) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < give_up,
            "{} did not apply revision {rev} within 60 s",
            n.admin
        );
        if let Ok(r) = c
            .get(n.url(&format!("/raft/applied?min_revision={rev}&wait_ms=5000")))
            .send()
            .await
            && let Ok(v) = r.json::<Value>().await
            && v["revision"].as_u64().is_some_and(|r| r >= rev)
        {
            return;
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let Some(bin) = weir_testsupport::raftnode::bench_bin(env!("CARGO_BIN_EXE_weir")) else {
        return Ok(());
    };
    let bin = bin.as_path();
    let root = tempfile::tempdir()?;
    let up = Upstream::start("bench").await;
    let nodes = cluster(bin, root.path()).await?;
    let leader = leader_index(&nodes).await;
    let c = http_client();

    // 1. Propagation: one write at a time on the leader; both followers
    // are asked at once to answer when they have applied it.
    let mut lat = Vec::with_capacity(WRITES);
    let mut acked = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let t0 = Instant::now();
        let r = c
            .put(nodes[leader].url(&format!("/v1/consumers/p{i}")))
            .json(&json!({"labels": {"n": i.to_string()}}))
            .send()
            .await?;
        let v: Value = r.json().await?;
        let Some(rev) = v["revision"].as_u64() else {
            anyhow::bail!("write {i} was refused: {v}");
        };
        acked.push(t0.elapsed());
        let followers: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != leader)
            .map(|(_, n)| n)
            .collect();
        futures_util::future::join_all(followers.iter().map(|n| applied(&c, n, rev))).await;
        lat.push(t0.elapsed());
    }
    lat.sort();
    acked.sort();

    // 2. Throughput: 16 concurrent writers spread over the nodes for 5 s.
    let admins: Vec<String> = nodes.iter().map(|n| n.admin.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for w in 0..16usize {
        let admins = admins.clone();
        tasks.push(tokio::spawn(async move {
            let c = http_client();
            let mut ok = 0u64;
            let mut i = 0usize;
            while Instant::now() < deadline {
                let a = &admins[(w + i) % admins.len()];
                let r = c
                    .put(format!("http://{a}/v1/consumers/t{w}-{i}"))
                    .json(&json!({"labels": {"n": i.to_string()}}))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    ok += 1;
                }
                i += 1;
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let throughput = total as f64 / 5.0;

    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| write acknowledged p50 / p99 | {:.1} ms / {:.1} ms |",
        pct(&acked, 0.5).as_secs_f64() * 1e3,
        pct(&acked, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| propagation p50 ({WRITES} writes) | {:.1} ms |",
        pct(&lat, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| propagation p99 | {:.1} ms |",
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| propagation max | {:.1} ms |",
        pct(&lat, 1.0).as_secs_f64() * 1e3
    );
    println!("| admin writes/s (16 writers, 3 nodes) | {throughput:.0} |");
    // 3. apply of 10,000 routes, then until every node serves the last one.
    let routes_n = routes_count();
    let mut routes = Vec::with_capacity(routes_n);
    for i in 0..routes_n {
        routes.push(json!({"id": format!("r{i}"), "paths": [format!("/r/{i}")], "upstream": "u"}));
    }
    let body = json!({"documents": {
        "upstreams": [{"id": "u", "targets": [{"addr": up.target()}]}],
        "routes": routes,
        "services": [],
    }});
    let slow = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()?;
    let t0 = Instant::now();
    let r = slow
        .post(nodes[leader].url("/v1/apply"))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let accepted = t0.elapsed();
    anyhow::ensure!(status == 200, "apply: {status}: {}", r.text().await?);
    let last = format!("/r/{}", routes_n - 1);
    for n in &nodes {
        wait_until(
            "every node serves the routes",
            Duration::from_secs(900),
            || async { n.proxy_status(&last).await == Some(200) },
        )
        .await;
    }
    let served = t0.elapsed();

    println!(
        "| apply {routes_n} routes: accepted | {:.2} s |",
        accepted.as_secs_f64()
    );
    println!(
        "| apply {routes_n} routes: served by all 3 nodes | {:.2} s |",
        served.as_secs_f64()
    );

    // 4. One-route writes with all those routes stored: each node compiles
    // the changed route and re-indexes the table (ADR 0031).
    let mut one = Vec::with_capacity(ONE_ROUTE_WRITES);
    for i in 0..ONE_ROUTE_WRITES {
        let t0 = Instant::now();
        let r = c
            .put(nodes[leader].url(&format!("/v1/routes/r{i}")))
            .json(&json!({"paths": [format!("/r/{i}/v2")], "upstream": "u"}))
            .send()
            .await?;
        let v: Value = r.json().await?;
        let Some(rev) = v["revision"].as_u64() else {
            anyhow::bail!("route write {i} was refused: {v}");
        };
        let followers = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != leader)
            .map(|(_, n)| applied(&c, n, rev));
        futures_util::future::join_all(followers).await;
        one.push(t0.elapsed());
    }
    one.sort();
    // What the storage said while the writes ran: snapshots built (info),
    // log purges and appends that waited for the database writer (debug,
    // with `WEIR_LOG=info,weir_storage=debug`).
    for (i, n) in nodes.iter().enumerate() {
        for l in n.log().lines().filter(|l| {
            l.contains("raft snapshot built")
                || l.contains("raft log purged")
                || l.contains("waited for the database writer")
        }) {
            eprintln!("node {i}: {l}");
        }
    }
    println!(
        "| one-route write with {routes_n} routes stored, applied everywhere ({ONE_ROUTE_WRITES} writes): p50 / p99 / max | {:.1} ms / {:.1} ms / {:.1} ms |",
        pct(&one, 0.5).as_secs_f64() * 1e3,
        pct(&one, 0.99).as_secs_f64() * 1e3,
        pct(&one, 1.0).as_secs_f64() * 1e3
    );
    Ok(())
}
