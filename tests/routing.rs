//! Route matching through a real gateway: every kind of condition, the
//! ranking rule between matching routes, backtracking, API versions and the
//! answer when nothing matches.
//!
//! Each test starts one upstream per route it wants to tell apart, named
//! after the route, so the `x-upstream` response header says which route
//! won and the echoed body shows what the upstream received.

mod common;

use std::fmt;

use common::{error_of, rejected};
use reqwest::Method;
use serde_json::Value;
use weir_testsupport::{Gateway, RawHttp, Upstream, http_client};

// === fixture ===

/// A gateway with one single-target upstream per name (the upstream id is
/// the name) and the given routes.
struct Fixture {
    gw: Gateway,
    client: reqwest::Client,
    _upstreams: Vec<Upstream>,
}

impl Fixture {
    /// `routes` is the YAML list under `routes:`, one item per line, each
    /// indented by two spaces.
    async fn start(names: &[&str], routes: &str) -> Fixture {
        let mut upstreams = Vec::new();
        let mut yaml = String::from("upstreams:\n");
        for name in names {
            let up = Upstream::start(name).await;
            yaml.push_str(&format!(
                "  - {{id: {name}, targets: [{{addr: \"{}\"}}]}}\n",
                up.target()
            ));
            upstreams.push(up);
        }
        yaml.push_str("routes:\n");
        yaml.push_str(routes);
        Fixture {
            gw: common::gateway(&yaml).await,
            client: http_client(),
            _upstreams: upstreams,
        }
    }

    /// Sends `req` and reports who answered and what the upstream saw.
    async fn send(&self, req: &Req) -> Answer {
        let method = Method::from_bytes(req.method.as_bytes()).expect("valid method");
        let mut rb = self.client.request(method, self.gw.url(&req.path));
        if let Some(host) = &req.host {
            rb = rb.header("host", host);
        }
        for (name, value) in &req.headers {
            rb = rb.header(name, value);
        }
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{req}: request failed: {e}"));
        let status = resp.status().as_u16();
        let upstream = resp
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = if req.method == "HEAD" {
            Value::Null
        } else {
            let text = resp.text().await.expect("response body");
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            upstream,
            body,
        }
    }

    /// Which route answered `req`: the upstream's name, or the status when
    /// the gateway answered itself (`404`).
    async fn route_of(&self, req: &Req) -> String {
        let a = self.send(req).await;
        match (a.status, a.upstream) {
            (200, Some(name)) => name,
            (status, _) => status.to_string(),
        }
    }

    /// Sends every request and fails listing every one routed differently
    /// from its expectation.
    async fn expect(&self, cases: &[(Req, &str)]) {
        let mut wrong = Vec::new();
        for (req, want) in cases {
            let got = self.route_of(req).await;
            if got != *want {
                wrong.push(format!("{req}: want {want}, got {got}"));
            }
        }
        assert!(wrong.is_empty(), "misrouted:\n{}", wrong.join("\n"));
    }
}

/// What came back for one request.
struct Answer {
    status: u16,
    upstream: Option<String>,
    body: Value,
}

impl Answer {
    /// The path the upstream received, from its echo.
    fn upstream_path(&self) -> &str {
        self.body["path"].as_str().unwrap_or("(no echo)")
    }
}

/// A request to send; printed in failure messages.
#[derive(Clone)]
struct Req {
    method: String,
    host: Option<String>,
    path: String,
    headers: Vec<(String, String)>,
}

fn get(path: &str) -> Req {
    Req {
        method: "GET".into(),
        host: None,
        path: path.into(),
        headers: Vec::new(),
    }
}

impl Req {
    fn method(mut self, m: &str) -> Req {
        self.method = m.into();
        self
    }

    fn host(mut self, h: &str) -> Req {
        self.host = Some(h.into());
        self
    }

    /// Adds a header; calling it twice with one name sends it twice.
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl fmt::Display for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if let Some(h) = &self.host {
            write!(f, " Host: {h}")?;
        }
        for (n, v) in &self.headers {
            write!(f, " {n}: {v:?}")?;
        }
        Ok(())
    }
}

// === match kinds ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_exact_wildcard_and_any() {
    let fx = Fixture::start(
        &["exact", "wild", "any", "net", "multi", "v6"],
        r#"  - {id: exact, hosts: [api.example.com], paths: ["/*"], upstream: exact}
  - {id: v6, hosts: ["[::1]"], paths: ["/*"], upstream: v6}
  - {id: multi, hosts: [one.test, "*.two.test"], paths: [/m1, "/m2/:x"], upstream: multi}
  - {id: wild, hosts: ["*.example.com"], paths: ["/*"], upstream: wild}
  - {id: any, paths: ["/*"], upstream: any}
  - {id: net, hosts: ["*.example.net"], paths: ["/n"], upstream: net}
"#,
    )
    .await;
    fx.expect(&[
        (get("/x").host("api.example.com"), "exact"),
        // Hosts compare case-insensitively, without the port or a
        // trailing dot.
        (get("/x").host("API.Example.COM"), "exact"),
        (get("/x").host("api.example.com:8443"), "exact"),
        (get("/x").host("api.example.com."), "exact"),
        // A wildcard takes one label or more in front of the suffix...
        (get("/x").host("a.example.com"), "wild"),
        (get("/x").host("a.b.example.com"), "wild"),
        // ...but not the bare suffix.
        (get("/x").host("example.com"), "any"),
        (get("/x").host("xexample.com"), "any"),
        (get("/x").host("other.org"), "any"),
        // A route bound only to `*.example.net`, with no any-host route
        // for its path.
        (get("/n").host("a.example.net"), "net"),
        (get("/n").host("example.net"), "any"),
        // Several hosts and paths: any host with any path.
        (get("/m1").host("one.test"), "multi"),
        (get("/m2/7").host("one.test"), "multi"),
        (get("/m1").host("a.two.test"), "multi"),
        (get("/m2/7").host("a.two.test"), "multi"),
        (get("/m1").host("three.test"), "any"),
        // IPv6 literals keep their brackets.
        (get("/x").host("[::1]:8080"), "v6"),
        (get("/x").host("[::1]"), "v6"),
    ])
    .await;

    // HTTP/1.0 may omit Host: only routes without hosts can match.
    let r = RawHttp::exchange(fx.gw.proxy_addr(), "GET /x HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("any"));
    // An absolute-form request target names the host; Host is ignored.
    let r = RawHttp::exchange(
        fx.gw.proxy_addr(),
        "GET http://api.example.com/x HTTP/1.1\r\nHost: other.org\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("exact"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_exact_param_and_wildcard() {
    let fx = Fixture::start(
        &["exact", "param", "params", "wild", "slash", "encoded"],
        r#"  - {id: exact, paths: [/users/me], upstream: exact}
  - {id: encoded, paths: ["/caf%C3%A9"], upstream: encoded}
  - {id: param, paths: ["/users/:id"], upstream: param}
  - {id: params, paths: ["/orgs/:org/repos/:repo"], upstream: params}
  - {id: wild, paths: ["/static/*"], upstream: wild}
  - {id: slash, paths: [/dir/], upstream: slash}
"#,
    )
    .await;
    fx.expect(&[
        (get("/users/me"), "exact"),
        (get("/users/42"), "param"),
        // A parameter is one whole segment, compared raw.
        (get("/users/a%2Fb"), "param"),
        (get("/users/"), "404"),
        (get("/users"), "404"),
        (get("/users/42/x"), "404"),
        (get("/orgs/acme/repos/weir"), "params"),
        (get("/orgs/acme/repos"), "404"),
        // `/static/*` covers the prefix itself, with or without a slash,
        // and everything below...
        (get("/static"), "wild"),
        (get("/static/"), "wild"),
        (get("/static/x"), "wild"),
        (get("/static/x/y/z.css"), "wild"),
        // ...but not a longer first segment.
        (get("/staticx"), "404"),
        // A trailing slash is significant.
        (get("/dir/"), "slash"),
        (get("/dir"), "404"),
        // Paths are case-sensitive and compared without decoding.
        (get("/USERS/me"), "404"),
        (get("/caf%C3%A9"), "encoded"),
        (get("/caf%c3%a9"), "404"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods() {
    let fx = Fixture::start(
        &["read", "write", "purge", "other", "get"],
        r#"  - {id: read, paths: [/m], methods: [GET, HEAD], upstream: read}
  - {id: get, paths: [/g], methods: [GET], upstream: get}
  - {id: write, paths: [/m], methods: [POST, PUT], upstream: write}
  - {id: purge, paths: [/m], methods: [PURGE], upstream: purge}
  - {id: other, paths: [/m], upstream: other}
"#,
    )
    .await;
    fx.expect(&[
        (get("/m"), "read"),
        (get("/m").method("HEAD"), "read"),
        (get("/m").method("POST"), "write"),
        (get("/m").method("PUT"), "write"),
        (get("/m").method("PURGE"), "purge"),
        // Methods are case-sensitive: `purge` is another method.
        (get("/m").method("purge"), "other"),
        (get("/m").method("DELETE"), "other"),
        // HEAD is not implied by GET.
        (get("/g"), "get"),
        (get("/g").method("HEAD"), "404"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_conditions() {
    let fx = Fixture::start(
        &["exact", "regex", "unanchored", "present", "absent", "fallback"],
        r#"  - {id: exact, paths: [/h/exact], headers: [{name: X-Tenant, exact: acme}], upstream: exact}
  - {id: regex, paths: [/h/regex], headers: [{name: x-tenant, regex: '^beta-[0-9]+$'}], upstream: regex}
  - {id: unanchored, paths: [/h/unanchored], headers: [{name: x-tenant, regex: beta}], upstream: unanchored}
  - {id: present, paths: [/h/present], headers: [{name: x-debug, present: true}], upstream: present}
  - {id: absent, paths: [/h/absent], headers: [{name: authorization, present: false}], upstream: absent}
  - {id: fallback, paths: ["/h/*"], upstream: fallback}
"#,
    )
    .await;
    fx.expect(&[
        // Names are case-insensitive, values are not.
        (get("/h/exact").header("x-tenant", "acme"), "exact"),
        (get("/h/exact").header("X-TENANT", "acme"), "exact"),
        (get("/h/exact").header("x-tenant", "ACME"), "fallback"),
        (get("/h/exact").header("x-tenant", "acme2"), "fallback"),
        (get("/h/exact"), "fallback"),
        // A header sent twice passes when any value does.
        (
            get("/h/exact")
                .header("x-tenant", "other")
                .header("x-tenant", "acme"),
            "exact",
        ),
        (get("/h/regex").header("x-tenant", "beta-12"), "regex"),
        (get("/h/regex").header("x-tenant", "beta-x"), "fallback"),
        (get("/h/regex").header("x-tenant", "xbeta-1"), "fallback"),
        (get("/h/regex"), "fallback"),
        // A regex is not anchored unless written so.
        (
            get("/h/unanchored").header("x-tenant", "alphabetaz"),
            "unanchored",
        ),
        (get("/h/present").header("x-debug", "1"), "present"),
        (get("/h/present").header("x-debug", ""), "present"),
        (get("/h/present"), "fallback"),
        (get("/h/absent"), "absent"),
        (
            get("/h/absent").header("authorization", "Bearer t"),
            "fallback",
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_conditions() {
    let fx = Fixture::start(
        &["exact", "regex", "present", "absent", "fallback"],
        r#"  - {id: exact, paths: [/q/exact], query: [{name: lang, exact: en gb}], upstream: exact}
  - {id: regex, paths: [/q/regex], query: [{name: page, regex: '^[0-9]+$'}], upstream: regex}
  - {id: present, paths: [/q/present], query: [{name: debug, present: true}], upstream: present}
  - {id: absent, paths: [/q/absent], query: [{name: token, present: false}], upstream: absent}
  - {id: fallback, paths: ["/q/*"], upstream: fallback}
"#,
    )
    .await;
    fx.expect(&[
        // Names and values are form-decoded before comparing.
        (get("/q/exact?lang=en+gb"), "exact"),
        (get("/q/exact?lang=en%20gb"), "exact"),
        (get("/q/exact?l%61ng=en+gb"), "exact"),
        (get("/q/exact?lang=en"), "fallback"),
        (get("/q/exact?language=en+gb"), "fallback"),
        (get("/q/exact"), "fallback"),
        // An argument given twice passes when any value does.
        (get("/q/exact?x=1&lang=fr&lang=en+gb"), "exact"),
        (get("/q/regex?page=12"), "regex"),
        (get("/q/regex?page=12a"), "fallback"),
        // A regex sees the decoded value.
        (get("/q/regex?page=1%32"), "regex"),
        (get("/q/regex?page="), "fallback"),
        (get("/q/regex"), "fallback"),
        // Present means the name appears, with or without a value.
        (get("/q/present?debug"), "present"),
        (get("/q/present?debug="), "present"),
        (get("/q/present?a=1&debug=0"), "present"),
        (get("/q/present?debugx=1"), "fallback"),
        (get("/q/absent"), "absent"),
        (get("/q/absent?a=1"), "absent"),
        (get("/q/absent?token=1"), "fallback"),
        (get("/q/absent?token"), "fallback"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_upstreams_choose_the_destination() {
    let fx = Fixture::start(
        &["a", "b"],
        r#"  - {id: via-service, paths: [/svc], service: s}
  - {id: override, paths: [/override], service: s, upstream: b}
  - {id: own-host, paths: [/own-host], service: s, host_header: pass}
services:
  - {id: s, upstream: a, host_header: {rewrite: svc.internal}}
"#,
    )
    .await;
    let a = fx.send(&get("/svc").host("public.test")).await;
    assert_eq!(a.upstream.as_deref(), Some("a"));
    assert_eq!(a.body["headers"]["host"], "svc.internal");
    // The route's `upstream` wins over the service's; the service's
    // defaults still apply.
    let a = fx.send(&get("/override").host("public.test")).await;
    assert_eq!(a.upstream.as_deref(), Some("b"));
    assert_eq!(a.body["headers"]["host"], "svc.internal");
    // The route's `host_header` wins over the service's.
    let a = fx.send(&get("/own-host").host("public.test")).await;
    assert_eq!(a.upstream.as_deref(), Some("a"));
    assert_eq!(a.body["headers"]["host"], "public.test");
}

// === ranking ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_beats_every_other_rule() {
    let fx = Fixture::start(
        &["specific", "high", "low", "default"],
        r#"  - {id: specific, hosts: [api.example.com], paths: [/p/x], methods: [GET], headers: [{name: x-a, present: true}], upstream: specific}
  - {id: high, priority: 1, paths: ["/p/*"], upstream: high}
  - {id: low, priority: -1, paths: [/n/x], upstream: low}
  - {id: default, paths: ["/n/*"], upstream: default}
"#,
    )
    .await;
    fx.expect(&[
        // Exact path, exact host and more conditions all lose to a higher
        // priority.
        (
            get("/p/x").host("api.example.com").header("x-a", "1"),
            "high",
        ),
        // A negative priority loses to the default 0.
        (get("/n/x"), "default"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_specificity() {
    let fx = Fixture::start(
        &[
            "wild",
            "param",
            "exact",
            "deep-wild",
            "deep-param",
            "late-param",
            "any-seg",
            "param-wild",
            "v2-literal",
            "v2-version",
        ],
        r#"  - {id: wild, paths: ["/a/*"], upstream: wild}
  - {id: param, paths: ["/a/:x"], upstream: param}
  - {id: exact, paths: [/a/b], upstream: exact}
  - {id: deep-wild, paths: ["/a/b/*"], upstream: deep-wild}
  - {id: late-param, paths: ["/c/:x/d"], upstream: late-param}
  - {id: deep-param, paths: ["/c/b/:y"], upstream: deep-param}
  - {id: any-seg, paths: ["/k/*"], upstream: any-seg}
  - {id: param-wild, paths: ["/k/:id/*"], upstream: param-wild}
  - {id: v2-literal, paths: ["/v2/users/:id"], upstream: v2-literal}
  - {id: v2-version, paths: ["/users/:id"], version: {value: v2}, upstream: v2-version}
"#,
    )
    .await;
    fx.expect(&[
        // Exact beats parameterised beats wildcard, whatever the order in
        // the config.
        (get("/a/b"), "exact"),
        (get("/a/c"), "param"),
        (get("/a/c/d"), "wild"),
        // Among wildcards, more literal segments first.
        (get("/a/b/c"), "deep-wild"),
        // Among parameterised paths, more literal segments before the first
        // parameter: `/c/b/:y` (2) beats `/c/:x/d` (1), although both have
        // two literal segments in all and `/c/:x/d` comes first.
        (get("/c/b/d"), "deep-param"),
        (get("/c/z/d"), "late-param"),
        // A path with a parameter and a wildcard counts as a wildcard with
        // one literal segment, the same as `/k/*`: config order decides.
        (get("/k/1/x"), "any-seg"),
        // A `from: path` version prefix counts as a literal segment: both
        // routes have two, so rule 4 (the version is a condition) decides
        // against config order.
        (get("/v2/users/7"), "v2-version"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_specificity() {
    let fx = Fixture::start(
        &[
            "any",
            "short",
            "long",
            "exact",
            "host-wild-path",
            "any-exact-path",
        ],
        r#"  - {id: any, paths: [/hs], upstream: any}
  - {id: short, hosts: ["*.example.com"], paths: [/hs], upstream: short}
  - {id: long, hosts: ["*.b.example.com"], paths: [/hs], upstream: long}
  - {id: exact, hosts: [a.b.example.com], paths: [/hs], upstream: exact}
  - {id: host-wild-path, hosts: [h.test], paths: ["/hp/*"], upstream: host-wild-path}
  - {id: any-exact-path, paths: [/hp/x], upstream: any-exact-path}
"#,
    )
    .await;
    fx.expect(&[
        // Exact beats wildcard (longer suffix first) beats any host, against
        // config order.
        (get("/hs").host("a.b.example.com"), "exact"),
        (get("/hs").host("x.b.example.com"), "long"),
        (get("/hs").host("x.example.com"), "short"),
        (get("/hs").host("other.test"), "any"),
        // Path specificity comes before host specificity.
        (get("/hp/x").host("h.test"), "any-exact-path"),
        (get("/hp/y").host("h.test"), "host-wild-path"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_count() {
    let fx = Fixture::start(
        &[
            "plain", "method", "method-header", "version", "exact-host", "any-host",
        ],
        r#"  - {id: plain, paths: [/cc], upstream: plain}
  - {id: method, paths: [/cc], methods: [GET], upstream: method}
  - {id: method-header, paths: [/cc], methods: [GET], headers: [{name: x-a, present: true}], upstream: method-header}
  - {id: plain-v, paths: [/cv], upstream: plain}
  - {id: version, paths: [/cv], version: {from: header, value: v2, default: true}, upstream: version}
  - {id: exact-host, hosts: [h.test], paths: [/ch], upstream: exact-host}
  - {id: any-host, paths: [/ch], methods: [GET], headers: [{name: x-a, present: true}], upstream: any-host}
"#,
    )
    .await;
    fx.expect(&[
        (get("/cc").header("x-a", "1"), "method-header"),
        (get("/cc"), "method"),
        (get("/cc").method("POST").header("x-a", "1"), "plain"),
        // A version counts as a condition, also when it matches by
        // default.
        (get("/cv"), "version"),
        (get("/cv").header("accept-version", "v1"), "plain"),
        // Host specificity comes before the number of conditions.
        (get("/ch").host("h.test").header("x-a", "1"), "exact-host"),
        (get("/ch").host("other.test").header("x-a", "1"), "any-host"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_order_breaks_the_last_tie() {
    let fx = Fixture::start(
        &["first", "second"],
        r#"  - {id: first, paths: [/o], methods: [GET], upstream: first}
  - {id: second, paths: [/o], methods: [GET], upstream: second}
  - {id: second-r, paths: [/r], headers: [{name: x-a, present: true}], upstream: second}
  - {id: first-r, paths: [/r], headers: [{name: x-b, present: true}], upstream: first}
"#,
    )
    .await;
    fx.expect(&[
        (get("/o"), "first"),
        (get("/r").header("x-a", "1").header("x-b", "1"), "second"),
        (get("/r").header("x-b", "1"), "first"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtracking_to_less_specific_paths() {
    let fx = Fixture::start(
        &["create", "item", "put", "rest", "tenant", "shared"],
        r#"  - {id: create, paths: [/items/new], methods: [POST], upstream: create}
  - {id: item, paths: ["/items/:id"], upstream: item}
  - {id: put, paths: [/b/x/y], methods: [PUT], upstream: put}
  - {id: rest, paths: ["/b/*"], upstream: rest}
  - {id: tenant, hosts: [h.test], paths: [/bh], headers: [{name: x-tenant, present: true}], upstream: tenant}
  - {id: shared, paths: [/bh], upstream: shared}
"#,
    )
    .await;
    fx.expect(&[
        // The exact path's only route fails its method: the parameter
        // route gets the request.
        (get("/items/new").method("POST"), "create"),
        (get("/items/new"), "item"),
        (get("/items/7").method("POST"), "item"),
        // Back up two levels to a wildcard.
        (get("/b/x/y").method("PUT"), "put"),
        (get("/b/x/y"), "rest"),
        // From an exact host's route to the any-host one.
        (get("/bh").host("h.test").header("x-tenant", "t"), "tenant"),
        (get("/bh").host("h.test"), "shared"),
    ])
    .await;
}

// === API versions ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_in_the_path_with_and_without_strip() {
    let fx = Fixture::start(
        &["v1", "v2", "kept", "root", "home"],
        r#"  - {id: users-v1, paths: ["/users/*"], version: {value: v1, strip: true, default: true}, upstream: v1}
  - {id: home-v6, paths: ["/"], version: {value: v6, strip: true}, upstream: home}
  - {id: users-v2, paths: ["/users/*"], version: {value: v2, strip: true}, upstream: v2}
  - {id: orders-v3, paths: ["/orders/*"], version: {value: v3}, upstream: kept}
  - {id: all-v4, paths: ["/*"], version: {value: v4, strip: true}, upstream: root}
"#,
    )
    .await;
    let cases = [
        // (request path, upstream, path the upstream receives)
        ("/v1/users/7", "v1", "/users/7"),
        ("/v2/users/7", "v2", "/users/7"),
        ("/v2/users", "v2", "/users"),
        // `default: true`: no version in the path goes to v1, unstripped.
        ("/users/7", "v1", "/users/7"),
        // Without strip the upstream sees the prefix.
        ("/v3/orders/1", "kept", "/v3/orders/1"),
        // Stripping everything leaves `/`.
        ("/v4", "root", "/"),
        ("/v4/", "root", "/"),
        ("/v4/anything/x", "root", "/anything/x"),
        // The trailing-slash rule applies after the prefix.
        ("/v6/", "home", "/"),
    ];
    let mut wrong = Vec::new();
    for (path, up, seen) in cases {
        let a = fx.send(&get(path)).await;
        let got = (a.upstream.as_deref().unwrap_or("-"), a.upstream_path());
        if a.status != 200 || got != (up, seen) {
            wrong.push(format!(
                "{path}: want {up} seeing {seen}, got {} {got:?}",
                a.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The query string survives the strip.
    let a = fx.send(&get("/v2/users/7?fields=name&x=1")).await;
    assert_eq!(a.upstream_path(), "/users/7");
    assert_eq!(a.body["query"], "fields=name&x=1");

    fx.expect(&[
        // No route serves v5, and `/orders/*` has no default version.
        (get("/v5/users/7"), "404"),
        (get("/orders/1"), "404"),
        // The version is a whole first segment.
        (get("/v2x/users/7"), "404"),
        // Any path version in the table counts as "stating a version", so
        // the v1 default does not take `/v3/users/7` although no users
        // route serves v3.
        (get("/v3/users/7"), "404"),
        (get("/v6"), "404"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_in_a_header() {
    let fx = Fixture::start(
        &["v1", "v2", "beta", "stable"],
        r#"  - {id: v1, paths: ["/api/*"], version: {from: header, value: "1", default: true}, upstream: v1}
  - {id: v2, paths: ["/api/*"], version: {from: header, value: "2"}, upstream: v2}
  - {id: beta, paths: ["/custom"], version: {from: header, name: X-API-Version, value: beta}, upstream: beta}
  - {id: stable, paths: ["/custom"], version: {from: header, name: X-API-Version, value: stable, default: true}, upstream: stable}
"#,
    )
    .await;
    fx.expect(&[
        // `Accept-Version` is the default header name.
        (get("/api/x").header("accept-version", "2"), "v2"),
        (get("/api/x").header("Accept-Version", "1"), "v1"),
        (get("/api/x"), "v1"),
        // A stated version no route serves is not "no version".
        (get("/api/x").header("accept-version", "3"), "404"),
        (get("/api/x").header("accept-version", ""), "404"),
        // A custom name; header names are case-insensitive.
        (get("/custom").header("x-api-version", "beta"), "beta"),
        (get("/custom").header("x-api-version", "stable"), "stable"),
        (get("/custom"), "stable"),
        // The default name means nothing to these routes.
        (get("/custom").header("accept-version", "beta"), "stable"),
    ])
    .await;
    // The path and the version header are passed on unchanged.
    let a = fx
        .send(&get("/api/x/y").header("accept-version", "2"))
        .await;
    assert_eq!(a.upstream_path(), "/api/x/y");
    assert_eq!(a.body["headers"]["accept-version"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_in_the_query() {
    let fx = Fixture::start(
        &["v1", "v2", "custom"],
        r#"  - {id: v1, paths: ["/api/*"], version: {from: query, value: v1, default: true}, upstream: v1}
  - {id: v2, paths: ["/api/*"], version: {from: query, value: v2}, upstream: v2}
  - {id: custom, paths: ["/c"], version: {from: query, name: api, value: v2}, upstream: custom}
"#,
    )
    .await;
    fx.expect(&[
        (get("/api/x?version=v2"), "v2"),
        (get("/api/x?a=1&version=v2"), "v2"),
        (get("/api/x?version=v1"), "v1"),
        (get("/api/x"), "v1"),
        (get("/api/x?a=1"), "v1"),
        (get("/api/x?version=v9"), "404"),
        (get("/c?api=v2"), "custom"),
        (get("/c?version=v2"), "404"),
    ])
    .await;
    let a = fx.send(&get("/api/x?version=v2&b=2")).await;
    assert_eq!(a.upstream_path(), "/api/x");
    assert_eq!(a.body["query"], "version=v2&b=2");
}

// === no match, invalid routes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_a_json_404() {
    let fx = Fixture::start(
        &["a"],
        r#"  - {id: a, hosts: [a.test], paths: [/a], methods: [GET], upstream: a}
"#,
    )
    .await;
    for req in [
        get("/nothing").host("a.test"),
        get("/a").host("b.test"),
        get("/a").host("a.test").method("POST"),
    ] {
        let a = fx.send(&req).await;
        assert_eq!(a.status, 404, "{req}");
        assert_eq!(a.upstream, None, "{req}: an upstream answered");
        let e = error_of(&a.body);
        assert_eq!(e["code"], "no_route", "{req}");
        assert_eq!(e["status"], 404, "{req}");
        let host = req.host.as_deref().unwrap_or_default();
        assert_eq!(
            e["message"],
            format!("no route matches {} {host}{}", req.method, req.path),
            "{req}"
        );
    }
    assert_eq!(fx.route_of(&get("/a").host("a.test")).await, "a");
}

#[test]
fn invalid_routes_are_reported_with_their_field_path() {
    rejected(
        r#"upstreams: [{id: u, targets: [{addr: "127.0.0.1:9"}]}]
routes:
  - {id: r0, paths: [users], upstream: u}
  - {id: r1, paths: ["/a/*/b", "/u/:id/:id"], upstream: u}
  - {id: r2, hosts: ["*", "api.example.com:8080", "a.*.com"], paths: [/], upstream: u}
  - {id: r3, paths: [/], methods: [get], upstream: u}
  - {id: r4, paths: [/], headers: [{name: x-a, regex: "a("}], upstream: u}
  - {id: r5, paths: [/], version: {from: header, value: v2, strip: true}, upstream: u}
  - {id: r6, paths: [/], version: {value: v/2}, upstream: u}
  - {id: r7, paths: []}
"#,
        &[
            "routes[0].paths[0]: `users` must start with `/`",
            "routes[1].paths[0]: `/a/*/b`: `*` is only allowed as the whole last segment",
            "routes[1].paths[1]: `/u/:id/:id`: parameter `id` appears twice",
            "routes[2].hosts[0]: `*` alone is not a host; leave `hosts` empty to match any host",
            "routes[2].hosts[1]: `api.example.com:8080`: must not include a port",
            "routes[2].hosts[2]: `a.*.com`: `*` is only allowed as the whole first label",
            "routes[3].methods[0]: methods are case-sensitive; write `GET`",
            "routes[4].headers[0].regex: invalid regex `a(`: unclosed group",
            "routes[5].version.strip: only applies to `from: path`",
            "routes[6].version.value: `v/2` must be a single path segment (no `/`)",
            "routes[7]: a route needs `service` or `upstream`",
            "routes[7].paths: a route needs at least one path",
            "12 problem(s)",
        ],
    );
}
