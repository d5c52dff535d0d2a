//! The config store's membership driven by gossip, with real `weir`
//! processes: nodes started with gossip seeds only (no `--join`) form one
//! Raft group whose voters are spread over regions, and a voter killed with
//! -9 is replaced by a node that arrives later.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use weir_testsupport::raftnode::Node;
use weir_testsupport::wait_until;

use common::weir_bin;

const CONVERGE: Duration = Duration::from_secs(60);

/// Gossip and store flags of a test node: loopback gossip on port 0, its
/// region, seeds, and a short voter timeout.
fn args(name: &str, region: &str, seeds: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--cluster-name",
        "raft-gossip",
        "--node-id",
        name,
        "--gossip-listen",
        "127.0.0.1:0",
        "--region",
        region,
        "--raft-voter-timeout",
        "3s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(s) = seeds {
        a.extend(["--seeds".to_string(), s.to_string()]);
    }
    a
}

async fn start(root: &std::path::Path, name: &str, region: &str, seeds: Option<&str>) -> Node {
    let a = args(name, region, seeds);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    Node::start(weir_bin(), &root.join(name), &a)
        .await
        .expect("weir starts")
}

fn voters(status: &Value) -> BTreeSet<u64> {
    status["cluster"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "voter")
        .filter_map(|m| m["id"].as_u64())
        .collect()
}

/// True when every node reports exactly `want` as voters and the same
/// leader, which is one of them.
async fn agreed(nodes: &[&Node], want: &BTreeSet<u64>) -> bool {
    let mut leader = None;
    for n in nodes {
        let Some(s) = n.status().await else {
            return false;
        };
        if voters(&s) != *want {
            return false;
        }
        let l = s["cluster"]["leader"].as_u64();
        if l.is_none_or(|l| !want.contains(&l)) || (leader.is_some() && leader != l) {
            return false;
        }
        leader = l;
    }
    true
}

async fn raft_id(n: &Node) -> u64 {
    let s = n.status().await.expect("status");
    s["cluster"]["raft_id"].as_u64().expect("raft id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_seeds_alone_form_one_group_and_a_killed_voter_is_replaced() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let n1 = start(root.path(), "n1", "eu", None).await;
    let seeds = n1.gossip.clone();
    assert!(!seeds.is_empty(), "no gossip address in the ready file");
    let n2 = start(root.path(), "n2", "us", Some(&seeds)).await;
    let n3 = start(root.path(), "n3", "ap", Some(&seeds)).await;
    let ids = [raft_id(&n1).await, raft_id(&n2).await, raft_id(&n3).await];
    let all: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(all.len(), 3, "distinct raft ids: {ids:?}");
    wait_until(
        "one raft group with the three nodes as voters",
        CONVERGE,
        || async { agreed(&[&n1, &n2, &n3], &all).await },
    )
    .await;

    // A write through a follower reaches everyone.
    let (s, body) = n3
        .put(
            "/v1/consumers/before?wait=applied",
            json!({"labels": {"n": "1"}}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["applied"]["everywhere"], true, "{body}");

    // Kill the leader with -9; a fourth node arrives in its region.
    let leader = n1.status().await.expect("status")["cluster"]["leader"]
        .as_u64()
        .expect("leader");
    let mut nodes = [n1, n2, n3];
    let dead = ids
        .iter()
        .position(|&i| i == leader)
        .expect("leader is a node");
    let dead_region = ["eu", "us", "ap"][dead];
    nodes[dead].kill();
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != dead)
        .map(|(_, n)| n)
        .collect();
    let seeds = survivors[0].gossip.clone();
    let n4 = start(root.path(), "n4", dead_region, Some(&seeds)).await;
    let id4 = raft_id(&n4).await;
    let mut want: BTreeSet<u64> = all.clone();
    want.remove(&leader);
    want.insert(id4);
    let mut everyone = survivors.clone();
    everyone.push(&n4);
    wait_until(
        "the fourth node is promoted in place of the killed voter",
        CONVERGE,
        || async { agreed(&everyone, &want).await },
    )
    .await;

    // Writes keep working, on every node including the new one.
    let (s, body) = n4
        .put(
            "/v1/consumers/after?wait=applied",
            json!({"labels": {"n": "2"}}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    for n in &everyone {
        let (s, d) = n.get("/v1/consumers/before").await?;
        assert_eq!(s, 200, "{d}");
        let (s, d) = n.get("/v1/consumers/after").await?;
        assert_eq!(s, 200, "{d}");
    }
    // The killed node is kept as a learner (it may come back).
    let s = n4.status().await.expect("status");
    let roles: Vec<(u64, String)> = s["cluster"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["id"].as_u64()?, m["role"].as_str()?.to_string())))
        .collect();
    assert!(
        roles.contains(&(leader, "learner".to_string())),
        "{roles:?}"
    );
    Ok(())
}

/// Runs `weir ARGS` with a clean environment for the admin client (no
/// `WEIR_ADMIN*` from the caller, an empty home): success and output.
fn weir(args: &[&str], env: &[(&str, &str)], home: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(weir_bin())
        .args(args)
        .env_remove("WEIR_ADMIN")
        .env_remove("WEIR_ADMIN_KEY")
        .env_remove("WEIR_CLI_CONFIG")
        .env("HOME", home)
        .envs(env.iter().copied())
        .output()
        .expect("run weir");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_send_the_admin_key() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut a = args("keyed", "eu", None);
    a.extend(
        [
            "--admin-key",
            "ops:admin:aaaaaaaaaaaaaaaaaaaa",
            "--admin-key",
            "dash:viewer:vvvvvvvvvvvvvvvvvvvv",
        ]
        .map(String::from),
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let node = Node::start(weir_bin(), &root.path().join("keyed"), &a).await?;
    let home = root.path().join("home");
    std::fs::create_dir_all(&home)?;
    let admin = node.admin.as_str();

    for cmd in [["cluster", "status"], ["cluster", "store"]] {
        // No key: the API's 401 is reported, and the command fails.
        let (ok, out) = weir(&[cmd[0], cmd[1], "--admin", admin], &[], &home);
        assert!(!ok, "{out}");
        assert!(out.contains("401"), "{out}");
        // A wrong key is refused too.
        let (ok, out) = weir(
            &[
                cmd[0],
                cmd[1],
                "--admin",
                admin,
                "--admin-key",
                "wrong-key-wrong-key",
            ],
            &[],
            &home,
        );
        assert!(!ok && out.contains("401"), "{out}");
        // The flag, under both names; a viewer key is enough to read.
        for flag in ["--admin-key", "--key"] {
            let (ok, out) = weir(
                &[
                    cmd[0],
                    cmd[1],
                    "--admin",
                    admin,
                    flag,
                    "vvvvvvvvvvvvvvvvvvvv",
                ],
                &[],
                &home,
            );
            assert!(ok, "{flag}: {out}");
        }
        // The environment.
        let (ok, out) = weir(
            &[cmd[0], cmd[1]],
            &[
                ("WEIR_ADMIN", admin),
                ("WEIR_ADMIN_KEY", "aaaaaaaaaaaaaaaaaaaa"),
            ],
            &home,
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = weir(
        &[
            "cluster",
            "status",
            "--admin",
            admin,
            "--admin-key",
            "vvvvvvvvvvvvvvvvvvvv",
        ],
        &[],
        &home,
    );
    assert!(ok && out.contains("keyed (self)"), "{out}");

    // The config file in the default place (~/.config/weir/cli.yaml).
    let dir = home.join(".config/weir");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("cli.yaml"),
        format!("admin: http://{admin}\nkey: vvvvvvvvvvvvvvvvvvvv\n"),
    )?;
    let (ok, out) = weir(&["cluster", "status", "--json"], &[], &home);
    assert!(ok, "{out}");
    let doc: Value = serde_json::from_str(&out)?;
    assert_eq!(doc["node_id"], "keyed");
    // A flag wins over the file.
    let (ok, out) = weir(
        &["cluster", "status", "--admin-key", "wrong-key-wrong-key"],
        &[],
        &home,
    );
    assert!(!ok && out.contains("401"), "{out}");
    Ok(())
}

/// Store mode, gossip and telemetry in one cluster: three nodes in three
/// regions found through gossip, tracing to a real OTLP receiver. A route
/// written on a follower is served by every node, a dead target probed by
/// one node is out of rotation on all of them, and each node's spans name
/// the node and its region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_gossip_and_tracing_work_together() -> anyhow::Result<()> {
    use weir_testsupport::{OtlpReceiver, SpanKind, Upstream};

    let root = tempfile::tempdir()?;
    let receiver = OtlpReceiver::grpc().await;
    let file = root.path().join("weir.yaml");
    std::fs::write(
        &file,
        format!(
            "observability:\n  tracing:\n    enabled: true\n    endpoint: {}\n    protocol: grpc\n    scheduled_delay: 50ms\n    export_timeout: 2s\n",
            receiver.endpoint()
        ),
    )?;
    let file = file.to_string_lossy().to_string();
    let regions = [("n1", "eu"), ("n2", "us"), ("n3", "ap")];
    let mut nodes: Vec<Node> = Vec::new();
    let mut seeds: Option<String> = None;
    for (name, region) in regions {
        let mut a = args(name, region, seeds.as_deref());
        a.extend(["--config".to_string(), file.clone()]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let n = Node::start(weir_bin(), &root.path().join(name), &a).await?;
        seeds.get_or_insert_with(|| n.gossip.clone());
        nodes.push(n);
    }
    let mut ids = BTreeSet::new();
    for n in &nodes {
        ids.insert(raft_id(n).await);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until("one raft group of three voters", CONVERGE, || async {
        agreed(&refs, &ids).await
    })
    .await;

    // Written on a follower: an upstream with a live and a doomed target,
    // each probed by one node only, and a route to it.
    let live = Upstream::start("live").await;
    let doomed = Upstream::start("doomed").await;
    let leader = nodes[0].status().await.expect("status")["cluster"]["leader"]
        .as_u64()
        .expect("leader");
    let mut follower = None;
    for n in &nodes {
        if raft_id(n).await != leader {
            follower = Some(n);
            break;
        }
    }
    let follower = follower.expect("a follower");
    let (s, body) = follower
        .put(
            "/v1/upstreams/u",
            json!({
                "targets": [{"addr": live.target()}, {"addr": doomed.target()}],
                "health_check": {"type": "tcp", "interval": "300ms", "timeout": "300ms",
                                 "unhealthy_threshold": 1, "healthy_threshold": 1, "probers": 1},
            }),
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

    // Every node's spans carry its node id and region.
    for ((name, region), n) in regions.iter().zip(&nodes) {
        wait_until("a server span from the node", CONVERGE, || async {
            let _ = n.proxy_status("/hello").await;
            receiver.spans().iter().any(|s| {
                s.kind == SpanKind::Server
                    && s.str_attr("weir.node.id") == Some(name)
                    && s.resource_str("cloud.region") == Some(region)
                    && s.str_attr("http.route") == Some("/hello")
            })
        })
        .await;
    }

    // The doomed target dies; one node probes it, all take it out.
    doomed.kill().await;
    let target = doomed.target();
    for n in &nodes {
        wait_until("the dead target is down everywhere", CONVERGE, || async {
            n.get("/v1/cluster/health").await.is_ok_and(|(s, v)| {
                s == 200
                    && v["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| t["target"] == target.as_str() && t["cluster_down"] == true)
            })
        })
        .await;
    }
    let mut probed_here = 0;
    for n in &nodes {
        let (_, v) = n.get("/v1/cluster/health").await?;
        probed_here += v["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["target"] == target.as_str() && t["probed_here"] == true)
            .count();
    }
    assert_eq!(
        probed_here, 1,
        "exactly one prober, the others learn by gossip"
    );
    // With the dead target out, every node keeps answering.
    for n in &nodes {
        for _ in 0..5 {
            assert_eq!(n.proxy_status("/hello").await, Some(200));
        }
    }
    Ok(())
}
