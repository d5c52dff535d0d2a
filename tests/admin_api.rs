//! The admin API beyond plain CRUD, with real `weir` processes: the
//! subscription workflow (request, approve, reject, revoke) and its effect
//! on the data path, consumers and credentials as typed documents.
//!
//! The launcher is `weir_testsupport::raftnode`.

mod common;

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use sha2::Digest;
use weir_testsupport::raftnode::Node;
use weir_testsupport::{Upstream, http_client, wait_until};

use common::weir_bin;

const CONVERGE: Duration = Duration::from_secs(30);

fn sha_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn post(node: &Node, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let r = http_client()
        .post(node.url(path))
        .timeout(Duration::from_secs(20))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// `GET /orders` on the proxy with `key`: status and error code.
async fn call(node: &Node, key: &str) -> Option<(u16, String)> {
    let r = http_client()
        .get(format!("http://{}/orders", node.proxy))
        .header("apikey", key)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    Some((status, code))
}

fn pointers(v: &Value) -> Vec<(String, String, String)> {
    v["error"]["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["kind"].as_str().unwrap_or("").to_string(),
                        p["id"].as_str().unwrap_or("").to_string(),
                        p["pointer"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_workflow_gates_the_data_path() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    let key = "alice-secret-key-0001";

    // An API that needs a subscription, a consumer and its credential.
    assert_eq!(
        node.put(
            "/v1/upstreams/u",
            json!({"targets": [{"addr": up.target()}]})
        )
        .await?
        .0,
        200
    );
    let (s, b) = node
        .put(
            "/v1/routes/orders",
            json!({"paths": ["/orders"], "upstream": "u",
                   "require_subscription": true, "plugins": {"key-auth": {}}}),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    let (s, b) = post(
        &node,
        "/v1/consumers",
        json!({"id": "alice", "groups": ["g"]}),
    )
    .await?;
    assert_eq!(s, 201, "{b}");
    // A credential for a consumer that does not exist is refused where it
    // points; a credential with two methods too.
    let (s, b) = post(
        &node,
        "/v1/credentials",
        json!({"id": "k0", "consumer": "nobody", "key-auth": {"key_sha256": sha_hex(key)}}),
    )
    .await?;
    assert_eq!(s, 400, "{b}");
    assert!(
        pointers(&b).contains(&("credentials".into(), "k0".into(), "/consumer".into())),
        "{b}"
    );
    let (s, b) = post(
        &node,
        "/v1/credentials",
        json!({"id": "k1", "consumer": "alice", "key-auth": {"key_sha256": sha_hex(key)},
               "jwt-auth": {"subject": "alice"}}),
    )
    .await?;
    assert_eq!(s, 400, "{b}");
    let (s, b) = post(
        &node,
        "/v1/credentials",
        json!({"id": "k1", "consumer": "alice", "key-auth": {"key_sha256": "abc"}}),
    )
    .await?;
    assert_eq!(s, 400, "a malformed hash is that credential's problem: {b}");
    assert!(
        pointers(&b)
            .iter()
            .any(|(k, id, p)| k == "credentials" && id == "k1" && p.starts_with("/key-auth")),
        "{b}"
    );
    let (s, b) = post(
        &node,
        "/v1/credentials",
        json!({"id": "k1", "consumer": "alice", "key-auth": {"key_sha256": sha_hex(key)}}),
    )
    .await?;
    assert_eq!(s, 201, "{b}");

    // Known consumer, no subscription: 403.
    wait_until("alice is known but not subscribed", CONVERGE, || async {
        call(&node, key).await == Some((403, "subscription_required".into()))
    })
    .await;
    assert_eq!(call(&node, "wrong-key").await.map(|c| c.0), Some(401));

    // The request step: a new subscription starts as `requested`.
    let (s, b) = post(
        &node,
        "/v1/subscriptions",
        json!({"id": "s1", "consumer": "alice", "route": "orders", "state": "approved"}),
    )
    .await?;
    assert_eq!(s, 400, "a request cannot approve itself: {b}");
    assert_eq!(pointers(&b)[0].2, "/state", "{b}");
    let (s, b) = post(
        &node,
        "/v1/subscriptions",
        json!({"id": "s0", "consumer": "nobody", "route": "orders"}),
    )
    .await?;
    assert_eq!(s, 400, "{b}");
    assert!(
        pointers(&b).contains(&("subscriptions".into(), "s0".into(), "/consumer".into())),
        "{b}"
    );
    let (s, b) = post(
        &node,
        "/v1/subscriptions",
        json!({"id": "s1", "consumer": "alice", "route": "orders"}),
    )
    .await?;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["document"]["value"]["state"], "requested", "{b}");

    // Illegal transitions name the reason and change nothing.
    let (_, before) = node.get("/v1/revisions").await?;
    let (s, b) = post(&node, "/v1/subscriptions/s1/revoke", json!({})).await?;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["code"], "illegal_transition", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`requested`") && m.contains("revoke")),
        "{b}"
    );
    let (s, _) = post(&node, "/v1/subscriptions/nope/approve", json!({})).await?;
    assert_eq!(s, 404);
    assert_eq!(
        node.get("/v1/revisions").await?.1["revision"],
        before["revision"]
    );
    assert_eq!(call(&node, key).await.map(|c| c.0), Some(403));

    // Approve: the consumer gets through.
    let (s, b) = post(&node, "/v1/subscriptions/s1/approve", json!({})).await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["outcome"], "applied", "{b}");
    assert_eq!(b["document"]["value"]["state"], "approved", "{b}");
    wait_until("approved: alice is served", CONVERGE, || async {
        call(&node, key).await.map(|c| c.0) == Some(200)
    })
    .await;
    // Asking again is harmless; rejecting an approved one is not a thing.
    let (s, b) = post(&node, "/v1/subscriptions/s1/approve", json!({})).await?;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("unchanged")), "{b}");
    let (s, b) = post(&node, "/v1/subscriptions/s1/reject", json!({})).await?;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["code"], "illegal_transition", "{b}");

    // A second live subscription to the same route is refused.
    let (s, b) = post(
        &node,
        "/v1/subscriptions",
        json!({"id": "s2", "consumer": "alice", "route": "orders"}),
    )
    .await?;
    assert_eq!(s, 400, "{b}");

    // Revoke: 403 again.
    let (s, b) = post(&node, "/v1/subscriptions/s1/revoke", json!({})).await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["document"]["value"]["state"], "revoked", "{b}");
    wait_until("revoked: alice is refused", CONVERGE, || async {
        call(&node, key).await == Some((403, "subscription_required".into()))
    })
    .await;

    // The revoked one is history: alice may ask again, and a rejected
    // request admits nobody.
    let (s, b) = post(
        &node,
        "/v1/subscriptions",
        json!({"id": "s2", "consumer": "alice", "route": "orders"}),
    )
    .await?;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(&node, "/v1/subscriptions/s2/reject", json!({})).await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["document"]["value"]["state"], "rejected", "{b}");
    let (s, _) = post(&node, "/v1/subscriptions/s2/approve", json!({})).await?;
    assert_eq!(s, 409);
    assert_eq!(
        call(&node, key).await,
        Some((403, "subscription_required".into()))
    );

    // The history says who decided what.
    let (_, h) = node.get("/v1/revisions?limit=1000").await?;
    let messages: Vec<&str> = h["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    for m in [
        "approve subscriptions/s1",
        "revoke subscriptions/s1",
        "reject subscriptions/s2",
    ] {
        assert!(messages.contains(&m), "{m} missing from {messages:?}");
    }
    // Deleting a consumer that subscriptions and credentials name is
    // refused.
    let r = http_client()
        .delete(node.url("/v1/consumers/alice"))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    Ok(())
}
