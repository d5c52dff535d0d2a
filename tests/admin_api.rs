//! The admin API beyond plain CRUD, with real `weir` processes: the
//! subscription workflow (request, approve, reject, revoke) and its effect
//! on the data path, consumers and credentials as typed documents, the
//! typed OpenAPI document, and `weir apply` of thousands of routes.
//!
//! The launcher is `weir_testsupport::raftnode`.

mod common;

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use weir_testsupport::raftnode::Node;
use weir_testsupport::{Upstream, http_client, wait_until};

use common::{sha_hex, weir_bin};

const CONVERGE: Duration = Duration::from_secs(30);

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

/// A JSON Schema validator for `#/components/schemas/{name}` of `doc`.
fn schema_for(doc: &Value, name: &str) -> anyhow::Result<jsonschema::Validator> {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::draft202012::new(&schema).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_schemas_are_typed_and_match_stored_documents() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    let (s, doc) = node.get("/v1/openapi.json").await?;
    assert_eq!(s, 200);
    let _: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone())?;

    // Every component is a valid JSON Schema (2020-12, the dialect of
    // OpenAPI 3.1) and every reference resolves.
    let components = doc["components"]["schemas"]
        .as_object()
        .context("components")?;
    for (name, schema) in components {
        jsonschema::draft202012::meta::validate(schema)
            .map_err(|e| anyhow::anyhow!("schema {name}: {e}"))?;
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .with_context(|| format!("{r} is not a component reference"))?;
        assert!(components.contains_key(name), "{r} does not resolve");
    }

    // Each kind's body and answers are typed, not free-form objects.
    let kinds = [
        ("routes", "RouteConfig"),
        ("services", "ServiceConfig"),
        ("upstreams", "UpstreamConfig"),
        ("consumers", "ConsumerDoc"),
        ("credentials", "CredentialDoc"),
        ("subscriptions", "SubscriptionDoc"),
        ("plugins", "GlobalPluginDoc"),
    ];
    for (kind, name) in kinds {
        let want = format!("#/components/schemas/{name}");
        let put = &doc["paths"][format!("/v1/{kind}/{{id}}")]["put"];
        assert_eq!(
            put["requestBody"]["content"]["application/json"]["schema"]["$ref"], want,
            "{kind}"
        );
        let get = &doc["paths"][format!("/v1/{kind}/{{id}}")]["get"];
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{name}Document"),
            "{kind}"
        );
        let props = components[name]["properties"]
            .as_object()
            .with_context(|| format!("{name} has no properties"))?;
        assert!(props.contains_key("id"), "{name}");
        assert_eq!(
            components[name]["additionalProperties"],
            json!(false),
            "{name} must refuse unknown fields as the API does"
        );
    }

    // Real documents of every kind, as the API stores and returns them,
    // validate against their schemas; a document the API refuses does not.
    let writes = [
        (
            "upstreams",
            "u",
            json!({"targets": [{"addr": "127.0.0.1:1", "weight": 2, "region": "eu"}],
                   "balancer": {"kind": "consistent_hash", "hash_on": {"source": "header", "name": "x-user"}},
                   "health_check": {"type": "http", "path": "/health"},
                   "timeouts": {"connect": "250ms"}}),
        ),
        (
            "upstreams",
            "u2",
            json!({"targets": [{"addr": "127.0.0.1:2"}],
                   "balancer": {"kind": "peak_ewma", "decay": "5s"},
                   "sticky": {"ttl": "1h"}}),
        ),
        (
            "services",
            "svc",
            json!({"upstream": "u", "host_header": {"rewrite": "api.internal"},
                   "plugins": {"key-auth": {}},
                   "lifecycle": {"status": "deprecated", "deprecated_at": "2026-01-01T00:00:00Z"}}),
        ),
        (
            "routes",
            "r",
            json!({"paths": ["/a/*"], "methods": ["GET"], "hosts": ["example.com"],
                   "headers": [{"name": "x-canary", "exact": "on"}],
                   "query": [{"name": "debug", "present": false}],
                   "version": {"value": "v2", "from": "header"},
                   "service": "svc", "host_header": "target", "require_subscription": true}),
        ),
        (
            "consumers",
            "alice",
            json!({"groups": ["g"], "labels": {"team": "a"}}),
        ),
        (
            "credentials",
            "alice-key",
            json!({"consumer": "alice", "key-auth": {"key_sha256": sha_hex("k")}}),
        ),
        (
            "subscriptions",
            "s",
            json!({"consumer": "alice", "service": "svc", "state": "approved"}),
        ),
        (
            "plugins",
            "cors",
            json!({"config": {"allow_origins": ["https://example.com"]}}),
        ),
    ];
    for (kind, id, body) in &writes {
        let (s, b) = node.put(&format!("/v1/{kind}/{id}"), body.clone()).await?;
        assert_eq!(s, 200, "{kind}/{id}: {b}");
    }
    for (kind, name) in kinds {
        let value_schema = schema_for(&doc, name)?;
        let doc_schema = schema_for(&doc, &format!("{name}Document"))?;
        let list_schema = schema_for(&doc, &format!("{name}List"))?;
        let (s, list) = node.get(&format!("/v1/{kind}")).await?;
        assert_eq!(s, 200);
        assert_eq!(errors(&list_schema, &list), Vec::<String>::new(), "{list}");
        let items = list["items"].as_array().context("items")?;
        assert!(!items.is_empty(), "no {kind} stored");
        for item in items {
            let id = item["id"].as_str().context("id")?;
            let (_, one) = node.get(&format!("/v1/{kind}/{id}")).await?;
            assert_eq!(errors(&doc_schema, &one), Vec::<String>::new(), "{one}");
            assert_eq!(
                errors(&value_schema, &one["value"]),
                Vec::<String>::new(),
                "{kind}/{id}"
            );
            // An unknown field is refused by the API and by the schema.
            let mut bad = one["value"].clone();
            bad["bogus"] = json!(1);
            assert!(
                !value_schema.is_valid(&bad),
                "{kind}: schema accepts `bogus`"
            );
            let (s, _) = node.put(&format!("/v1/{kind}/{id}"), bad).await?;
            assert_eq!(s, 400, "{kind}: API accepts `bogus`");
        }
    }
    // A value of the wrong type is refused by both as well.
    let route_schema = schema_for(&doc, "RouteConfig")?;
    let bad = json!({"id": "r", "paths": [7], "upstream": "u"});
    assert!(!route_schema.is_valid(&bad));
    assert_eq!(node.put("/v1/routes/r", bad).await?.0, 400);
    let bad = json!({"id": "r", "paths": ["/"], "upstream": "u", "host_header": "sideways"});
    assert!(!route_schema.is_valid(&bad));
    assert_eq!(node.put("/v1/routes/r", bad).await?.0, 400);
    Ok(())
}

/// `weir apply -f FILE` against `admin`: success and output.
fn apply_file(admin: &str, file: &std::path::Path) -> anyhow::Result<(bool, String)> {
    let out = std::process::Command::new(weir_bin())
        .args(["apply", "-f"])
        .arg(file)
        .args(["--admin", admin])
        .env_remove("WEIR_ADMIN_KEY")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_thousands_of_routes_serves_them_all_and_is_idempotent() -> anyhow::Result<()> {
    const N: usize = 3000;
    let root = tempfile::tempdir()?;
    let up = Upstream::start("a").await;
    let node = Node::start(weir_bin(), &root.path().join("n"), &[]).await?;
    let mut yaml = format!(
        "upstreams:\n  - id: u\n    targets:\n      - addr: \"{}\"\nroutes:\n",
        up.target()
    );
    for i in 0..N {
        yaml.push_str(&format!(
            "  - id: r{i}\n    paths: [\"/r/{i}\"]\n    upstream: u\n"
        ));
    }
    let file = root.path().join("big.yaml");
    std::fs::write(&file, yaml)?;
    let (ok, out) = apply_file(&node.admin, &file)?;
    assert!(ok, "{}", &out[out.len().saturating_sub(2000)..]);
    assert!(
        out.contains(&format!("applied {} change(s) as revision 1", N + 1)),
        "{}",
        &out[out.len().saturating_sub(2000)..]
    );
    // Every route is served (the last one first: the snapshot is built
    // in one piece, then each path in turn).
    wait_until(
        "the last route is served",
        Duration::from_secs(120),
        || async { node.proxy_status(&format!("/r/{}", N - 1)).await == Some(200) },
    )
    .await;
    let client = http_client();
    for i in 0..N {
        let r = client
            .get(format!("http://{}/r/{i}", node.proxy))
            .send()
            .await?;
        assert_eq!(r.status(), 200, "/r/{i}");
    }
    assert_eq!(node.proxy_status(&format!("/r/{N}")).await, Some(404));
    // The second run has nothing to do and writes no revision.
    let (ok, out) = apply_file(&node.admin, &file)?;
    assert!(ok && out.contains("no changes (revision 1)"), "{out}");
    let (_, st) = node.get("/v1/revisions").await?;
    assert_eq!(st["revision"], 1);
    let (_, status) = node.get("/v1/status").await?;
    assert_eq!(status["config"]["routes"], N, "{status}");
    Ok(())
}
