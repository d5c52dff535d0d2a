//! Upstream health shared by gossip, with real `weir` processes and real
//! upstream servers: sharded probing and the cluster-wide verdict.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::weir_bin;
use weir_chaos::{Cluster, ClusterSpec};
use weir_testsupport::Upstream;

const CONVERGE: Duration = Duration::from_secs(30);

fn config(targets: &[&Upstream], interval: &str) -> String {
    let mut y = String::from("upstreams:\n  - id: u\n    retries: 1\n    targets:\n");
    for t in targets {
        y.push_str(&format!("      - addr: \"{}\"\n", t.target()));
    }
    y.push_str(&format!(
        "    passive_health: {{max_fails: 1, fail_timeout: 1s}}\n    health_check:\n      path: /health\n      interval: {interval}\n      timeout: 150ms\n      healthy_threshold: 1\n      unhealthy_threshold: 1\n"
    ));
    y.push_str("routes:\n  - id: all\n    paths: [\"/*\"]\n    upstream: u\n");
    y
}

async fn health_view(c: &Cluster, i: usize) -> Option<serde_json::Value> {
    let url = c.node(i).gateway().admin_url("/v1/cluster/health");
    let r = reqwest::get(url).await.ok()?;
    r.json().await.ok()
}

fn target_of<'a>(view: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
    view["targets"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == addr)
}

/// Waits until every node's `/v1/status` says `addr` is `up` and its health
/// view agrees.
async fn wait_all(c: &Cluster, addr: &str, up: bool) {
    weir_testsupport::wait_until(
        &format!("{addr} up={up} on every node"),
        Duration::from_secs(20),
        || async {
            for i in 0..c.nodes().len() {
                let Some(view) = health_view(c, i).await else {
                    return false;
                };
                if target_of(&view, addr).map(|t| t["cluster_down"] == !up) != Some(true) {
                    return false;
                }
                let Ok(r) = reqwest::get(c.node(i).gateway().admin_url("/v1/status")).await else {
                    return false;
                };
                let Ok(status) = r.json::<serde_json::Value>().await else {
                    return false;
                };
                let ok = status["upstreams"][0]["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["addr"] == addr && t["up"] == up);
                if !ok {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_target_leaves_rotation_everywhere_without_client_failures() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Cluster::start(
        weir_bin(),
        ClusterSpec::new(3).config(config(&[&a, &b], "300ms")),
    )
    .await
    .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    wait_all(&c, &a.target(), true).await;

    // Clients on every node for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for n in c.nodes() {
        let url = n.gateway().url("/echo");
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("status {}", r.status()));
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            errors
        }));
    }

    a.kill().await;
    wait_all(&c, &a.target(), false).await;
    // Every node took it out, also by the probers' reports, not only by
    // its own failed connections: the verdict is in each node's view.
    for i in 0..3 {
        let view = health_view(&c, i).await.expect("health view");
        let t = target_of(&view, &a.target()).expect("listed");
        assert_eq!(t["cluster_down"], true, "{view}");
        assert_eq!(t["probers"].as_array().map(Vec::len), Some(2), "{view}");
        assert!(
            !t["down_reports"].as_array().is_none_or(Vec::is_empty),
            "{view}"
        );
    }

    // `weir cluster status` shows the matrix.
    let out = std::process::Command::new(weir_bin())
        .args([
            "cluster",
            "status",
            "--admin",
            &c.node(0).gateway().admin_addr().to_string(),
        ])
        .output()
        .expect("run weir cluster status");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains(&a.target()))
        .unwrap_or_else(|| panic!("no row for the target:\n{table}"));
    assert!(row.contains("down"), "{table}");

    a.restart().await;
    wait_all(&c, &a.target(), true).await;
    let hits_before = a.hits_for("/echo");
    weir_testsupport::wait_until(
        "traffic reaches a again",
        Duration::from_secs(10),
        || async { a.hits_for("/echo") > hits_before + 10 },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for cl in clients {
        errors.extend(cl.await.expect("client task"));
    }
    assert!(sent.load(Ordering::Relaxed) > 50, "the clients ran");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "client failures: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_is_probed_by_k_nodes_of_five() {
    let x = Upstream::start("x").await;
    let y = Upstream::start("y").await;
    let c = Cluster::start(
        weir_bin(),
        ClusterSpec::new(5).config(config(&[&x, &y], "200ms")),
    )
    .await
    .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");

    // Every node agrees on the two probers of each target.
    let probers_agree = || async {
        let mut seen: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for i in 0..5 {
            let view = health_view(&c, i).await?;
            for t in view["targets"].as_array()? {
                seen.entry(t["target"].as_str()?.to_string())
                    .or_default()
                    .push(t["probers"].clone());
            }
        }
        (seen.len() == 2
            && seen.values().all(|v| {
                v.len() == 5
                    && v.iter()
                        .all(|p| *p == v[0] && p.as_array().map(Vec::len) == Some(2))
            }))
        .then_some(seen)
    };
    let agreed =
        weir_testsupport::wait_for("probers agree", Duration::from_secs(20), probers_agree).await;

    // Per-node probe counts before and after a window of upstream hits.
    let local_probes = |view: &serde_json::Value, addr: &str| {
        target_of(view, addr)
            .and_then(|t| t["local_probes"].as_u64())
            .unwrap_or(0)
    };
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(health_view(&c, i).await.expect("view"));
    }
    let x0 = x.hits_for("/health");
    let started = tokio::time::Instant::now();
    weir_testsupport::wait_until("40 probes at x", Duration::from_secs(30), || async {
        x.hits_for("/health") >= x0 + 40
    })
    .await;
    let elapsed = started.elapsed();
    let x_hits = x.hits_for("/health") - x0;
    let mut probing = Vec::new();
    for (i, old) in before.iter().enumerate() {
        let view = health_view(&c, i).await.expect("view");
        if local_probes(&view, &x.target()) > local_probes(old, &x.target()) {
            probing.push(c.node(i).spec.id.clone());
        }
    }
    probing.sort();
    let mut expected: Vec<String> = agreed[&x.target()][0]
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    expected.sort();
    assert_eq!(probing, expected, "exactly the two chosen nodes probe x");
    // k probes per interval, counted at the upstream: at most 2 per 200 ms
    // of the window, plus one in flight per prober at each end.
    let intervals = elapsed.as_millis() as u64 / 200;
    assert!(
        x_hits <= 2 * (intervals + 2),
        "{x_hits} probes in {elapsed:?} is more than 2 per interval"
    );
}
