//! The config store's membership over a node's life, with real `weir`
//! processes: a node restarted with its data dir on a new address becomes
//! reachable again (found through gossip or through `--join`); a learner
//! dead for longer than its timeout is removed, and added again when it
//! comes back.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use weir_testsupport::raftnode::{Node, cluster, leader_index};
use weir_testsupport::wait_until;

use common::weir_bin;

const CONVERGE: Duration = Duration::from_secs(60);

/// Gossip and store flags of a test node: loopback gossip on port 0, its
/// region, seeds, and `extra`.
fn args(name: &str, region: &str, seeds: Option<&str>, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--cluster-name",
        "raft-life",
        "--node-id",
        name,
        "--gossip-listen",
        "127.0.0.1:0",
        "--region",
        region,
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    if let Some(s) = seeds {
        a.extend(["--seeds".to_string(), s.to_string()]);
    }
    a
}

async fn start(root: &std::path::Path, name: &str, args: &[String]) -> Node {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(weir_bin(), &root.join(name), &a)
        .await
        .expect("weir starts")
}

/// `(id, addr, role)` of every member in a status document.
fn members(status: &Value) -> BTreeSet<(u64, String, String)> {
    status["cluster"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["id"].as_u64()?,
                m["addr"].as_str()?.to_string(),
                m["role"].as_str()?.to_string(),
            ))
        })
        .collect()
}

async fn raft_id(n: &Node) -> u64 {
    let s = n.status().await.expect("status");
    s["cluster"]["node_id"].as_u64().expect("node id")
}

/// True when every node reports exactly `want` as members and the same
/// leader.
async fn all_see(nodes: &[&Node], want: &BTreeSet<(u64, String, String)>) -> bool {
    let mut leader = None;
    for n in nodes {
        let Some(s) = n.status().await else {
            return false;
        };
        if members(&s) != *want {
            return false;
        }
        let l = s["cluster"]["leader"].as_u64();
        if l.is_none() || (leader.is_some() && leader != l) {
            return false;
        }
        leader = l;
    }
    true
}

/// Three voters; the third is stopped with SIGTERM and started again with
/// its data dir on a new admin (Raft) port; every node then lists it at
/// the new address, as a voter, and a write reaches it.
async fn restart_elsewhere(nodes: &mut [Node]) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for n in nodes.iter() {
        ids.push(raft_id(n).await);
    }
    let old = nodes[2].admin.clone();
    nodes[2].stop().await?;
    nodes[2].launch(None).await?;
    assert_ne!(nodes[2].admin, old, "the restarted node has a new port");
    assert_eq!(raft_id(&nodes[2]).await, ids[2], "same data dir, same id");
    let want: BTreeSet<(u64, String, String)> = nodes
        .iter()
        .zip(&ids)
        .map(|(n, id)| (*id, n.admin.clone(), "voter".to_string()))
        .collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "every node lists the restarted voter at its new address",
        CONVERGE,
        || async { all_see(&refs, &want).await },
    )
    .await;
    let leader = leader_index(nodes).await;
    let (s, body) = nodes[leader]
        .put(
            "/v1/consumers/moved?wait=applied",
            json!({"labels": {"k": "v"}}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["applied"]["everywhere"], true, "{body}");
    let (s, d) = nodes[2].get("/v1/consumers/moved").await?;
    assert_eq!(s, 200, "{d}");
    let st = nodes[2].status().await.expect("status");
    assert!(
        members(&st).contains(&(ids[2], nodes[2].admin.clone(), "voter".into())),
        "{st}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_on_a_new_address_is_found_through_gossip() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let n1 = start(root.path(), "n1", &args("n1", "eu", None, &[])).await;
    let seeds = n1.gossip.clone();
    let n2 = start(root.path(), "n2", &args("n2", "us", Some(&seeds), &[])).await;
    let n3 = start(root.path(), "n3", &args("n3", "ap", Some(&seeds), &[])).await;
    let mut nodes = vec![n1, n2, n3];
    let mut all = BTreeSet::new();
    for n in &nodes {
        all.insert((raft_id(n).await, n.admin.clone(), "voter".to_string()));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until("three voters", CONVERGE, || async {
        all_see(&refs, &all).await
    })
    .await;
    restart_elsewhere(&mut nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_on_a_new_address_reports_it_through_join() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut nodes = cluster(weir_bin(), root.path()).await?;
    restart_elsewhere(&mut nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_learner_is_removed_and_added_again_when_it_returns() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let short = ["--raft-remove-dead-learner-after", "2s"];
    let n1 = start(root.path(), "n1", &args("n1", "eu", None, &short)).await;
    let seeds = n1.gossip.clone();
    let n2 = start(root.path(), "n2", &args("n2", "us", Some(&seeds), &short)).await;
    let n3 = start(root.path(), "n3", &args("n3", "ap", Some(&seeds), &short)).await;
    // A fourth node in a region that has a voter: a learner.
    let mut n4 = start(root.path(), "n4", &args("n4", "eu", Some(&seeds), &short)).await;
    let voters = [&n1, &n2, &n3];
    let mut three = BTreeSet::new();
    for n in voters {
        three.insert((raft_id(n).await, n.admin.clone(), "voter".to_string()));
    }
    let id4 = raft_id(&n4).await;
    let mut four = three.clone();
    four.insert((id4, n4.admin.clone(), "learner".to_string()));
    wait_until("three voters and a learner", CONVERGE, || async {
        all_see(&[&n1, &n2, &n3, &n4], &four).await
    })
    .await;

    // Dead: gossip notices, then the timeout removes it; voters stay.
    n4.kill();
    wait_until("the dead learner is removed", CONVERGE, || async {
        all_see(&voters, &three).await
    })
    .await;
    let (s, body) = n1
        .put("/v1/consumers/without-n4?wait=applied", json!({}))
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["applied"]["everywhere"], true, "{body}");

    // Back (same data dir): gossip finds it, it is a learner again and
    // catches up.
    n4.restart().await?;
    wait_until(
        "the returning node is a learner again",
        CONVERGE,
        || async { all_see(&[&n1, &n2, &n3, &n4], &four).await },
    )
    .await;
    wait_until("it has caught up", CONVERGE, || async {
        n4.get("/v1/consumers/without-n4")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await;
    Ok(())
}
