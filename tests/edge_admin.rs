//! The hardened admin API and bounded config input (issue 16, findings 3,
//! 5 and 10), with real `weir` processes and raw HTTP over sockets:
//! cross-origin and foreign-host writes are refused and write nothing,
//! every error is JSON, YAML alias bombs and deep nesting are refused
//! fast through a file and through the API, values that can never work
//! are refused with their field named, and `weir validate` reports every
//! unknown field.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_testsupport::raftnode::Node;
use weir_testsupport::{RawHttp, RawResponse};

use common::weir_bin;

/// One raw request to the node's admin listener.
async fn raw(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let addr: SocketAddr = node.admin.parse().expect("admin address");
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {}\r\n", node.admin));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    RawHttp::exchange(addr, bytes).await.expect("an answer")
}

/// The JSON error of `r`, checked to be one: status and `error.code`.
fn error_of(r: &RawResponse) -> Value {
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "status {} with content-type {:?}: {}",
        r.status,
        r.header("content-type"),
        r.text()
    );
    let v = r
        .json()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()));
    assert_eq!(v["error"]["status"], r.status, "{v}");
    v["error"].clone()
}

fn route(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "paths": ["/x"], "upstream": "u"})).unwrap()
}

async fn node_with_upstream(dir: &std::path::Path) -> Node {
    let node = Node::start(weir_bin(), dir, &[])
        .await
        .expect("weir starts");
    let (s, v) = node
        .put(
            "/v1/upstreams/u",
            json!({"targets": [{"addr": "127.0.0.1:9"}]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_and_foreign_host_writes_are_refused_and_write_nothing() {
    let root = tempfile::tempdir().unwrap();
    let node = node_with_upstream(&root.path().join("n")).await;
    let own = format!("http://{}", node.admin);

    // The browser attack: a cross-origin text/plain POST (no preflight).
    for path in ["/v1/routes", "/v1/apply"] {
        let body = if path == "/v1/apply" {
            serde_json::to_vec(&json!({"documents": {"routes": [{"id": "evil", "paths": ["/x"], "upstream": "u"}]}})).unwrap()
        } else {
            route("evil")
        };
        let r = raw(
            &node,
            "POST",
            path,
            &[
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
            ],
            &body,
        )
        .await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(error_of(&r)["code"], "forbidden_origin");
        // Same origin, but a type a form can send: refused too.
        let r = raw(
            &node,
            "POST",
            path,
            &[("Content-Type", "text/plain")],
            &body,
        )
        .await;
        assert_eq!(r.status, 415, "{path}: {}", r.text());
        assert_eq!(error_of(&r)["code"], "unsupported_media_type");
        // A DNS-rebinding page: its own name in Host and Origin.
        let rebound = format!("evil.example:{}", node.admin.rsplit(':').next().unwrap());
        let origin = format!("http://{rebound}");
        let r = raw(
            &node,
            "POST",
            path,
            &[
                ("Host", &rebound),
                ("Origin", &origin),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(error_of(&r)["code"], "forbidden_host");
        // Fetch metadata says cross-site.
        let r = raw(
            &node,
            "POST",
            path,
            &[
                ("Sec-Fetch-Site", "cross-site"),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    // A foreign Host on a read is refused as well (rebinding reads config).
    let r = raw(&node, "GET", "/v1/config", &[("Host", "evil.example")], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(error_of(&r)["code"], "forbidden_host");
    // Nothing was written.
    let (s, _) = node.get("/v1/routes/evil").await.unwrap();
    assert_eq!(s, 404);

    // Same-origin JSON writes work, by address and by `localhost`.
    let r = raw(
        &node,
        "POST",
        "/v1/routes",
        &[("Origin", &own), ("Content-Type", "application/json")],
        &route("ok"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let port = node.admin.rsplit(':').next().unwrap();
    let local = format!("localhost:{port}");
    let r = raw(
        &node,
        "PUT",
        "/v1/routes/ok2",
        &[
            ("Host", &local),
            ("Origin", &format!("http://{local}")),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        &route("ok2"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A delete has no body and needs no type.
    let r = raw(&node, "DELETE", "/v1/routes/ok2", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Health is open to any name (probes).
    let r = raw(
        &node,
        "GET",
        "/v1/health",
        &[("Host", "weir-0.weir.svc")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_apply_and_yaml_apply_bodies_still_work_and_configured_names_are_taken() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("settings.yaml");
    std::fs::write(&cfg, "settings:\n  admin_hosts: [admin.example.test]\n").unwrap();
    let node = Node::start(
        weir_bin(),
        &root.path().join("n"),
        &["--config", cfg.to_str().unwrap()],
    )
    .await
    .expect("weir starts");
    let file = root.path().join("weir.yaml");
    std::fs::write(
        &file,
        "upstreams:\n  - id: u\n    targets: [{addr: \"127.0.0.1:9\"}]\nroutes:\n  - id: r\n    paths: [/r]\n    upstream: u\n",
    )
    .unwrap();
    let out = Command::new(weir_bin())
        .args(["apply", "-f"])
        .arg(&file)
        .args(["--admin", &node.admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, _) = node.get("/v1/routes/r").await.unwrap();
    assert_eq!(s, 200);

    let yaml = b"documents:\n  routes:\n    - {id: y, paths: [/y], upstream: u}\nupsert: true\n";
    let r = raw(
        &node,
        "POST",
        "/v1/apply",
        &[("Content-Type", "application/yaml")],
        yaml,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (s, _) = node.get("/v1/routes/y").await.unwrap();
    assert_eq!(s, 200);

    // A configured name is taken, on any port.
    let r = raw(
        &node,
        "GET",
        "/v1/routes",
        &[("Host", "admin.example.test")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw(
        &node,
        "GET",
        "/v1/routes",
        &[("Host", "other.example.test")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_json_and_name_what_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    let node = node_with_upstream(&root.path().join("n")).await;
    let json_type = [("Content-Type", "application/json")];

    // 413 over the body limit.
    let big = vec![b' '; 3 * 1024 * 1024];
    let r = raw(&node, "POST", "/v1/routes", &json_type, &big).await;
    assert_eq!(r.status, 413);
    let e = error_of(&r);
    assert_eq!(e["code"], "body_too_large");
    assert!(e["message"].as_str().unwrap().contains("2 MiB"), "{e}");

    // Query strings: the parameter is named.
    for path in [
        "/v1/routes?consistent=maybe",
        "/v1/routes/x?consistent=maybe",
        "/v1/config?consistent=maybe",
    ] {
        let r = raw(&node, "GET", path, &[], b"").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let e = error_of(&r);
        assert_eq!(e["code"], "invalid_query", "{path}");
        assert!(
            e["message"].as_str().unwrap().contains("consistent"),
            "{path}: {e}"
        );
    }
    let r = raw(&node, "GET", "/v1/revisions?after=soon", &[], b"").await;
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r)["message"]
            .as_str()
            .unwrap()
            .contains("`after`")
    );
    let r = raw(
        &node,
        "POST",
        "/v1/routes?wait=maybe&wait=no",
        &json_type,
        &route("q"),
    )
    .await;
    assert_eq!(r.status, 400);
    error_of(&r);

    // A method the path does not take.
    let r = raw(&node, "PATCH", "/v1/routes/x", &json_type, b"{}").await;
    assert_eq!(r.status, 405);
    assert_eq!(error_of(&r)["code"], "method_not_allowed");

    // Duplicate keys in a JSON body (YAML refuses them; JSON must too).
    let r = raw(
        &node,
        "PUT",
        "/v1/upstreams/d",
        &json_type,
        br#"{"targets": [{"addr": "127.0.0.1:9"}], "keepalive": {"max_idle": 1, "max_idle": 2}}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = error_of(&r);
    assert_eq!(e["problems"][0]["pointer"], "/keepalive", "{e}");
    assert!(
        e["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("duplicate key `max_idle`"),
        "{e}"
    );
}

/// Values that can never work, each refused through the API with its
/// field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_can_never_work_are_refused_with_the_field_named() {
    let root = tempfile::tempdir().unwrap();
    let node = node_with_upstream(&root.path().join("n")).await;
    let long_path = format!("/{}", "a".repeat(1024 * 1024));
    let cases = [
        (
            "/v1/routes/dots",
            json!({"paths": ["/public/../admin"], "upstream": "u"}),
            "/paths/0",
            "dot segment",
        ),
        (
            "/v1/routes/enc",
            json!({"paths": ["/public/%2E%2e/admin"], "upstream": "u"}),
            "/paths/0",
            "dot segment",
        ),
        (
            "/v1/routes/long",
            json!({"paths": [long_path], "upstream": "u"}),
            "/paths/0",
            "path length",
        ),
        (
            "/v1/upstreams/slow",
            json!({"targets": [{"addr": "127.0.0.1:9"}], "timeouts": {"connect": "99999999999h"}}),
            "/timeouts/connect",
            "longest duration",
        ),
        (
            "/v1/upstreams/day",
            json!({"targets": [{"addr": "127.0.0.1:9"}], "timeouts": {"read": "200days"}}),
            "/timeouts/read",
            "at most 1day",
        ),
        (
            "/v1/upstreams/idle",
            json!({"targets": [{"addr": "127.0.0.1:9"}], "keepalive": {"max_idle": 18446744073709551615u64}}),
            "/keepalive/max_idle",
            "at most",
        ),
    ];
    // This one panicked inside the store's apply and stopped Raft (found
    // by schemathesis): the retry budget's per-second floor.
    let cases = cases.into_iter().chain([(
        "/v1/upstreams/budget",
        json!({"targets": [{"addr": "127.0.0.1:9"}], "retry_budget": {"min_per_sec": 2147483647u32}}),
        "/retry_budget/min_per_sec",
        "at most",
    )]);
    for (path, body, pointer, why) in cases {
        let (s, v) = node.put(path, body).await.unwrap();
        assert_eq!(s, 400, "{path}: {v}");
        let p = &v["error"]["problems"][0];
        assert_eq!(p["pointer"], pointer, "{path}: {v}");
        assert!(p["reason"].as_str().unwrap().contains(why), "{path}: {v}");
    }
    let targets: Vec<Value> = (0..1025)
        .map(|i| json!({"addr": format!("127.0.0.1:{}", 1000 + i)}))
        .collect();
    let (s, v) = node
        .put("/v1/upstreams/many", json!({"targets": targets}))
        .await
        .unwrap();
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("targets per upstream"),
        "{v}"
    );
    let paths: Vec<String> = (0..257).map(|i| format!("/p{i}")).collect();
    let (s, v) = node
        .put("/v1/routes/wide", json!({"paths": paths, "upstream": "u"}))
        .await
        .unwrap();
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("paths per route"),
        "{v}"
    );
    // The node still takes writes.
    let (s, v) = node
        .put(
            "/v1/upstreams/fine",
            json!({"targets": [{"addr": "127.0.0.1:9"}]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    // None of them was stored.
    for id in [
        "routes/dots",
        "routes/long",
        "upstreams/slow",
        "upstreams/idle",
        "upstreams/many",
    ] {
        assert_eq!(node.get(&format!("/v1/{id}")).await.unwrap().0, 404, "{id}");
    }
}

/// A type-correct alias bomb of about 208 KB.
fn alias_bomb() -> String {
    let mut s = String::from("plugins:\n  a0: &a0 [\"/x\"]\n");
    let mut level = 1;
    while s.len() < 208 * 1024 {
        s.push_str(&format!("  a{level}: &a{level} ["));
        for _ in 0..600 {
            s.push_str(&format!("*a{}, ", level - 1));
        }
        s.push_str("]\n");
        level += 1;
    }
    s
}

/// Runs `weir validate` on `yaml` under a 512 MiB address-space cap (the
/// alias bomb took 1.5 GB before it was bounded): exit code, stderr and
/// how long it took.
fn validate(yaml: &str) -> (Option<i32>, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, yaml).unwrap();
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 524288 && exec \"$0\" validate -f \"$1\"")
        .arg(weir_bin())
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_bombs_and_deep_nesting_are_refused_fast_by_file_and_by_api() {
    let bomb = alias_bomb();
    assert!(bomb.len() >= 208 * 1024);
    let flow = format!(
        "plugins:\n  x: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let block = format!("plugins:\n  x:\n{}x\n", "  - ".repeat(100_000));
    for (name, yaml, limit) in [
        ("alias bomb", &bomb, "values after alias expansion"),
        ("flow nesting", &flow, "nesting depth"),
        ("block nesting", &block, "nesting depth"),
    ] {
        let (code, err, took) = validate(yaml);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(limit), "{name}: {err}");
        assert!(took < Duration::from_secs(1), "{name} took {took:?}");
    }

    let root = tempfile::tempdir().unwrap();
    let node = node_with_upstream(&root.path().join("n")).await;
    let apply_bomb = format!(
        "documents: {{}}\nmessage: x\n{}",
        bomb.replace("plugins:", "extra:")
    );
    let t = Instant::now();
    let r = raw(
        &node,
        "POST",
        "/v1/apply",
        &[("Content-Type", "application/yaml")],
        apply_bomb.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = error_of(&r);
    assert!(
        e["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("values after alias expansion"),
        "{e}"
    );
    let deep_json = format!(
        "{{\"documents\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = raw(
        &node,
        "POST",
        "/v1/apply",
        &[("Content-Type", "application/json")],
        deep_json.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    error_of(&r);
    let deep_yaml = format!(
        "documents: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = raw(
        &node,
        "POST",
        "/v1/apply",
        &[("Content-Type", "application/yaml")],
        deep_yaml.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        error_of(&r)["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("nesting depth")
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The node is unharmed and still answers.
    assert_eq!(node.get("/v1/health").await.unwrap().0, 200);
}

#[test]
fn validate_reports_every_unknown_field_and_every_bad_value() {
    let (code, err, _) = validate(
        "settings:\n  listne: 127.0.0.1:1\nupstreams:\n  - id: u\n    targets: [{addr: \"127.0.0.1:9\", wieght: 1}]\nroutes:\n  - id: r\n    paths: [/a]\n    upstream: u\n    pathz: [/b]\n",
    );
    assert_eq!(code, Some(2), "{err}");
    for want in [
        "settings.listne: unknown field `listne`",
        "upstreams[0].targets[0].wieght: unknown field `wieght`",
        "routes[0].pathz: unknown field `pathz`",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    // Each with its line, the later ones too.
    assert!(
        err.contains("c.yaml:10:") && err.contains("c.yaml:5:"),
        "{err}"
    );

    let long = format!("/{}", "a".repeat(9000));
    let (code, err, _) = validate(
        "upstreams:\n  - id: u\n    targets: [{addr: \"127.0.0.1:9\"}]\n    timeouts: {connect: 99999999999h}\n",
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("upstreams[0].timeouts.connect") && err.contains("longest duration"),
        "{err}"
    );
    let (code, err, _) = validate(&format!(
        "upstreams:\n  - id: u\n    targets: [{{addr: \"127.0.0.1:9\"}}]\n    keepalive: {{max_idle: 18446744073709551615}}\nroutes:\n  - id: r\n    paths: [/a/./b, \"{long}\"]\n    upstream: u\n"
    ));
    assert_eq!(code, Some(2));
    for want in [
        "upstreams[0].keepalive.max_idle",
        "routes[0].paths[0]",
        "dot segment",
        "routes[0].paths[1]",
        "path length",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}
