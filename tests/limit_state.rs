//! Limit state across config changes, with real `weir` processes: a
//! client at its limit stays limited when the config file is rewritten
//! with an unrelated route, and on every node of a three-node Raft
//! cluster when an unrelated route is written through the admin API; a
//! limit whose own config changed starts with a whole quota (ADR 0030).

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use weir_testsupport::raftnode::{Node, cluster};
use weir_testsupport::{Gateway, Upstream, http_client, wait_until};

use common::{gateway, weir_bin};

const RELOAD: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(30);

/// One upstream `u`, a limited route `/limited` (2 per hour, one counter
/// for the route), a global `limit-req` that admits everything, and the
/// `extra` routes.
fn file_config(target: &str, count: u64, extra: &str) -> String {
    Gateway::config(&format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]
plugins:
  limit-req: {{rate: 1000, burst: 1000, key: [route]}}
routes:
  - id: limited
    paths: [/limited]
    upstream: u
    plugins:
      limit-count: {{count: {count}, time_window: 1h, key: [route]}}
{extra}"
    ))
}

fn extra_route(id: &str) -> String {
    format!("  - id: {id}\n    paths: [/{id}]\n    upstream: u\n")
}

async fn status(url: String) -> u16 {
    http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_file_reload_keeps_a_route_at_its_limit() {
    let up = Upstream::start("a").await;
    let gw = gateway(&file_config(&up.target(), 2, "")).await;
    for _ in 0..2 {
        assert_eq!(status(gw.url("/limited")).await, 200);
    }
    assert_eq!(status(gw.url("/limited")).await, 429);

    // An unrelated route is added; the reload is live once it answers.
    gw.rewrite_config(&file_config(&up.target(), 2, &extra_route("other")))
        .unwrap();
    wait_until("the new route answers", RELOAD, || async {
        status(gw.url("/other")).await == 200
    })
    .await;
    assert_eq!(
        status(gw.url("/limited")).await,
        429,
        "the quota survived the reload"
    );
    assert_eq!(up.hits_for("/limited"), 2);

    // The limit's own config changes: a new limit, a whole quota.
    gw.rewrite_config(&file_config(
        &up.target(),
        3,
        &(extra_route("other") + &extra_route("third")),
    ))
    .unwrap();
    wait_until("the changed config is live", RELOAD, || async {
        status(gw.url("/third")).await == 200
    })
    .await;
    for _ in 0..3 {
        assert_eq!(status(gw.url("/limited")).await, 200);
    }
    assert_eq!(status(gw.url("/limited")).await, 429);
}

fn limited_route(count: u64) -> Value {
    json!({
        "paths": ["/limited"],
        "upstream": "u",
        "plugins": {"limit-count": {"count": count, "time_window": "1h", "key": ["route"]}},
    })
}

async fn put_applied(node: &Node, path: &str, doc: Value) {
    let (s, body) = node
        .put(&format!("{path}?wait=applied"), doc)
        .await
        .unwrap();
    assert_eq!(s, 200, "{path}: {body}");
    assert_eq!(body["applied"]["everywhere"], true, "{path}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_write_keeps_a_route_at_its_limit_on_every_node() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let nodes = cluster(weir_bin(), root.path()).await?;
    let writer = &nodes[1];
    put_applied(
        writer,
        "/v1/upstreams/u",
        json!({"targets": [{"addr": up.target()}]}),
    )
    .await;
    put_applied(writer, "/v1/routes/limited", limited_route(2)).await;

    // Limits count per node: exhaust the route on each one.
    for n in &nodes {
        wait_until("the route is at its limit", CONVERGE, || async {
            n.proxy_status("/limited").await == Some(429)
        })
        .await;
    }
    assert_eq!(up.hits_for("/limited"), 6, "two per node");

    put_applied(
        writer,
        "/v1/routes/other",
        json!({"paths": ["/other"], "upstream": "u"}),
    )
    .await;
    for n in &nodes {
        wait_until("the new route answers", CONVERGE, || async {
            n.proxy_status("/other").await == Some(200)
        })
        .await;
        assert_eq!(
            n.proxy_status("/limited").await,
            Some(429),
            "the quota survived the write on {}",
            n.proxy
        );
    }
    assert_eq!(up.hits_for("/limited"), 6);

    // Changing the limit itself starts it fresh on every node.
    put_applied(writer, "/v1/routes/limited", limited_route(3)).await;
    for n in &nodes {
        wait_until("the changed limit admits again", CONVERGE, || async {
            n.proxy_status("/limited").await == Some(200)
        })
        .await;
    }
    Ok(())
}
