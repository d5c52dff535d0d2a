//! The replicated config store with real `weir` processes: writes on a
//! follower, leader crash during a stream of writes, full restart, an
//! isolated node, a node that catches up from a snapshot, bad writes,
//! `weir apply`, admin keys and the OpenAPI document.
//!
//! The launcher is `weir_testsupport::raftnode`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use weir_testsupport::raftnode::{Node, cluster, cluster_with_args, leader_index};
use weir_testsupport::{Upstream, http_client, wait_until};

use common::weir_bin;

const CONVERGE: Duration = Duration::from_secs(30);

fn upstream_doc(target: &str) -> Value {
    json!({"targets": [{"addr": target}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_written_on_a_follower_is_served_by_all_three_nodes() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let nodes = cluster(weir_bin(), root.path()).await?;
    let leader = weir_testsupport::raftnode::leader_index(&nodes).await;
    let follower = &nodes[(leader + 1) % 3];
    let (s, _) = follower
        .put("/v1/upstreams/u", upstream_doc(&up.target()))
        .await?;
    assert_eq!(s, 200);
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
    // And the same revision everywhere.
    let mut revs = Vec::new();
    for n in &nodes {
        revs.push(n.status().await.map(|s| s["config"]["revision"].clone()));
    }
    assert!(revs.windows(2).all(|w| w[0] == w[1]), "{revs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_leader_kill() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut nodes = cluster(weir_bin(), root.path()).await?;
    let leader = weir_testsupport::raftnode::leader_index(&nodes).await;
    let admins: Vec<String> = nodes.iter().map(|n| n.admin.clone()).collect();
    // Four writers, spread over the nodes, 500 writes in all.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let admins = admins.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125usize {
                let id = format!("w{w}-{i}");
                let admin = &admins[(w + i) % admins.len()];
                let r = http_client()
                    .put(format!("http://{admin}/v1/consumers/{id}"))
                    .timeout(Duration::from_secs(15))
                    .json(&json!({"id": id, "labels": {"n": i.to_string()}}))
                    .send()
                    .await;
                if let Ok(r) = r
                    && r.status() == 200
                    && let Ok(v) = r.json::<Value>().await
                    && let Some(rev) = v["document"]["revision"].as_u64()
                {
                    acked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, rev);
                }
            }
        }));
    }
    wait_until(
        "150 acknowledged writes",
        Duration::from_secs(120),
        || async { acked.lock().unwrap_or_else(|e| e.into_inner()).len() >= 150 },
    )
    .await;
    nodes[leader].kill();
    for t in tasks {
        t.await?;
    }
    nodes[leader].restart().await?;
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        acked.len() >= 150,
        "only {} writes acknowledged",
        acked.len()
    );
    // Every node converges to the same history, which holds every
    // acknowledged write at the revision it was acknowledged with.
    let mut histories = Vec::new();
    for n in &nodes {
        wait_until("the node catches up", CONVERGE, || async {
            let a = n.status().await;
            let b = nodes[(leader + 1) % 3].status().await;
            match (a, b) {
                (Some(a), Some(b)) => {
                    a["cluster"]["revision"] == b["cluster"]["revision"]
                        && a["cluster"]["applied_index"] == b["cluster"]["applied_index"]
                }
                _ => false,
            }
        })
        .await;
        let mut items = Vec::new();
        let mut after = 0u64;
        loop {
            let (s, page) = n
                .get(&format!("/v1/revisions?after={after}&limit=1000"))
                .await?;
            assert_eq!(s, 200);
            let got = page["items"].as_array().cloned().unwrap_or_default();
            if got.is_empty() {
                break;
            }
            after = got
                .last()
                .and_then(|r| r["revision"].as_u64())
                .unwrap_or(after);
            items.extend(got);
        }
        histories.push(items);
    }
    assert!(
        histories.windows(2).all(|w| w[0] == w[1]),
        "histories differ"
    );
    for n in &nodes {
        for (id, rev) in &acked {
            let (s, d) = n.get(&format!("/v1/consumers/{id}")).await?;
            assert_eq!(s, 200, "{id} missing on {}", n.admin);
            assert_eq!(d["revision"].as_u64(), Some(*rev), "{id} on {}", n.admin);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_the_config() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let mut nodes = cluster(weir_bin(), root.path()).await?;
    let (s, _) = nodes[0]
        .put("/v1/upstreams/u", upstream_doc(&up.target()))
        .await?;
    assert_eq!(s, 200);
    let (s, _) = nodes[1]
        .put(
            "/v1/routes/r?wait=applied",
            json!({"paths": ["/kept"], "upstream": "u"}),
        )
        .await?;
    assert_eq!(s, 200);
    for n in nodes.iter_mut() {
        n.kill();
    }
    for n in nodes.iter_mut() {
        let admin = n.admin.clone();
        n.launch(Some(&admin)).await?;
    }
    for n in &nodes {
        // Served from the local store at once, before any election.
        wait_until("the route is served after restart", CONVERGE, || async {
            n.proxy_status("/kept").await == Some(200)
        })
        .await;
    }
    weir_testsupport::raftnode::leader_index(&nodes).await;
    let (s, d) = nodes[2].get("/v1/routes/r?consistent=true").await?;
    assert_eq!(s, 200, "{d}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_keeps_serving_and_says_it_is_stale() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let nodes = cluster(weir_bin(), root.path()).await?;
    let (s, _) = nodes[0]
        .put("/v1/upstreams/u", upstream_doc(&up.target()))
        .await?;
    assert_eq!(s, 200);
    let (s, _) = nodes[0]
        .put(
            "/v1/routes/r?wait=applied",
            json!({"paths": ["/old"], "upstream": "u"}),
        )
        .await?;
    assert_eq!(s, 200);
    let lone = &nodes[2];
    let fresh = lone.status().await.context("status")?;
    assert_eq!(fresh["config_stale"], false, "{fresh}");
    // Cut it off: the other two stop answering.
    nodes[0].signal("-STOP");
    nodes[1].signal("-STOP");
    wait_until("the lone node reports stale config", CONVERGE, || async {
        lone.status().await.is_some_and(|s| {
            s["config_stale"] == true && s["config_age_ms"].as_u64().is_some_and(|a| a >= 3000)
        })
    })
    .await;
    assert_eq!(lone.proxy_status("/old").await, Some(200));
    nodes[0].signal("-CONT");
    nodes[1].signal("-CONT");
    wait_until("fresh again", CONVERGE, || async {
        lone.status()
            .await
            .is_some_and(|s| s["config_stale"] == false)
    })
    .await;
    Ok(())
}

/// The largest `purged_to=N` in `log`.
fn purged_to(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("purged_to="))
        })
        .filter_map(|w| {
            w.trim_start_matches("Some(")
                .trim_end_matches(')')
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

// Snapshots are built when a node needs one (the snapshot point is only
// made durable on schedule): a node that joins once the leader purged the
// log's start catches up from the leader's current state, documents,
// revision and rollback history alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_the_log_was_purged_catches_up_from_a_snapshot() -> anyhow::Result<()>
{
    let root = tempfile::tempdir()?;
    let every = ["--raft-snapshot-every", "10"];
    let nodes = cluster_with_args(weir_bin(), root.path(), &every, &[]).await?;
    let leader = leader_index(&nodes).await;
    for i in 0..40 {
        let (s, b) = nodes[leader]
            .put(
                &format!("/v1/consumers/c{i}"),
                json!({"labels": {"n": i.to_string()}}),
            )
            .await?;
        assert_eq!(s, 200, "{b}");
    }
    let deadline = std::time::Instant::now() + CONVERGE;
    while purged_to(&nodes[leader].log()) < 20 {
        let log = nodes[leader].log();
        let snaps: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("raft snapshot"))
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never purged its log's start: {snaps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut args = vec!["--join", nodes[leader].admin.as_str()];
    args.extend(every);
    let late = Node::start(weir_bin(), &root.path().join("late"), &args).await?;
    let want = nodes[leader]
        .status()
        .await
        .map(|s| s["config"]["revision"].clone())
        .context("leader status")?;
    wait_until("the new node caught up", CONVERGE, || async {
        late.status()
            .await
            .is_some_and(|s| s["config"]["revision"] == want)
    })
    .await;
    for i in [0, 17, 39] {
        let (s, v) = late.get(&format!("/v1/consumers/c{i}")).await?;
        assert_eq!(s, 200, "c{i}: {v}");
        assert_eq!(v["value"]["labels"]["n"], i.to_string(), "{v}");
    }
    // It could only have come from a snapshot, which carried the history.
    assert!(
        late.log().contains("raft snapshot up to log index"),
        "{}",
        late.log()
    );
    let (s, h) = late.get("/v1/revisions").await?;
    assert_eq!(s, 200, "{h}");
    let (s, hl) = nodes[leader].get("/v1/revisions").await?;
    assert_eq!(s, 200, "{hl}");
    assert_eq!(h, hl, "the same history on both");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_write_changes_nothing() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    assert_eq!(
        node.put("/v1/upstreams/u", upstream_doc(&up.target()))
            .await?
            .0,
        200
    );
    let (_, before) = node.get("/v1/revisions").await?;

    let client = http_client();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "put",
            "/v1/routes/r",
            r#"{"paths": ["/a"], "upstream": "u", "bogus": 1}"#.into(),
            400,
            "/bogus",
        ),
        (
            "put",
            "/v1/routes/r",
            r#"{"paths": ["/a"], "upstream": "nope"}"#.into(),
            400,
            "/upstream",
        ),
        (
            "put",
            "/v1/routes/r",
            r#"{"paths": [7], "upstream": "u"}"#.into(),
            400,
            "/paths/0",
        ),
        (
            "put",
            "/v1/routes/r",
            r#"{"id": "other", "paths": ["/a"], "upstream": "u"}"#.into(),
            400,
            "/id",
        ),
        ("put", "/v1/routes/r", "{not json".into(), 400, ""),
        (
            "put",
            "/v1/upstreams/u",
            r#"{"targets": []}"#.into(),
            400,
            "/targets",
        ),
        ("put", "/v1/nonsense/x", "{}".into(), 404, ""),
        (
            "post",
            "/v1/upstreams",
            r#"{"id": "u", "targets": [{"addr": "127.0.0.1:1"}]}"#.into(),
            409,
            "",
        ),
    ];
    for (method, path, body, want, pointer) in cases {
        let rb = match method {
            "put" => client.put(node.url(path)),
            _ => client.post(node.url(path)),
        };
        let r = rb.body(body.clone()).send().await?;
        assert_eq!(r.status().as_u16(), want, "{method} {path} {body}");
        let v: Value = r.json().await?;
        if want == 400 {
            let problems = v["error"]["problems"].as_array().context("problems")?;
            assert!(
                problems.iter().any(|p| p["pointer"]
                    .as_str()
                    .is_some_and(|x| x.starts_with(pointer))),
                "{path} {body}: {v}"
            );
        }
    }
    // A stale If-Match is refused too.
    let r = client
        .put(node.url("/v1/upstreams/u"))
        .header("if-match", "\"99\"")
        .json(&upstream_doc("127.0.0.1:2"))
        .send()
        .await?;
    assert_eq!(r.status(), 409);
    // Deleting an upstream a route uses is refused.
    assert_eq!(
        node.put("/v1/routes/r", json!({"paths": ["/a"], "upstream": "u"}))
            .await?
            .0,
        200
    );
    let r = client.delete(node.url("/v1/upstreams/u")).send().await?;
    assert_eq!(r.status(), 400);
    let (_, after) = node.get("/v1/revisions").await?;
    assert_eq!(
        after["items"].as_array().map(Vec::len),
        before["items"].as_array().map(|v| v.len() + 1),
        "only the good route write added a revision"
    );
    assert_eq!(node.get("/v1/upstreams/u").await?.1["revision"], 1);
    Ok(())
}

fn cli(admin: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(weir_bin())
        .args(args)
        .args(["--admin", admin])
        .env_remove("WEIR_ADMIN_KEY")
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_one_change_and_idempotent() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    let file = root.path().join("weir.yaml");
    std::fs::write(
        &file,
        format!(
            "upstreams:\n  - id: u\n    targets:\n      - addr: \"{}\"\nroutes:\n  - id: a\n    paths: [\"/a\"]\n    upstream: u\n  - id: b\n    paths: [\"/b\"]\n    upstream: u\n",
            up.target()
        ),
    )?;
    let f = file.to_string_lossy().to_string();
    let (ok, out) = cli(&node.admin, &["apply", "-f", &f, "--dry-run"])?;
    assert!(ok, "{out}");
    assert!(
        out.contains("+ create routes/a") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(node.get("/v1/revisions").await?.1["revision"], 0);

    let (ok, out) = cli(&node.admin, &["apply", "-f", &f])?;
    assert!(ok, "{out}");
    assert!(out.contains("applied 3 change(s) as revision 1"), "{out}");
    let (ok, out) = cli(&node.admin, &["apply", "-f", &f])?;
    assert!(ok, "{out}");
    assert!(out.contains("no changes"), "{out}");
    wait_until("served", CONVERGE, || async {
        node.proxy_status("/b").await == Some(200)
    })
    .await;

    // Removing a route from the file deletes it, in one revision.
    let text = std::fs::read_to_string(&file)?;
    let cut = text.find("  - id: b").context("route b")?;
    std::fs::write(&file, &text[..cut])?;
    let (ok, out) = cli(&node.admin, &["apply", "-f", &f])?;
    assert!(ok && out.contains("- delete routes/b"), "{out}");
    assert_eq!(node.get("/v1/revisions").await?.1["revision"], 2);

    let (ok, out) = cli(&node.admin, &["get", "routes", "-o", "json"])?;
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{out}");
    let (ok, out) = cli(&node.admin, &["rollback", "1"])?;
    assert!(ok, "{out}");
    assert!(node.get("/v1/routes/b").await?.0 == 200);
    let (ok, out) = cli(&node.admin, &["revisions"])?;
    // A header and three revisions: apply, delete, rollback.
    assert!(ok && out.lines().count() == 4, "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_gate_the_api() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    // Beyond loopback without a key: refused.
    let out = Command::new(weir_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(root.path().join("refused"))
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an admin key"));

    let node = Node::start(
        weir_bin(),
        &root.path().join("n"),
        &[
            "--admin-key",
            "ops:admin:aaaaaaaaaaaaaaaaaaaa",
            "--admin-key",
            "dash:viewer:vvvvvvvvvvvvvvvvvvvv",
        ],
    )
    .await?;
    let c = http_client();
    assert_eq!(c.get(node.url("/v1/health")).send().await?.status(), 200);
    assert_eq!(c.get(node.url("/v1/routes")).send().await?.status(), 401);
    let body = json!({"targets": [{"addr": "127.0.0.1:1"}]});
    let r = c
        .put(node.url("/v1/upstreams/u"))
        .bearer_auth("vvvvvvvvvvvvvvvvvvvv")
        .json(&body)
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    let r = c
        .put(node.url("/v1/upstreams/u"))
        .bearer_auth("aaaaaaaaaaaaaaaaaaaa")
        .json(&body)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = c
        .get(node.url("/v1/upstreams/u"))
        .bearer_auth("vvvvvvvvvvvvvvvvvvvv")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = c
        .get(node.url("/v1/revisions"))
        .bearer_auth("vvvvvvvvvvvvvvvvvvvv")
        .send()
        .await?;
    let v: Value = r.json().await?;
    assert_eq!(v["items"][0]["author"], "ops");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_covers_every_route() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    let (s, doc) = node.get("/v1/openapi.json").await?;
    assert_eq!(s, 200);
    // It is a well-formed OpenAPI 3 document.
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone())?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    // Every path+method in the document is served (not the router's
    // fallback), and every route the API serves is in the document.
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("item")?.keys() {
            let concrete = path.replace("{id}", "x").replace("{revision}", "0");
            let req = http_client().request(method.to_uppercase().parse()?, node.url(&concrete));
            let r = req.send().await?;
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_ne!(
                v["error"]["message"], "no such admin endpoint",
                "{method} {path}"
            );
            seen += 1;
        }
    }
    let kinds = [
        "routes",
        "services",
        "upstreams",
        "consumers",
        "credentials",
        "subscriptions",
        "plugins",
    ];
    let mut expected = vec![
        ("get", "/v1/health".to_string()),
        ("get", "/v1/ready".into()),
        ("get", "/v1/status".into()),
        ("get", "/metrics".into()),
        ("get", "/v1/cluster/members".into()),
        ("get", "/v1/cluster/mesh".into()),
        ("get", "/v1/cluster/health".into()),
        ("get", "/v1/openapi.json".into()),
        ("get", "/v1/config".into()),
        ("post", "/v1/apply".into()),
        ("get", "/v1/revisions".into()),
        ("post", "/v1/rollback/{revision}".into()),
        ("get", "/v1/cache".into()),
        ("post", "/v1/cache/purge".into()),
        ("post", "/v1/subscriptions/{id}/approve".into()),
        ("post", "/v1/subscriptions/{id}/reject".into()),
        ("post", "/v1/subscriptions/{id}/revoke".into()),
    ];
    for k in kinds {
        expected.push(("get", format!("/v1/{k}")));
        expected.push(("post", format!("/v1/{k}")));
        for m in ["get", "put", "delete"] {
            expected.push((m, format!("/v1/{k}/{{id}}")));
        }
    }
    for (m, p) in &expected {
        assert!(
            doc["paths"][p][m].is_object(),
            "{m} {p} missing from the document"
        );
    }
    assert_eq!(
        seen,
        expected.len(),
        "the document has routes the test does not know"
    );
    assert_eq!(
        parsed.paths.paths.len(),
        doc["paths"].as_object().map_or(0, |p| p.len())
    );
    Ok(())
}
