//! The cluster series of `/metrics` with real `weir` processes: members by
//! state, gossip traffic, probe duties, and the Raft store's term, leader
//! and applied index. Each exposition also passes `promtool check metrics`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{sample, weir_bin};
use serde_json::json;
use weir_chaos::{Cluster, ClusterSpec};
use weir_testsupport::raftnode::Node;
use weir_testsupport::{Upstream, http_client, wait_until};

const CONVERGE: Duration = Duration::from_secs(30);

async fn metrics_at(url: String) -> Option<String> {
    let r = http_client().get(url).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.text().await.ok()
}

fn assert_promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package `prometheus`; ./scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_shows_members_gossip_and_probe_duties() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let config = format!(
        "upstreams:\n  - id: u\n    targets:\n      - addr: \"{}\"\n      - addr: \"{}\"\n    health_check:\n      path: /health\n      interval: 1s\n",
        a.target(),
        b.target()
    );
    let c = Cluster::start(weir_bin(), ClusterSpec::new(3).config(config))
        .await
        .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    let url = |i: usize| c.node(i).gateway().admin_url("/metrics");

    // Every node counts three alive members and nothing else.
    for i in 0..3 {
        wait_until("three alive members in /metrics", CONVERGE, || async {
            metrics_at(url(i)).await.is_some_and(|t| {
                sample(&t, "weir_cluster_members", &[("state", "alive")]) == Some(3.0)
                    && sample(&t, "weir_cluster_members", &[("state", "dead")]) == Some(0.0)
            })
        })
        .await;
    }

    // Gossip keeps flowing: both directions grow between two scrapes.
    let first = metrics_at(url(0)).await.expect("scrape");
    let read = |t: &str, name: &str, dir: &str| sample(t, name, &[("direction", dir)]);
    let sent0 = read(&first, "weir_gossip_datagrams_total", "sent").expect("sent series");
    let recv0 = read(&first, "weir_gossip_datagrams_total", "received").expect("received series");
    let bytes0 = read(&first, "weir_gossip_bytes_total", "sent").expect("bytes series");
    assert!(sent0 > 0.0 && recv0 > 0.0 && bytes0 > 0.0, "{first}");
    wait_until("gossip counters grow", CONVERGE, || async {
        metrics_at(url(0)).await.is_some_and(|t| {
            read(&t, "weir_gossip_datagrams_total", "sent").is_some_and(|v| v > sent0)
                && read(&t, "weir_gossip_datagrams_total", "received").is_some_and(|v| v > recv0)
                && read(&t, "weir_gossip_bytes_total", "received").is_some_and(|v| v > 0.0)
        })
    })
    .await;
    assert_eq!(
        sample(
            &first,
            "weir_gossip_datagrams_dropped_total",
            &[("reason", "rejected")]
        ),
        Some(0.0),
        "{first}"
    );
    // Small states fit one datagram: nothing is split, nothing left waiting.
    assert_eq!(
        sample(&first, "weir_gossip_split_messages_total", &[]),
        Some(0.0),
        "{first}"
    );
    assert_eq!(
        sample(
            &first,
            "weir_gossip_datagrams_dropped_total",
            &[("reason", "incomplete")]
        ),
        Some(0.0),
        "{first}"
    );

    // Two targets, two probers each: four duties over the three nodes, and
    // no node holds more than one duty per target.
    wait_until("four probe duties in all", CONVERGE, || async {
        let mut total = 0.0;
        for i in 0..3 {
            let Some(t) = metrics_at(url(i)).await else {
                return false;
            };
            match sample(&t, "weir_health_probe_duties", &[]) {
                Some(d) if d <= 2.0 => total += d,
                _ => return false,
            }
        }
        total == 4.0
    })
    .await;

    let text = metrics_at(url(1)).await.expect("scrape");
    assert_promtool_accepts(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_node_shows_raft_term_leader_and_applied_index() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let node = Node::start(weir_bin(), root.path(), &[]).await?;
    let url = node.url("/metrics");
    wait_until("a single-node store leads", CONVERGE, || async {
        metrics_at(url.clone()).await.is_some_and(|t| {
            sample(&t, "weir_raft_is_leader", &[]) == Some(1.0)
                && sample(&t, "weir_raft_has_leader", &[]) == Some(1.0)
                && sample(&t, "weir_raft_state", &[("state", "leader")]) == Some(1.0)
                && sample(&t, "weir_raft_state", &[("state", "follower")]) == Some(0.0)
                && sample(&t, "weir_raft_term", &[]).is_some_and(|v| v >= 1.0)
                && sample(&t, "weir_raft_members", &[("role", "voter")]) == Some(1.0)
        })
    })
    .await;
    let before = metrics_at(url.clone()).await.expect("scrape");
    let applied0 = sample(&before, "weir_raft_applied_index", &[]).expect("applied index");
    let last0 = sample(&before, "weir_raft_last_log_index", &[]).expect("last log index");
    assert!(applied0 <= last0, "{before}");

    let (status, body) = node
        .put(
            "/v1/upstreams/u?wait=applied",
            json!({"targets": [{"addr": "127.0.0.1:9"}]}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    wait_until("the write shows in the applied index", CONVERGE, || async {
        metrics_at(url.clone()).await.is_some_and(|t| {
            sample(&t, "weir_raft_applied_index", &[]).is_some_and(|v| v > applied0)
                && sample(&t, "weir_raft_last_log_index", &[]).is_some_and(|v| v > last0)
        })
    })
    .await;
    let text = metrics_at(url).await.expect("scrape");
    assert_promtool_accepts(&text);
    Ok(())
}
