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
    s["cluster"]["node_id"].as_u64().expect("node id")
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
        .put("/v1/consumers/before?wait=applied", json!({"n": 1}))
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["applied"]["everywhere"], true, "{body}");

    // Kill the leader with -9; a fourth node arrives in its region.
    let leader = n1.status().await.expect("status")["cluster"]["leader"]
        .as_u64()
        .expect("leader");
    let mut nodes = vec![n1, n2, n3];
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
        .put("/v1/consumers/after?wait=applied", json!({"n": 2}))
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
