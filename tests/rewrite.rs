//! `proxy-rewrite` through a real gateway: what the upstream receives
//! (path by prefix strip or regex with captures, `Host`, method, headers,
//! query arguments), with the echo upstream reporting it.

mod common;

use common::{gateway, rejected};
use weir_testsupport::{Upstream, http_client};

fn config(target: &str) -> String {
    format!(
        r#"upstreams: [{{id: u, targets: [{{addr: "{target}"}}]}}]
routes:
  - id: strip
    paths: [/api/*]
    upstream: u
    plugins:
      proxy-rewrite: {{strip_prefix: /api}}
  - id: regex
    paths: [/v1/*]
    upstream: u
    plugins:
      proxy-rewrite:
        regex_uri: ['^/v1/(\w+)/(?P<id>\d+)$', '/internal/${{id}}/$1']
        host: backend.internal:8080
        method: POST
        headers:
          remove: [x-secret]
          set: {{x-api-version: '1'}}
          add: {{x-tag: added}}
        query:
          remove: [token]
          set: {{page: '2'}}
          add: {{source: 'weir gw'}}
  - id: both
    paths: [/both/*]
    upstream: u
    plugins:
      proxy-rewrite: {{strip_prefix: /both, regex_uri: ['^/old/(.*)', '/new/$1']}}
  - id: plain
    paths: [/plain]
    upstream: u
"#
    )
}

async fn echo(c: &reqwest::Client, req: reqwest::RequestBuilder) -> serde_json::Value {
    let _ = c;
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_rewrite_changes_what_the_upstream_receives() {
    let up = Upstream::start("a").await;
    let gw = gateway(&config(&up.target())).await;
    let c = http_client();

    let b = echo(&c, c.get(gw.url("/api/users/7?x=1"))).await;
    assert_eq!(b["path"], "/users/7");
    assert_eq!(b["query"], "x=1");
    let b = echo(&c, c.get(gw.url("/api"))).await;
    assert_eq!(b["path"], "/");

    let b = echo(
        &c,
        c.get(gw.url("/v1/users/42?token=s3&page=1&q=a%20b"))
            .header("x-secret", "s")
            .header("x-tag", "client"),
    )
    .await;
    assert_eq!(b["path"], "/internal/42/users");
    assert_eq!(b["query"], "q=a%20b&page=2&source=weir+gw");
    assert_eq!(b["method"], "POST");
    assert_eq!(b["headers"]["host"], "backend.internal:8080");
    assert!(b["headers"].get("x-secret").is_none(), "{b}");
    assert_eq!(b["headers"]["x-api-version"], "1");
    assert_eq!(
        b["headers"]["x-tag"],
        serde_json::json!(["client", "added"])
    );

    // No match: the path is kept, the other edits still apply.
    let b = echo(&c, c.get(gw.url("/v1/users/abc"))).await;
    assert_eq!(b["path"], "/v1/users/abc");
    assert_eq!(b["query"], "page=2&source=weir+gw");

    // Strip first, then the regex on the stripped path.
    let b = echo(&c, c.get(gw.url("/both/old/x/y"))).await;
    assert_eq!(b["path"], "/new/x/y");

    // Other routes are untouched.
    let b = echo(&c, c.get(gw.url("/plain?token=t"))).await;
    assert_eq!(b["path"], "/plain");
    assert_eq!(b["query"], "token=t");
    assert_eq!(b["method"], "GET");
}

#[test]
fn bad_proxy_rewrite_configs_are_refused_with_field_and_reason() {
    rejected(
        r#"upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
routes:
  - id: a
    paths: [/a]
    upstream: u
    plugins:
      proxy-rewrite: {regex_uri: ['(', '/x?y'], method: 'BA D', host: 'a b', strip_prefix: nope}
  - id: b
    paths: [/b]
    upstream: u
    plugins:
      proxy-rewrite: {}
  - id: c
    paths: [/c]
    upstream: u
    plugins:
      proxy-rewrite: {path: /x}
"#,
        &[
            "routes[0].plugins.proxy-rewrite.regex_uri[0]: bad regex",
            "routes[0].plugins.proxy-rewrite.regex_uri[1]: the replacement must be a path",
            "routes[0].plugins.proxy-rewrite.method: `BA D` is not a method",
            "routes[0].plugins.proxy-rewrite.host: `a b` is not a host[:port]",
            "routes[0].plugins.proxy-rewrite.strip_prefix: `nope` must be a path",
            "routes[1].plugins.proxy-rewrite: set at least one of",
            "routes[2].plugins.proxy-rewrite.path: unknown field `path`",
        ],
    );
}
