//! Access-control plugins through a real gateway and a real upstream:
//! `ip-restriction` (CIDR lists, forwarded client addresses behind trusted
//! proxies), `cors` (preflights answered at the gateway, headers on actual
//! answers), `request-size-limit` (413/431 per route) and the global
//! header count limit; config errors at load and on reload.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{error_of, gateway, weir_bin};
use weir_testsupport::{Gateway, RawHttp, Upstream, http_client, upload_body_chunked, wait_until};

fn routes(target: &str, routes: &str) -> String {
    format!("upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]\nroutes:\n{routes}")
}

/// Asserts a JSON 403 from the gateway with `code`.
async fn assert_forbidden(r: reqwest::Response, code: &str) {
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], code, "{body}");
}

// === ip-restriction ===

const IP_ROUTES: &str = r#"
  - {id: allow-local, paths: [/allow-local], upstream: u, plugins: {ip-restriction: {allow: [127.0.0.0/8]}}}
  - {id: deny-local, paths: [/deny-local], upstream: u, plugins: {ip-restriction: {deny: [10.0.0.0/8, 127.0.0.1]}}}
  - {id: allow-other, paths: [/allow-other], upstream: u, plugins: {ip-restriction: {allow: [10.0.0.0/8, "2001:db8::/32"]}}}
  - id: both
    paths: [/both]
    upstream: u
    plugins: {ip-restriction: {allow: [127.0.0.0/8], deny: [127.0.0.1/32]}}
  - id: xff
    paths: [/xff]
    upstream: u
    plugins:
      ip-restriction: {allow: [203.0.113.0/24], trusted_proxies: [127.0.0.1, 192.0.2.0/24]}
  - id: xff-untrusted
    paths: [/xff-untrusted]
    upstream: u
    plugins:
      ip-restriction: {allow: [203.0.113.0/24], trusted_proxies: [192.0.2.0/24]}
  - id: fwd
    paths: [/fwd]
    upstream: u
    plugins:
      ip-restriction: {allow: ["2001:db8::/32"], deny: ["2001:db8:bad::/48"], trusted_proxies: [127.0.0.1], client_ip_header: forwarded}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_restriction_allows_and_denies_by_cidr() {
    let up = Upstream::start("a").await;
    let gw = gateway(&routes(&up.target(), IP_ROUTES)).await;
    let c = http_client();

    let r = c.get(gw.url("/allow-local")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 1);

    assert_forbidden(
        c.get(gw.url("/deny-local")).send().await.unwrap(),
        "ip_forbidden",
    )
    .await;
    assert_forbidden(
        c.get(gw.url("/allow-other")).send().await.unwrap(),
        "ip_forbidden",
    )
    .await;
    // Deny wins over allow.
    assert_forbidden(c.get(gw.url("/both")).send().await.unwrap(), "ip_forbidden").await;
    // Refused requests never reached the upstream.
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_the_rightmost_untrusted_hop_counts() {
    let up = Upstream::start("a").await;
    let gw = gateway(&routes(&up.target(), IP_ROUTES)).await;
    let c = http_client();
    let xff = |path: &str, v: &str| c.get(gw.url(path)).header("x-forwarded-for", v.to_string());

    // The peer (127.0.0.1) is trusted: the forwarded client is checked.
    assert_eq!(
        xff("/xff", "203.0.113.5").send().await.unwrap().status(),
        200
    );
    // A spoofed leftmost hop does not help, a trusted proxy hop is skipped.
    assert_eq!(
        xff("/xff", "10.6.6.6, 203.0.113.5, 192.0.2.9")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_forbidden(
        xff("/xff", "203.0.113.5, 198.51.100.1")
            .send()
            .await
            .unwrap(),
        "ip_forbidden",
    )
    .await;
    // An unreadable deciding hop is refused, not guessed around.
    assert_forbidden(
        xff("/xff", "203.0.113.5, junk").send().await.unwrap(),
        "ip_forbidden",
    )
    .await;
    // Without the header the trusted peer itself is the client.
    assert_forbidden(c.get(gw.url("/xff")).send().await.unwrap(), "ip_forbidden").await;
    // The peer is not a trusted proxy: its header is ignored.
    assert_forbidden(
        xff("/xff-untrusted", "203.0.113.5").send().await.unwrap(),
        "ip_forbidden",
    )
    .await;

    // RFC 7239 `Forwarded`, IPv6 in brackets with a port.
    let fwd = |v: &str| c.get(gw.url("/fwd")).header("forwarded", v.to_string());
    let r = fwd(r#"for="[2001:db8::17]:4711";proto=https"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_forbidden(
        fwd(r#"for="[2001:db8:bad::1]""#).send().await.unwrap(),
        "ip_forbidden",
    )
    .await;
    assert_forbidden(fwd("for=unknown").send().await.unwrap(), "ip_forbidden").await;
}

// === cors ===

const CORS_ROUTES: &str = r#"
  - id: cors
    paths: [/cors]
    upstream: u
    plugins:
      cors:
        allow_origins: ["https://app.example.com", "https://*.example.org"]
        allow_origins_regex: ['http://localhost:\d+']
        allow_methods: [GET, PUT]
        allow_headers: [content-type, x-token]
        expose_headers: [x-upstream, x-request-id]
        allow_credentials: true
        max_age: 10m
  - id: open
    paths: [/open]
    upstream: u
    plugins:
      cors: {allow_origins: ["*"], allow_headers: ["*"], allow_methods: ["*"]}
"#;

fn preflight(
    c: &reqwest::Client,
    url: String,
    origin: &str,
    method: &str,
) -> reqwest::RequestBuilder {
    c.request(reqwest::Method::OPTIONS, url)
        .header("origin", origin.to_string())
        .header("access-control-request-method", method.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_at_the_gateway() {
    let up = Upstream::start("a").await;
    let gw = gateway(&routes(&up.target(), CORS_ROUTES)).await;
    let c = http_client();

    for origin in [
        "https://app.example.com",
        "https://a.b.example.org",
        "http://localhost:3000",
    ] {
        let r = preflight(&c, gw.url("/cors"), origin, "PUT")
            .header("access-control-request-headers", "Content-Type, X-Token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{origin}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type, x-token");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["vary"], "Origin");
    }
    assert_eq!(up.hits(), 0, "a preflight never reaches the upstream");

    // Refusals: origin, method, header. Still no upstream call.
    for (origin, method, headers) in [
        ("https://evil.example", "PUT", ""),
        ("https://example.org", "GET", ""),
        ("https://app.example.com.evil.com", "GET", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "GET", "x-other"),
    ] {
        let mut req = preflight(&c, gw.url("/cors"), origin, method);
        if !headers.is_empty() {
            req = req.header("access-control-request-headers", headers);
        }
        let r = req.send().await.unwrap();
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert_forbidden(r, "cors_forbidden").await;
    }
    assert_eq!(up.hits(), 0);

    // `*` without credentials: any origin, requested headers reflected.
    let r = preflight(&c, gw.url("/open"), "https://anyone.test", "PATCH")
        .header("access-control-request-headers", "x-a, x-b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(r.headers()["access-control-allow-methods"], "PATCH");
    assert_eq!(r.headers()["access-control-allow-headers"], "x-a, x-b");
    assert!(r.headers().get("vary").is_none());
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_on_actual_requests() {
    let up = Upstream::start("a").await;
    let gw = gateway(&routes(&up.target(), CORS_ROUTES)).await;
    let c = http_client();

    let r = c
        .get(gw.url("/cors"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["access-control-expose-headers"],
        "x-upstream, x-request-id"
    );
    assert_eq!(h["vary"], "Origin");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/cors", "the upstream answered");

    // A foreign origin still reaches the upstream (CORS is the browser's
    // guard) but gets no allow headers; caches are told it varies.
    let r = c
        .get(gw.url("/cors"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.headers()["vary"], "Origin");

    // An OPTIONS without Access-Control-Request-Method is an ordinary
    // request and goes upstream.
    let before = up.hits();
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/cors"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), before + 1);

    let r = c
        .get(gw.url("/open"))
        .header("origin", "https://x.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

// === request-size-limit and header limits ===

const SIZE_ROUTES: &str = r#"
  - {id: small, paths: [/small], upstream: u, plugins: {request-size-limit: {max_body_bytes: 100}}}
  - {id: few, paths: [/few], upstream: u, plugins: {request-size-limit: {max_header_count: 12, max_header_bytes: 600}}}
  - {id: plain, paths: [/plain], upstream: u}
settings: {max_header_count: 30}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limit_refuses_large_bodies_per_route() {
    let up = Upstream::start("a").await;
    let gw = gateway(&routes(&up.target(), SIZE_ROUTES)).await;
    let c = http_client();

    // Declared length over the route's limit: refused before the upstream.
    let r = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 101])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "payload_too_large");
    assert_eq!(up.hits(), 0);

    // No declared length: cut off while streaming.
    let r = c
        .post(gw.url("/small"))
        .body(upload_body_chunked(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "payload_too_large");

    // At the limit, and on a route without the plugin, bodies pass.
    let r = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(gw.url("/plain"))
        .body(upload_body_chunked(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["body_len"], 5000);
}

fn request_with_headers(path: &str, n: usize, value_len: usize) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: t\r\n");
    for i in 0..n {
        req.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(value_len)));
    }
    req.push_str("connection: close\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_count_and_size_limits_answer_431() {
    let up = Upstream::start("a").await;
    let gw = gateway(&routes(&up.target(), SIZE_ROUTES)).await;
    let addr = gw.proxy_addr();

    // Route limit: 12 fields (host and connection count too).
    let r = RawHttp::exchange(addr, request_with_headers("/few", 10, 1))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = RawHttp::exchange(addr, request_with_headers("/few", 11, 1))
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(error_of(&r.json().unwrap())["code"], "too_many_headers");
    // Route limit: 600 bytes of head.
    let r = RawHttp::exchange(addr, request_with_headers("/few", 1, 700))
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(error_of(&r.json().unwrap())["code"], "headers_too_large");

    // Global limit: 30 fields, on every route.
    let r = RawHttp::exchange(addr, request_with_headers("/plain", 28, 1))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = RawHttp::exchange(addr, request_with_headers("/plain", 29, 1))
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(error_of(&r.json().unwrap())["code"], "too_many_headers");
    // A repeated header counts once per line.
    let mut req = String::from("GET /plain HTTP/1.1\r\nhost: t\r\nconnection: close\r\n");
    for _ in 0..29 {
        req.push_str("x-same: 1\r\n");
    }
    req.push_str("\r\n");
    let r = RawHttp::exchange(addr, req).await.unwrap();
    assert_eq!(r.status, 431);
    // Only the accepted requests reached the upstream.
    assert_eq!(up.hits(), 2);
}

// === config errors ===

fn validate(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, yaml).unwrap();
    let out = Command::new(weir_bin())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_access_control_configs_are_refused_with_plugin_field_and_reason() {
    let (code, err) = validate(
        r#"upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
settings: {max_header_count: 0}
routes:
  - id: a
    paths: [/a]
    upstream: u
    plugins:
      ip-restriction: {allow: [10.0.0.0/8, 10.0.0.300], trusted_proxies: ["fe80::/200"]}
  - id: b
    paths: [/b]
    upstream: u
    plugins:
      cors: {allow_origins: ["*"], allow_credentials: true, allow_origins_regex: ["("]}
  - id: c
    paths: [/c]
    upstream: u
    plugins:
      request-size-limit: {max_body_bytes: 0}
      ip-restriction: {}
"#,
    );
    assert_eq!(code, Some(2), "{err}");
    for want in [
        "routes[0].plugins.ip-restriction.allow[1]: `10.0.0.300` is not an IP address or CIDR network",
        "routes[0].plugins.ip-restriction.trusted_proxies[0]: `fe80::/200` is not",
        "routes[1].plugins.cors.allow_origins_regex[0]: bad regex",
        "routes[1].plugins.cors.allow_origins: `*` cannot be used with `allow_credentials: true`",
        "routes[2].plugins.request-size-limit.max_body_bytes: must be greater than zero",
        "routes[2].plugins.ip-restriction: set `allow`, `deny` or both",
        "settings.max_header_count: must be between 1 and 10000",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_access_control_config_on_reload_keeps_the_running_one() {
    let up = Upstream::start("a").await;
    let good = routes(&up.target(), IP_ROUTES);
    let gw = gateway(&good).await;
    let c = http_client();
    let bad = good.replace("allow: [127.0.0.0/8]}", "allow: [127.0.0.0/33]}");
    assert_ne!(bad, good);
    gw.rewrite_config(&Gateway::config(&bad)).unwrap();
    wait_until(
        "the rejection is logged",
        Duration::from_secs(10),
        || async { gw.log().contains("config rejected") },
    )
    .await;
    assert!(
        gw.log()
            .contains("routes[0].plugins.ip-restriction.allow[0]"),
        "{}",
        gw.log()
    );
    let r = c.get(gw.url("/allow-local")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the old config still serves");

    // A good change applies: the route now refuses the local client.
    let changed = good.replace("allow: [127.0.0.0/8]}", "allow: [10.0.0.0/8]}");
    gw.rewrite_config(&Gateway::config(&changed)).unwrap();
    wait_until("the new config serves", Duration::from_secs(10), || async {
        c.get(gw.url("/allow-local")).send().await.unwrap().status() == 403
    })
    .await;
}
