//! The config store's membership over a node's life, with real `weir`
//! processes: a node restarted with its data dir on a new address becomes
//! reachable again (found through gossip or through `--join`); a learner
//! dead for longer than its timeout is removed, and added again when it
//! comes back; nodes that all get the same seeds and `bootstrap_expect`
//! form exactly one cluster, whatever order they start in.

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
    s["cluster"]["raft_id"].as_u64().expect("raft id")
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

/// Three voters; node `i` is stopped with SIGTERM and started again with
/// its data dir on a new admin (Raft) port; every node then lists it at
/// the new address, as a voter, and a write on the leader reaches it.
async fn restart_elsewhere(nodes: &mut [Node], i: usize) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for n in nodes.iter() {
        ids.push(raft_id(n).await);
    }
    let old = nodes[i].admin.clone();
    nodes[i].stop().await?;
    nodes[i].launch(None).await?;
    assert_ne!(nodes[i].admin, old, "the restarted node has a new port");
    assert_eq!(raft_id(&nodes[i]).await, ids[i], "same data dir, same id");
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
    let (s, d) = nodes[i].get("/v1/consumers/moved").await?;
    assert_eq!(s, 200, "{d}");
    let st = nodes[i].status().await.expect("status");
    assert!(
        members(&st).contains(&(ids[i], nodes[i].admin.clone(), "voter".into())),
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
    // The leader itself moves: a new one is elected, finds it through
    // gossip and takes its new address.
    let leader = leader_index(&nodes).await;
    restart_elsewhere(&mut nodes, leader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_on_a_new_address_reports_it_to_the_leader() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut nodes = cluster(weir_bin(), root.path()).await?;
    // A node started with `--join` reports its new address there.
    restart_elsewhere(&mut nodes, 2).await?;
    // The first node has no `--join` (it bootstrapped) and no gossip: it
    // reports its new address through the members it knows.
    restart_elsewhere(&mut nodes, 0).await
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

/// Three UDP ports free right now on loopback, for gossip listeners that
/// must be known before the nodes start (every node gets the same seed
/// list, as in a StatefulSet). Held together so they differ, then freed.
fn three_udp_ports() -> [u16; 3] {
    let socks: Vec<std::net::UdpSocket> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp"))
        .collect();
    let ports: Vec<u16> = socks
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect();
    [ports[0], ports[1], ports[2]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_same_seeds_and_bootstrap_expect_form_one_cluster() -> anyhow::Result<()> {
    use std::hash::BuildHasher;
    use weir_testsupport::Upstream;

    let root = tempfile::tempdir()?;
    let ports = three_udp_ports();
    let seeds = ports.map(|p| format!("127.0.0.1:{p}")).join(",");
    let names = ["n1", "n2", "n3"];
    let regions = ["eu", "us", "ap"];
    // A random start order (printed, to replay a failure).
    let mut order = [0usize, 1, 2];
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    order.rotate_left((r % 3) as usize);
    if r & 4 != 0 {
        order.swap(1, 2);
    }
    eprintln!("start order: {:?}", order.map(|i| names[i]));
    let mut started: Vec<(usize, Node)> = Vec::new();
    for &i in &order {
        let listen = format!("127.0.0.1:{}", ports[i]);
        let a = [
            "--cluster-name",
            "raft-boot",
            "--node-id",
            names[i],
            "--gossip-listen",
            &listen,
            "--region",
            regions[i],
            "--seeds",
            &seeds,
            "--raft-bootstrap-expect",
            "3",
        ];
        let n = Node::start(weir_bin(), &root.path().join(names[i]), &a).await?;
        if started.is_empty() {
            // Alone, the first node cannot bootstrap, and says why.
            wait_until(
                "the first node says what it waits for",
                CONVERGE,
                || async {
                    n.status().await.is_some_and(|s| {
                        s["cluster"]["bootstrap"] == "waiting: 1 of 3 nodes seen"
                            && s["cluster"]["members"]
                                .as_array()
                                .is_some_and(Vec::is_empty)
                    })
                },
            )
            .await;
        }
        started.push((i, n));
    }
    started.sort_by_key(|(i, _)| *i);
    let nodes: Vec<Node> = started.into_iter().map(|(_, n)| n).collect();
    let mut all = BTreeSet::new();
    for n in &nodes {
        all.insert((raft_id(n).await, n.admin.clone(), "voter".to_string()));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "one cluster of three voters with one leader",
        CONVERGE,
        || async { all_see(&refs, &all).await },
    )
    .await;
    for n in &nodes {
        let s = n.status().await.expect("status");
        assert!(s["cluster"]["bootstrap"].is_null(), "{s}");
    }
    let bootstrapped: Vec<&str> = nodes
        .iter()
        .zip(names)
        .filter(|(n, _)| n.log().contains("bootstrapping the config cluster:"))
        .map(|(_, name)| name)
        .collect();
    assert_eq!(
        bootstrapped.len(),
        1,
        "exactly one node initialises: {bootstrapped:?}"
    );
    // And it is the one with the lowest Raft id.
    let mut lowest = (u64::MAX, "");
    for (n, name) in nodes.iter().zip(names) {
        lowest = lowest.min((raft_id(n).await, name));
    }
    assert_eq!(bootstrapped, [lowest.1]);

    // A route written on a follower is served by all three.
    let up = Upstream::start("boot").await;
    let leader = leader_index(&nodes).await;
    let follower = &nodes[(leader + 1) % 3];
    let (s, body) = follower
        .put(
            "/v1/upstreams/u",
            json!({"targets": [{"addr": up.target()}]}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    let (s, body) = follower
        .put(
            "/v1/routes/r?wait=applied",
            json!({"paths": ["/hello"], "upstream": "u"}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["applied"]["everywhere"], true, "{body}");
    for n in &nodes {
        wait_until("the route is served", CONVERGE, || async {
            n.proxy_status("/hello").await == Some(200)
        })
        .await;
    }

    // A fourth node with the same settings arrives later: it joins the
    // cluster as a learner and never bootstraps its own.
    let a = [
        "--cluster-name",
        "raft-boot",
        "--node-id",
        "n4",
        "--gossip-listen",
        "127.0.0.1:0",
        "--region",
        "eu",
        "--seeds",
        &seeds,
        "--raft-bootstrap-expect",
        "3",
    ];
    let n4 = Node::start(weir_bin(), &root.path().join("n4"), &a).await?;
    let mut four = all.clone();
    four.insert((raft_id(&n4).await, n4.admin.clone(), "learner".to_string()));
    wait_until(
        "the late node is a learner of the cluster",
        CONVERGE,
        || async { all_see(&[&nodes[0], &nodes[1], &nodes[2], &n4], &four).await },
    )
    .await;
    assert!(
        !n4.log().contains("bootstrapping the config cluster:"),
        "{}",
        n4.log()
    );
    wait_until("the late node serves the route", CONVERGE, || async {
        n4.proxy_status("/hello").await == Some(200)
    })
    .await;
    Ok(())
}

#[test]
fn membership_flags_are_checked_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_string_lossy();
    // (flags, what the error must say)
    let cases: [(&[&str], &str); 4] = [
        (
            &["--raft-bootstrap-expect", "0"],
            "--raft-bootstrap-expect must be at least 1",
        ),
        (
            &["--raft-bootstrap-expect", "3", "--join", "127.0.0.1:1"],
            "--raft-bootstrap-expect and --join exclude each other",
        ),
        (
            &["--raft-bootstrap-expect", "3"],
            "--raft-bootstrap-expect needs gossip",
        ),
        (
            &["--raft-remove-dead-learner-after", "0s"],
            "--raft-remove-dead-learner-after must be at least 1s",
        ),
    ];
    for (flags, want) in cases {
        let out = std::process::Command::new(weir_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--data-dir", &data])
            .args(flags)
            .output()
            .expect("run weir");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

/// Writes a store the way an older version could: through the real
/// store (Raft, redb) with a validator that takes anything, so it holds a
/// free-form consumer document the typed kind refuses now. Returns once
/// the store is closed.
async fn legacy_store(data: &std::path::Path, docs: &[(&str, &str, Value)]) -> anyhow::Result<()> {
    use weir_cluster::raft::{RaftKv, RaftSettings};
    use weir_storage::{Batch, Op};

    let settings = RaftSettings::new(data.to_path_buf(), "127.0.0.1:1".into());
    let anything: weir_storage::Validator = std::sync::Arc::new(|_| Vec::new());
    let kv = RaftKv::start(settings, anything).await?;
    let ops = docs
        .iter()
        .map(|(kind, id, value)| Op::Put {
            kind: kind.to_string(),
            id: id.to_string(),
            value: value.clone(),
            expect: None,
        })
        .collect();
    let w = kv
        .write(Batch {
            ops,
            author: "old-version".into(),
            message: "free-form documents".into(),
            at_ms: 0,
        })
        .await?;
    kv.wait_local(w.index, Duration::from_secs(10)).await?;
    kv.shutdown().await;
    drop(kv);
    // Raft's tasks let go of the file as they end: wait until it opens.
    wait_until("the old store is closed", CONVERGE, || async {
        weir_storage::Store::open(data).is_ok()
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_outdated_documents_starts_reports_them_and_can_be_fixed() -> anyhow::Result<()>
{
    use weir_testsupport::Upstream;

    let root = tempfile::tempdir()?;
    let up = Upstream::start("legacy").await;
    let dir = root.path().join("n1");
    legacy_store(
        &dir.join("data"),
        &[
            (
                "upstreams",
                "u",
                json!({"id": "u", "targets": [{"addr": up.target()}]}),
            ),
            (
                "routes",
                "r",
                json!({"id": "r", "paths": ["/hello"], "upstream": "u"}),
            ),
            (
                "consumers",
                "bob",
                json!({"id": "bob", "labels": {"team": "b"}}),
            ),
            (
                "consumers",
                "alice",
                json!({"id": "alice", "labels": {"team": "a"}, "email": "alice@example.com"}),
            ),
        ],
    )
    .await?;

    // It starts, and serves what does not depend on the broken document.
    let node = Node::start(weir_bin(), &dir, &[]).await?;
    wait_until("the route is served", CONVERGE, || async {
        node.proxy_status("/hello").await == Some(200)
    })
    .await;

    // Its status names the document, the field and the reason.
    wait_until("the status reports the document", CONVERGE, || async {
        node.status()
            .await
            .is_some_and(|s| s["config"]["writes_blocked"] == true)
    })
    .await;
    let status = node.status().await.expect("status");
    let problems = status["config"]["stored_problems"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(problems.len(), 1, "{status}");
    assert_eq!(problems[0]["kind"], "consumers", "{status}");
    assert_eq!(problems[0]["id"], "alice", "{status}");
    assert!(
        problems[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("email")),
        "{status}"
    );

    // Logged once, at error, with kind and id.
    let lines: Vec<String> = node
        .log()
        .lines()
        .filter(|l| l.contains("a stored document is not valid"))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("ERROR")
            && lines[0].contains("kind=consumers")
            && lines[0].contains("id=alice"),
        "{}",
        lines[0]
    );

    // A write elsewhere is refused, saying what blocks it and how to fix.
    let (s, body) = node.put("/v1/consumers/carol", json!({})).await?;
    assert_eq!(s, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("consumers/alice") && msg.contains("weir delete consumers alice"),
        "{body}"
    );
    // `weir cluster store` says it too.
    let out = std::process::Command::new(weir_bin())
        .args(["cluster", "store", "--admin", &node.admin])
        .env_remove("WEIR_ADMIN")
        .env_remove("WEIR_ADMIN_KEY")
        .env_remove("WEIR_CLI_CONFIG")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("writes are refused") && err.contains("consumers/alice"),
        "{err}"
    );

    // So does `weir apply`, even of a file that changes nothing.
    let file = root.path().join("apply.yaml");
    std::fs::write(
        &file,
        format!(
            "upstreams:\n  - id: u\n    targets:\n      - addr: \"{}\"\nroutes:\n  - id: r\n    paths: [\"/hello\"]\n    upstream: u\n",
            up.target()
        ),
    )?;
    let out = std::process::Command::new(weir_bin())
        .args(["apply", "-f"])
        .arg(&file)
        .args(["--admin", &node.admin])
        .env_remove("WEIR_ADMIN")
        .env_remove("WEIR_ADMIN_KEY")
        .env_remove("WEIR_CLI_CONFIG")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("consumers/alice") && text.contains("weir delete consumers alice"),
        "{text}"
    );

    // Fixed with a valid body: writes work again and the node serves
    // the whole config.
    let (s, body) = node
        .put("/v1/consumers/alice", json!({"labels": {"team": "a"}}))
        .await?;
    assert_eq!(s, 200, "{body}");
    wait_until("writes are no longer blocked", CONVERGE, || async {
        node.status()
            .await
            .is_some_and(|s| s["config"]["writes_blocked"] == false)
    })
    .await;
    let (s, body) = node.put("/v1/consumers/carol", json!({})).await?;
    assert_eq!(s, 200, "{body}");
    let (s, body) = node.get("/v1/consumers/bob").await?;
    assert_eq!(s, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outdated_global_plugin_means_no_routes_until_it_is_fixed() -> anyhow::Result<()> {
    use weir_testsupport::Upstream;

    let root = tempfile::tempdir()?;
    let up = Upstream::start("legacy").await;
    let dir = root.path().join("n1");
    legacy_store(
        &dir.join("data"),
        &[
            (
                "upstreams",
                "u",
                json!({"id": "u", "targets": [{"addr": up.target()}]}),
            ),
            (
                "routes",
                "r",
                json!({"id": "r", "paths": ["/hello"], "upstream": "u"}),
            ),
            // Free-form: the allow list sits where `config` belongs now.
            (
                "plugins",
                "ip-restriction",
                json!({"id": "ip-restriction", "allow": ["10.0.0.0/8"]}),
            ),
        ],
    )
    .await?;
    let node = Node::start(weir_bin(), &dir, &[]).await?;
    wait_until("the status reports the plugin", CONVERGE, || async {
        node.status().await.is_some_and(|s| {
            s["config"]["stored_problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["kind"] == "plugins"))
        })
    })
    .await;
    // Serving the route without its global restriction could let in
    // clients it refuses: nothing is routed.
    assert_eq!(node.proxy_status("/hello").await, Some(404));
    assert!(node.log().contains("serving no routes"), "{}", node.log());
    // Deleting it (one document: one write) makes the store valid.
    let r = weir_testsupport::http_client()
        .delete(node.url("/v1/plugins/ip-restriction"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    wait_until("the route is served", CONVERGE, || async {
        node.proxy_status("/hello").await == Some(200)
    })
    .await;
    wait_until("writes are no longer blocked", CONVERGE, || async {
        node.status()
            .await
            .is_some_and(|s| s["config"]["writes_blocked"] == false)
    })
    .await;
    Ok(())
}
