//! What an operator sees of a node through the real `weir` binary: one
//! node id in the log, `/v1/status` and the CLI, names that match the
//! mode, `weir cluster status` and `weir cluster store` on a single node
//! and in a gossip cluster, tables that line up, and `weir get -o yaml`
//! output that `weir apply -f` takes back unchanged.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use weir_testsupport::raftnode::Node;
use weir_testsupport::{Upstream, wait_until};

use common::weir_bin;

const CONVERGE: Duration = Duration::from_secs(60);

/// Runs the CLI against `admin`; (success, stdout, stderr).
fn cli(admin: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(weir_bin())
        .args(args)
        .args(["--admin", admin])
        .env_remove("WEIR_ADMIN")
        .env_remove("WEIR_ADMIN_KEY")
        .env_remove("WEIR_CLI_CONFIG")
        .output()
        .expect("run weir");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Writes `yaml` to a file in `dir` and applies it with `weir apply -f`.
fn apply_yaml(dir: &std::path::Path, node: &Node, yaml: &str) -> anyhow::Result<()> {
    let file = dir.join("weir.yaml");
    std::fs::write(&file, yaml)?;
    let (ok, out, err) = cli(&node.admin, &["apply", "-f", &file.to_string_lossy()]);
    anyhow::ensure!(ok, "weir apply failed: {out}{err}");
    Ok(())
}

/// The cells of a table line (two or more spaces apart).
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

/// Start columns of the cells of a table line (cells are two or more
/// spaces apart).
fn cell_starts(line: &str) -> Vec<usize> {
    let b = line.as_bytes();
    (0..b.len())
        .filter(|&i| b[i] != b' ' && (i == 0 || (i >= 2 && b[i - 1] == b' ' && b[i - 2] == b' ')))
        .collect()
}

/// Every row of the table that starts at `header` has its cells where the
/// header's columns start.
fn assert_aligned(text: &str, header: &str) {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no `{header}` table:\n{text}"));
    let columns = cell_starts(head);
    let mut rows = 0;
    for row in lines.take_while(|l| !l.is_empty()) {
        let cells = cell_starts(row);
        assert!(
            cells.iter().all(|c| columns.contains(c)) && cells.len() >= columns.len() - 1,
            "row does not line up with its header:\n{head}\n{row}"
        );
        rows += 1;
    }
    assert!(rows > 0, "an empty table:\n{text}");
}

/// `key=value` of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    Some(rest.split(' ').next()?.trim_matches('"'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_says_what_it_is_with_one_id_everywhere() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    // A one-voter store elects itself just after the node starts serving.
    wait_until("the node leads its store", CONVERGE, || async {
        node.status()
            .await
            .is_some_and(|s| s["cluster"]["role"] == "leader")
    })
    .await;
    let status = node.status().await.expect("status");
    let node_id = status["node_id"].as_str().expect("node id").to_string();
    let raft_id = status["cluster"]["raft_id"].as_u64().expect("raft id");
    assert_eq!(status["mode"], "store");
    assert_eq!(status["membership"], "single");
    assert!(status["cluster"].get("node_id").is_none(), "{status}");
    assert_eq!(status["cluster"]["members"][0]["node_id"], node_id.as_str());

    // The log names the mode as the CLI does, and the node by its node id,
    // with the Raft id beside it under its own name.
    let log = node.log();
    let serving = log
        .lines()
        .find(|l| l.contains("weir is serving"))
        .expect("a serving line");
    assert!(
        serving.contains("weir is serving (store mode, single node)"),
        "{serving}"
    );
    assert!(!log.contains("cluster mode"), "{log}");
    assert_eq!(
        field(serving, "node_id"),
        Some(node_id.as_str()),
        "{serving}"
    );
    assert_eq!(
        field(serving, "raft_id"),
        Some(raft_id.to_string().as_str())
    );
    for l in log.lines().filter(|l| l.contains("node_id=")) {
        let v = field(l, "node_id").unwrap_or_default();
        assert!(v.parse::<u64>().is_err(), "a Raft id as node_id: {l}");
    }

    let (ok, out, err) = cli(&node.admin, &["cluster", "status"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!(
            "{node_id} is a single node (store mode): no gossip, so no other members\n\nID"
        )),
        "{out}"
    );
    assert_aligned(&out, "ID");
    let row = out.lines().nth(3).expect("a member row");
    assert_eq!(
        cells(row)[..5],
        [
            format!("{node_id} (self)"),
            "alive".into(),
            "-".into(),
            "leader".into(),
            "0".into()
        ],
        "{out}"
    );

    let (ok, out, err) = cli(&node.admin, &["cluster", "store"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!(
            "config store seen from {node_id} (raft_id={raft_id}): leader, term "
        )),
        "{out}"
    );
    assert_aligned(&out, "NODE");
    assert!(
        out.lines().any(|l| {
            cells(l)
                == [
                    format!("{node_id} (self)").as_str(),
                    raft_id.to_string().as_str(),
                    "leader",
                    node.admin.as_str(),
                ]
        }),
        "{out}"
    );
    let (ok, out, err) = cli(&node.admin, &["cluster", "store", "--json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out)?;
    assert_eq!(doc["raft_id"], raft_id);

    // Tables of documents and history line up.
    apply_yaml(
        root.path(),
        &node,
        &format!(
            "upstreams:\n  - id: u\n    targets:\n      - addr: \"{}\"\nroutes:\n  - id: a\n    paths: [\"/a\"]\n    upstream: u\n  - id: a-route-with-a-long-id\n    paths: [\"/b\"]\n    upstream: u\n",
            up.target()
        ),
    )?;
    let (ok, out, err) = cli(&node.admin, &["get", "routes"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "ID                      REVISION  CREATED\n\
         a                       1         1\n\
         a-route-with-a-long-id  1         1\n"
    );
    let (ok, out, err) = cli(&node.admin, &["revisions"]);
    assert!(ok, "{err}");
    assert_aligned(&out, "REVISION");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_yaml_is_applied_back_unchanged() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    apply_yaml(
        root.path(),
        &node,
        &format!(
            "upstreams:\n  - id: u\n    targets:\n      - addr: \"{}\"\nroutes:\n  - id: r\n    paths: [\"/r\"]\n    methods: [GET]\n    upstream: u\n    plugins:\n      limit-count: {{count: 5, time_window: 60s}}\n  - id: other\n    paths: [\"/o\"]\n    upstream: u\n",
            up.target()
        ),
    )?;

    let (ok, yaml, err) = cli(&node.admin, &["get", "routes", "r", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(!yaml.contains("null"), "{yaml}");
    assert!(yaml.starts_with("kind: routes\nid: r\n"), "{yaml}");
    let saved = root.path().join("r.yaml");
    std::fs::write(&saved, &yaml)?;

    // Applied as it is: nothing to do.
    let (ok, out, err) = cli(&node.admin, &["apply", "-f", &saved.to_string_lossy()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("no changes"), "{out}");
    // Deleted, then applied again: the same route comes back, alone.
    let (ok, _, err) = cli(&node.admin, &["delete", "routes", "r"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&node.admin, &["apply", "-f", &saved.to_string_lossy()]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "+ create routes/r\napplied 1 change(s) as revision 3\n"
    );
    let (ok, again, err) = cli(&node.admin, &["get", "routes", "r", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert_eq!(again, yaml);
    // The document file touched nothing else.
    assert_eq!(node.get("/v1/routes/other").await?.0, 200);
    wait_until("the route is served again", CONVERGE, || async {
        node.proxy_status("/r").await == Some(200)
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_each_members_raft_role_and_revision() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let args = |name: &str, seeds: Option<&str>| -> Vec<String> {
        let mut a: Vec<String> = [
            "--cluster-name",
            "operator",
            "--node-id",
            name,
            "--gossip-listen",
            "127.0.0.1:0",
            "--region",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(s) = seeds {
            a.extend(["--seeds".to_string(), s.to_string()]);
        }
        a
    };
    let mut nodes: Vec<Node> = Vec::new();
    let mut seeds: Option<String> = None;
    for name in ["n1", "n2", "n3"] {
        let a = args(name, seeds.as_deref());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let n = Node::start(weir_bin(), &root.path().join(name), &a).await?;
        seeds.get_or_insert_with(|| n.gossip.clone());
        nodes.push(n);
    }
    let (s, body) = nodes[0]
        .put(
            "/v1/upstreams/u?wait=applied",
            serde_json::json!({"targets": [{"addr": "127.0.0.1:9"}]}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    let admin = nodes[1].admin.clone();
    // Three voters, one of them leader, each serving the revision written.
    let table = weir_testsupport::wait_for("every member's role and revision", CONVERGE, || {
        let admin = admin.clone();
        async move {
            let (ok, out, _) = cli(&admin, &["cluster", "status"]);
            let rows: Vec<Vec<String>> = out
                .lines()
                .filter(|l| l.starts_with('n'))
                .map(cells)
                .collect();
            let mut roles: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
            roles.sort();
            let done = ok
                && rows.len() == 3
                && roles == ["leader", "voter", "voter"]
                && rows.iter().all(|r| r[4] == "1");
            done.then_some(out)
        }
    })
    .await;
    assert!(
        table.starts_with("cluster operator (seen from n2)\n\nID"),
        "{table}"
    );
    assert_aligned(&table, "ID");
    let (ok, out, err) = cli(&admin, &["cluster", "status", "--json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out)?;
    assert_eq!(doc["mode"], "store");
    for m in doc["members"].as_array().expect("members") {
        assert!(m["raft_id"].as_u64().is_some(), "{m}");
        assert!(m["generation"].as_u64().is_some(), "{m}");
    }
    // `weir cluster store` names every Raft member by its node id.
    let (ok, out, err) = cli(&admin, &["cluster", "store"]);
    assert!(ok, "{err}");
    assert_aligned(&out, "NODE");
    for name in ["n1", "n2 (self)", "n3"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nodes_old_incarnation_is_marked_old() {
    use weir_chaos::{Cluster, ClusterSpec};
    let mut c = Cluster::start(weir_bin(), ClusterSpec::new(2))
        .await
        .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    c.kill(1).await.expect("kill -9");
    c.restart(1).await.expect("restarts");
    c.wait_converged(CONVERGE).await.expect("rejoins");
    let admin = c.node(0).gateway().admin_addr().to_string();
    let id = c.node(1).spec.id.clone();
    // Until gossip forgets the old incarnation, both are listed: the old
    // one marked, the new one not.
    let rows = weir_testsupport::wait_for("both incarnations listed", CONVERGE, || {
        let (admin, id) = (admin.clone(), id.clone());
        async move {
            let (ok, out, _) = cli(&admin, &["cluster", "status"]);
            // The member table only (the mesh table lists peers too).
            let rows: Vec<Vec<String>> = out
                .lines()
                .skip_while(|l| !l.starts_with("ID "))
                .take_while(|l| !l.is_empty())
                .filter(|l| l.starts_with(&format!("{id} ")))
                .map(cells)
                .collect();
            (ok && rows.len() == 2).then_some(rows)
        }
    })
    .await;
    assert!(rows[0][2].ends_with(" (old)"), "{rows:?}");
    assert!(!rows[1][2].contains("old"), "{rows:?}");
    assert_eq!(rows[1][1], "alive", "{rows:?}");
}
