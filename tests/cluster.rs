//! Gossip membership with real `weir` processes on loopback: convergence,
//! failure detection, graceful leave, restart, pause, sealed gossip, and
//! `weir cluster status`.

mod common;

use std::time::Duration;

use common::weir_bin;
use weir_chaos::{Cluster, ClusterSpec, NodeSpec};

/// Generous for starting processes on a busy two-core machine.
const CONVERGE: Duration = Duration::from_secs(30);
/// The bound: a node killed with -9 is seen dead within 10 s with
/// default settings.
const DETECT: Duration = Duration::from_secs(10);

async fn converged(n: usize) -> Cluster {
    let c = Cluster::start(weir_bin(), ClusterSpec::new(n))
        .await
        .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_in_three_regions_converge() {
    let c = converged(3).await;
    for view in c.views().await {
        let view = view.expect("every node answers");
        assert_eq!(view.cluster, "chaos");
        assert_eq!(view.members.len(), 3, "{view:?}");
        for (i, n) in c.nodes().iter().enumerate() {
            let m = view.member(&n.spec.id).expect("listed");
            assert_eq!(m.region, format!("region-{i}"));
            assert_eq!(m.zone, format!("region-{i}-a"));
            assert_eq!(m.gossip_addr, n.gossip_addr());
            assert_eq!(m.proxy_addr, Some(n.gateway().proxy_addr()));
            assert_eq!(m.admin_addr, Some(n.gateway().admin_addr()));
            assert_eq!(m.is_self, view.node_id == n.spec.id);
        }
        assert_eq!(view.gossip.rejected_datagrams, 0);
        assert_eq!(view.gossip.malformed_datagrams, 0);
    }

    // `weir cluster status`, as a table and as JSON.
    let admin = c.node(1).gateway().admin_addr().to_string();
    let out = std::process::Command::new(weir_bin())
        .args(["cluster", "status", "--admin", &admin])
        .output()
        .expect("run weir cluster status");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("node-1 (self)"), "{table}");
    for i in 0..3 {
        assert!(table.contains(&format!("region-{i}")), "{table}");
    }
    assert!(table.contains("ID") && table.contains("STATE"), "{table}");
    let out = std::process::Command::new(weir_bin())
        .args(["cluster", "status", "--json", "--admin", &admin])
        .output()
        .expect("run weir cluster status --json");
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["node_id"], "node-1");
    assert_eq!(doc["members"].as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_seen_dead_and_a_restart_rejoins() {
    let mut c = converged(3).await;
    let old_gen = c.views().await[0]
        .as_ref()
        .and_then(|v| v.member("node-2").map(|m| m.generation))
        .expect("node-2 listed");
    c.kill(2).await.expect("kill -9");
    c.wait_seen_as(2, "dead", DETECT)
        .await
        .expect("seen dead in time");

    c.restart(2).await.expect("restarts");
    c.wait_converged(CONVERGE).await.expect("rejoins");
    for view in c.views().await {
        let view = view.expect("answers");
        let m = view.member("node-2").expect("listed");
        assert!(m.generation > old_gen, "a restart is a new generation");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gracefully_stopped_node_leaves_at_once() {
    let mut c = converged(3).await;
    c.stop(1).await.expect("SIGTERM stops it");
    // `left` only comes from the node's own announcement; the failure
    // detector would say `dead`.
    c.wait_seen_as(1, "left", CONVERGE)
        .await
        .expect("seen as left");
    let log = c.node(1).gateway().log();
    assert!(log.contains("left gossip"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_is_seen_dead_and_alive_again_when_resumed() {
    let mut c = converged(3).await;
    c.pause(0).expect("SIGSTOP");
    c.wait_seen_as(0, "dead", DETECT)
        .await
        .expect("paused node seen dead");
    c.resume(0).expect("SIGCONT");
    c.wait_converged(CONVERGE).await.expect("alive again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_sealed_with_another_secret_is_rejected_and_counted() {
    let mut c = converged(2).await;
    let intruder = c
        .add(NodeSpec::new("intruder", "region-x").secret("not-the-cluster-secret"))
        .await
        .expect("intruder starts");
    c.wait_until("rejections counted on node-0", CONVERGE, |views| {
        views[0]
            .as_ref()
            .is_some_and(|v| v.gossip.rejected_datagrams >= 3)
    })
    .await
    .expect("counted");
    for view in c.views().await {
        let view = view.expect("answers");
        if view.node_id == "intruder" {
            assert_eq!(view.members.len(), 1, "the intruder sees only itself");
        } else {
            assert!(view.member("intruder").is_none(), "{view:?}");
        }
    }
    // The same count is a Prometheus series.
    let url = c.node(0).gateway().admin_url("/metrics");
    weir_testsupport::wait_until("the rejected series counts", CONVERGE, || async {
        let Ok(r) = reqwest::get(url.clone()).await else {
            return false;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("weir_gossip_datagrams_dropped_total{reason=\"rejected\"} ")
            })
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 3.0)
    })
    .await;
    let _ = intruder;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_gossip_beyond_loopback_is_refused() {
    let out = std::process::Command::new(weir_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--gossip-listen",
            "0.0.0.0:0",
            "--advertise-addr",
            "127.0.0.1",
        ])
        .env_remove("WEIR_CLUSTER_SECRET")
        .output()
        .expect("run weir");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no cluster secret is set"), "{err}");

    let out = std::process::Command::new(weir_bin())
        .args([
            "serve",
            "--region",
            "eu west",
            "--gossip-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run weir");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.region"), "{err}");
}

/// No live node is ever marked anything but alive during a steady run:
/// 60 s with `WEIR_SLOW_TESTS=1`, 5 s otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_run_has_no_false_death() {
    let slow = std::env::var_os("WEIR_SLOW_TESTS").is_some_and(|v| v == "1");
    let run = if slow {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(5)
    };
    let c = converged(3).await;
    let end = tokio::time::Instant::now() + run;
    let mut polls = 0;
    while tokio::time::Instant::now() < end {
        let views = c.views().await;
        for view in views.iter() {
            let view = view.as_ref().expect("every node answers");
            for m in &view.members {
                assert_eq!(
                    m.state,
                    "alive",
                    "{} sees {} as {} after {polls} polls\n{}",
                    view.node_id,
                    m.id,
                    m.state,
                    c.report(&views)
                );
            }
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(polls > 0);
}
