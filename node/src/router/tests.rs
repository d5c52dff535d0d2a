use std::cmp::Reverse;
use std::collections::HashSet;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

use super::*;
use crate::config::{ValueMatch, ValueRule, VersionMatch, VersionSource};

// === helpers ===

fn route(paths: &[&str]) -> RouteConfig {
    RouteConfig {
        id: "r".into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        upstream: Some("u".into()),
        ..RouteConfig::default()
    }
}

fn with(paths: &[&str], f: impl FnOnce(&mut RouteConfig)) -> RouteConfig {
    let mut r = route(paths);
    f(&mut r);
    r
}

fn header(name: &str, rule: ValueRule) -> ValueMatch {
    ValueMatch {
        name: name.into(),
        rule,
    }
}

fn version(from: VersionSource, value: &str, strip: bool, default: bool) -> VersionMatch {
    VersionMatch {
        value: value.into(),
        from,
        name: None,
        strip,
        default,
    }
}

/// Builds a router whose payloads are the given names.
fn router(routes: &[(&str, RouteConfig)]) -> Router<String> {
    let pairs = routes
        .iter()
        .map(|(name, r)| (r, name.to_string()))
        .collect();
    match Router::build(pairs) {
        Ok(r) => r,
        Err(e) => panic!("routes should build: {e}"),
    }
}

#[derive(Clone, Debug)]
struct Req {
    method: Method,
    host: Option<String>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

impl Req {
    fn get(path: &str) -> Self {
        Req {
            method: Method::GET,
            host: None,
            path: path.into(),
            query: None,
            headers: HeaderMap::new(),
        }
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn host(mut self, h: &str) -> Self {
        self.host = Some(h.into());
        self
    }
    fn query(mut self, q: &str) -> Self {
        self.query = Some(q.into());
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }
}

/// The payload of the route `req` lands on.
fn hit(r: &Router<String>, req: &Req) -> Option<String> {
    r.lookup(&req.view()).map(|m| m.value.clone())
}

fn hit_path(r: &Router<String>, path: &str) -> Option<String> {
    hit(r, &Req::get(path))
}

fn problems(r: &RouteConfig) -> Vec<String> {
    let mut p = Problems::default();
    validate_route(r, "routes[3]", &mut p);
    p.0.into_iter().map(|p| p.path).collect()
}

// === paths ===

#[test]
fn exact_paths_match_only_themselves() {
    let r = router(&[("ab", route(&["/a/b"])), ("root", route(&["/"]))]);
    assert_eq!(hit_path(&r, "/a/b").as_deref(), Some("ab"));
    assert_eq!(hit_path(&r, "/").as_deref(), Some("root"));
    assert_eq!(hit_path(&r, "/a"), None);
    assert_eq!(hit_path(&r, "/a/b/c"), None);
    assert_eq!(hit_path(&r, "/a/bb"), None);
    assert_eq!(hit_path(&r, ""), None);
    assert_eq!(hit_path(&r, "*"), None);
}

#[test]
fn trailing_slash_is_significant() {
    let r = router(&[("slash", route(&["/a/"])), ("bare", route(&["/a"]))]);
    assert_eq!(hit_path(&r, "/a/").as_deref(), Some("slash"));
    assert_eq!(hit_path(&r, "/a").as_deref(), Some("bare"));
    assert_eq!(hit_path(&r, "//a"), None);
}

#[test]
fn params_take_one_non_empty_segment() {
    let r = router(&[("user", route(&["/users/:id/posts/:post"]))]);
    let req = Req::get("/users/42/posts/7");
    let m = r.lookup(&req.view()).expect("matches");
    assert_eq!(m.value, "user");
    assert_eq!(m.param("id", &req.path), Some("42"));
    assert_eq!(m.param("post", &req.path), Some("7"));
    assert_eq!(m.param("nope", &req.path), None);
    assert_eq!(
        m.params(&req.path).collect::<Vec<_>>(),
        vec![("id", "42"), ("post", "7")]
    );
    assert_eq!(hit_path(&r, "/users//posts/7"), None);
    assert_eq!(hit_path(&r, "/users/42/posts/"), None);
    assert_eq!(hit_path(&r, "/users/42/posts"), None);
}

#[test]
fn wildcard_matches_prefix_itself_and_below() {
    let r = router(&[("static", route(&["/static/*"])), ("all", route(&["/*"]))]);
    for p in ["/static", "/static/", "/static/x", "/static/x/y/"] {
        assert_eq!(hit_path(&r, p).as_deref(), Some("static"), "{p}");
    }
    for p in ["/staticx", "/", "/other/static", "//static"] {
        assert_eq!(hit_path(&r, p).as_deref(), Some("all"), "{p}");
    }
}

#[test]
fn wildcard_after_param() {
    let r = router(&[("files", route(&["/u/:user/files/*"]))]);
    let req = Req::get("/u/ann/files/a/b.txt");
    let m = r.lookup(&req.view()).expect("matches");
    assert_eq!(m.param("user", &req.path), Some("ann"));
    assert_eq!(hit_path(&r, "/u/ann/files").as_deref(), Some("files"));
    assert_eq!(hit_path(&r, "/u//files/x"), None);
}

#[test]
fn exact_beats_param_beats_wildcard() {
    let r = router(&[
        ("wild", route(&["/users/*"])),
        ("param", route(&["/users/:id"])),
        ("exact", route(&["/users/me"])),
    ]);
    assert_eq!(hit_path(&r, "/users/me").as_deref(), Some("exact"));
    assert_eq!(hit_path(&r, "/users/42").as_deref(), Some("param"));
    assert_eq!(hit_path(&r, "/users/42/x").as_deref(), Some("wild"));
    assert_eq!(hit_path(&r, "/users").as_deref(), Some("wild"));
}

#[test]
fn more_literal_prefix_wins_within_a_kind() {
    let r = router(&[
        ("short", route(&["/a/*"])),
        ("long", route(&["/a/b/*"])),
        ("p1", route(&["/:x/b/c"])),
        ("p2", route(&["/a/:y/c"])),
        ("bytes-short", route(&["/x/*"])),
        ("bytes-long", route(&["/xyz/*"])),
        ("any", route(&["/*"])),
    ]);
    assert_eq!(hit_path(&r, "/a/b/z").as_deref(), Some("long"));
    assert_eq!(hit_path(&r, "/a/c/z").as_deref(), Some("short"));
    // Both parameterised; `/a/:y/c` has one literal segment before its
    // parameter, `/:x/b/c` none.
    assert_eq!(hit_path(&r, "/a/b/c").as_deref(), Some("p2"));
    assert_eq!(hit_path(&r, "/q/b/c").as_deref(), Some("p1"));
    assert_eq!(hit_path(&r, "/xyz/1").as_deref(), Some("bytes-long"));
}

#[test]
fn specificity_keys() {
    let key = |p: &str| {
        let parsed = compile::parse_path(p).expect("valid");
        path_specificity(&parsed.segs, parsed.wildcard)
    };
    assert_eq!(key("/users/:id"), (1, 1));
    assert_eq!(key("/static/*"), (0, 1));
    assert_eq!(key("/a/:id/*"), (0, 1));
    assert_eq!(key("/a/b"), (2, 2));
    assert_eq!(key("/a/"), (2, 2));
    assert_eq!(key("/"), (2, 1));
    assert_eq!(key("/*"), (0, 0));
    assert!(key("/a/b/*") > key("/a/*"));
    assert!(key("/a/:x/c") > key("/:x/b/c"));
}

// === backtracking ===

#[test]
fn backtracks_from_exact_to_param_when_method_fails() {
    let r = router(&[
        (
            "me-post",
            with(&["/users/me"], |r| r.methods = vec!["POST".into()]),
        ),
        ("by-id", route(&["/users/:id"])),
    ]);
    assert_eq!(hit_path(&r, "/users/me").as_deref(), Some("by-id"));
    assert_eq!(
        hit(&r, &Req::get("/users/me").method(Method::POST)).as_deref(),
        Some("me-post")
    );
}

#[test]
fn backtracks_through_several_levels_to_a_wildcard() {
    let r = router(&[
        (
            "deep",
            with(&["/a/b/c"], |r| r.methods = vec!["PUT".into()]),
        ),
        (
            "mid",
            with(&["/a/:x/c"], |r| {
                r.headers = vec![header("x-need", ValueRule::Present(true))]
            }),
        ),
        ("top", route(&["/a/*"])),
    ]);
    assert_eq!(hit_path(&r, "/a/b/c").as_deref(), Some("top"));
    assert_eq!(
        hit(&r, &Req::get("/a/b/c").header("x-need", "1")).as_deref(),
        Some("mid")
    );
    assert_eq!(
        hit(&r, &Req::get("/a/b/c").method(Method::PUT)).as_deref(),
        Some("deep")
    );
}

#[test]
fn backtracks_across_a_dead_end_static_branch() {
    // `/a/b` exists only as a prefix of `/a/b/c`; `/a/b/d` must come back
    // out of it and take the parameter branch.
    let r = router(&[("abc", route(&["/a/b/c"])), ("param", route(&["/a/:x/d"]))]);
    assert_eq!(hit_path(&r, "/a/b/d").as_deref(), Some("param"));
}

// === hosts ===

#[test]
fn host_exact_wildcard_and_any() {
    let r = router(&[
        ("any", route(&["/"])),
        (
            "wild",
            with(&["/"], |r| r.hosts = vec!["*.example.com".into()]),
        ),
        (
            "deep-wild",
            with(&["/"], |r| r.hosts = vec!["*.b.example.com".into()]),
        ),
        (
            "exact",
            with(&["/"], |r| r.hosts = vec!["API.example.com".into()]),
        ),
    ]);
    let at = |h: &str| hit(&r, &Req::get("/").host(h));
    assert_eq!(at("api.example.com").as_deref(), Some("exact"));
    assert_eq!(at("API.Example.com").as_deref(), Some("exact"));
    assert_eq!(at("a.example.com").as_deref(), Some("wild"));
    assert_eq!(at("a.b.example.com").as_deref(), Some("deep-wild"));
    assert_eq!(at("x.a.example.com").as_deref(), Some("wild"));
    assert_eq!(at("example.com").as_deref(), Some("any"));
    assert_eq!(at("b.example.com").as_deref(), Some("wild"));
    assert_eq!(at("other.org").as_deref(), Some("any"));
    assert_eq!(hit_path(&r, "/").as_deref(), Some("any"));
}

#[test]
fn host_bound_routes_do_not_match_other_hosts() {
    let r = router(&[(
        "a",
        with(&["/x"], |r| {
            r.hosts = vec!["a.com".into(), "*.a.com".into()]
        }),
    )]);
    assert_eq!(hit(&r, &Req::get("/x").host("a.com")).as_deref(), Some("a"));
    assert_eq!(
        hit(&r, &Req::get("/x").host("w.a.com")).as_deref(),
        Some("a")
    );
    assert_eq!(hit(&r, &Req::get("/x").host("b.com")), None);
    assert_eq!(hit(&r, &Req::get("/x").host("xa.com")), None);
    assert_eq!(hit_path(&r, "/x"), None);
}

// === priority and tie-breaks ===

#[test]
fn priority_beats_path_specificity() {
    let r = router(&[
        ("exact", route(&["/a/b"])),
        ("wild", with(&["/*"], |r| r.priority = 1)),
        ("neg", with(&["/n"], |r| r.priority = -1)),
        ("wild-n", route(&["/n/*"])),
    ]);
    assert_eq!(hit_path(&r, "/a/b").as_deref(), Some("wild"));
    assert_eq!(hit_path(&r, "/n").as_deref(), Some("wild"));
}

#[test]
fn priority_beats_host_across_buckets() {
    let r = router(&[
        (
            "exact-host",
            with(&["/"], |r| r.hosts = vec!["a.com".into()]),
        ),
        ("any-host", with(&["/"], |r| r.priority = 5)),
    ]);
    assert_eq!(
        hit(&r, &Req::get("/").host("a.com")).as_deref(),
        Some("any-host")
    );
}

#[test]
fn path_specificity_beats_host() {
    let r = router(&[
        (
            "host-wild",
            with(&["/a/*"], |r| r.hosts = vec!["a.com".into()]),
        ),
        ("any-exact", route(&["/a/b"])),
    ]);
    assert_eq!(
        hit(&r, &Req::get("/a/b").host("a.com")).as_deref(),
        Some("any-exact")
    );
}

#[test]
fn host_beats_conditions() {
    let r = router(&[
        ("any-cond", with(&["/"], |r| r.methods = vec!["GET".into()])),
        ("wild", with(&["/"], |r| r.hosts = vec!["*.a.com".into()])),
    ]);
    assert_eq!(
        hit(&r, &Req::get("/").host("x.a.com")).as_deref(),
        Some("wild")
    );
    assert_eq!(
        hit(&r, &Req::get("/").host("b.com")).as_deref(),
        Some("any-cond")
    );
}

#[test]
fn more_conditions_beat_config_order() {
    let r = router(&[
        ("plain", route(&["/"])),
        (
            "method",
            with(&["/"], |r| r.methods = vec!["GET".into(), "HEAD".into()]),
        ),
        (
            "method-header",
            with(&["/"], |r| {
                r.methods = vec!["GET".into()];
                r.headers = vec![header("x-a", ValueRule::Present(true))];
            }),
        ),
    ]);
    assert_eq!(hit_path(&r, "/").as_deref(), Some("method"));
    assert_eq!(
        hit(&r, &Req::get("/").header("x-a", "1")).as_deref(),
        Some("method-header")
    );
    assert_eq!(
        hit(&r, &Req::get("/").method(Method::POST)).as_deref(),
        Some("plain")
    );
}

#[test]
fn config_order_breaks_full_ties() {
    let r = router(&[("first", route(&["/x"])), ("second", route(&["/x"]))]);
    assert_eq!(hit_path(&r, "/x").as_deref(), Some("first"));
    let m = r.lookup(&Req::get("/x").view()).expect("matches");
    assert_eq!(m.index(), 0);
}

// === methods, headers, query ===

#[test]
fn methods_are_case_sensitive_tokens() {
    let r = router(&[(
        "purge",
        with(&["/"], |r| r.methods = vec!["PURGE".into(), "GET".into()]),
    )]);
    let purge = Method::from_bytes(b"PURGE").expect("token");
    assert_eq!(
        hit(&r, &Req::get("/").method(purge)).as_deref(),
        Some("purge")
    );
    assert_eq!(hit(&r, &Req::get("/")).as_deref(), Some("purge"));
    let lower = Method::from_bytes(b"purge").expect("token");
    assert_eq!(hit(&r, &Req::get("/").method(lower)), None);
    assert_eq!(hit(&r, &Req::get("/").method(Method::POST)), None);
}

#[test]
fn header_exact_regex_present_absent() {
    let r = router(&[
        (
            "exact",
            with(&["/e"], |r| {
                r.headers = vec![header("X-Env", ValueRule::Exact("prod".into()))]
            }),
        ),
        (
            "regex",
            with(&["/r"], |r| {
                r.headers = vec![header("x-id", ValueRule::Regex("^[0-9]+$".into()))]
            }),
        ),
        (
            "present",
            with(&["/p"], |r| {
                r.headers = vec![header("x-p", ValueRule::Present(true))]
            }),
        ),
        (
            "absent",
            with(&["/a"], |r| {
                r.headers = vec![header("x-p", ValueRule::Present(false))]
            }),
        ),
    ]);
    assert_eq!(
        hit(&r, &Req::get("/e").header("x-env", "prod")).as_deref(),
        Some("exact")
    );
    assert_eq!(hit(&r, &Req::get("/e").header("x-env", "Prod")), None);
    assert_eq!(
        hit(
            &r,
            &Req::get("/e")
                .header("x-env", "dev")
                .header("x-env", "prod")
        )
        .as_deref(),
        Some("exact")
    );
    assert_eq!(hit(&r, &Req::get("/e")), None);
    assert_eq!(
        hit(&r, &Req::get("/r").header("x-id", "123")).as_deref(),
        Some("regex")
    );
    assert_eq!(hit(&r, &Req::get("/r").header("x-id", "12a")), None);
    assert_eq!(
        hit(&r, &Req::get("/p").header("x-p", "")).as_deref(),
        Some("present")
    );
    assert_eq!(hit(&r, &Req::get("/p")), None);
    assert_eq!(hit(&r, &Req::get("/a")).as_deref(), Some("absent"));
    assert_eq!(hit(&r, &Req::get("/a").header("x-p", "1")), None);
}

#[test]
fn query_exact_regex_present_absent_decoded() {
    let q = |name: &str, rule| ValueMatch {
        name: name.into(),
        rule,
    };
    let r = router(&[
        (
            "exact",
            with(&["/e"], |r| {
                r.query = vec![q("name", ValueRule::Exact("a b".into()))]
            }),
        ),
        (
            "regex",
            with(&["/r"], |r| {
                r.query = vec![q("id", ValueRule::Regex("^é+$".into()))]
            }),
        ),
        (
            "present",
            with(&["/p"], |r| {
                r.query = vec![q("debug", ValueRule::Present(true))]
            }),
        ),
        (
            "absent",
            with(&["/a"], |r| {
                r.query = vec![q("debug", ValueRule::Present(false))]
            }),
        ),
    ]);
    assert_eq!(
        hit(&r, &Req::get("/e").query("name=a+b")).as_deref(),
        Some("exact")
    );
    assert_eq!(
        hit(&r, &Req::get("/e").query("x=1&na%6De=a%20b")).as_deref(),
        Some("exact")
    );
    assert_eq!(hit(&r, &Req::get("/e").query("name=ab")), None);
    assert_eq!(hit(&r, &Req::get("/e")), None);
    assert_eq!(
        hit(&r, &Req::get("/r").query("id=%C3%A9%C3%A9")).as_deref(),
        Some("regex")
    );
    assert_eq!(hit(&r, &Req::get("/r").query("id=e")), None);
    assert_eq!(
        hit(&r, &Req::get("/p").query("debug")).as_deref(),
        Some("present")
    );
    assert_eq!(
        hit(&r, &Req::get("/p").query("a=1&debug=")).as_deref(),
        Some("present")
    );
    assert_eq!(hit(&r, &Req::get("/p").query("debugx=1")), None);
    assert_eq!(hit(&r, &Req::get("/a")).as_deref(), Some("absent"));
    assert_eq!(
        hit(&r, &Req::get("/a").query("x=1")).as_deref(),
        Some("absent")
    );
    assert_eq!(hit(&r, &Req::get("/a").query("debug=0")), None);
}

// === versions ===

#[test]
fn path_version_with_and_without_strip() {
    let r = router(&[
        (
            "v2",
            with(&["/users/*"], |r| {
                r.version = Some(version(VersionSource::Path, "v2", true, false))
            }),
        ),
        (
            "v3",
            with(&["/users/:id"], |r| {
                r.version = Some(version(VersionSource::Path, "v3", false, false))
            }),
        ),
    ]);
    let req = Req::get("/v2/users/1");
    let m = r.lookup(&req.view()).expect("v2 matches");
    assert_eq!(m.value, "v2");
    assert_eq!(m.strip_len, 3);
    assert_eq!(&req.path[m.strip_len..], "/users/1");

    let req = Req::get("/v3/users/7");
    let m = r.lookup(&req.view()).expect("v3 matches");
    assert_eq!(m.value, "v3");
    assert_eq!(m.strip_len, 0);
    assert_eq!(m.param("id", &req.path), Some("7"));

    assert_eq!(hit_path(&r, "/users/1"), None);
    assert_eq!(hit_path(&r, "/v3/users/1/x"), None);
}

#[test]
fn two_path_versions_side_by_side_with_a_default() {
    let r = router(&[
        (
            "v1",
            with(&["/users/*"], |r| {
                r.version = Some(version(VersionSource::Path, "v1", true, true))
            }),
        ),
        (
            "v2",
            with(&["/users/*"], |r| {
                r.version = Some(version(VersionSource::Path, "v2", true, false))
            }),
        ),
        (
            "fallback",
            with(&["/*"], |r| {
                r.version = Some(version(VersionSource::Path, "v1", true, true))
            }),
        ),
    ]);
    let m = |p: &str| {
        r.lookup(&Req::get(p).view())
            .map(|m| (m.value.clone(), m.strip_len))
    };
    assert_eq!(m("/v1/users/1"), Some(("v1".into(), 3)));
    assert_eq!(m("/v2/users/1"), Some(("v2".into(), 3)));
    assert_eq!(m("/users/1"), Some(("v1".into(), 0)));
    // `/v2/other` states v2, so the unversioned default must not take it;
    // only v1's `/v1/*` could, and the prefix is wrong.
    assert_eq!(m("/v2/other"), None);
    assert_eq!(m("/other"), Some(("fallback".into(), 0)));
    assert_eq!(m("/v1"), Some(("fallback".into(), 3)));
}

#[test]
fn header_version_with_default() {
    let r = router(&[
        (
            "v1",
            with(&["/api/*"], |r| {
                r.version = Some(version(VersionSource::Header, "1", false, true))
            }),
        ),
        (
            "v2",
            with(&["/api/*"], |r| {
                r.version = Some(version(VersionSource::Header, "2", false, false))
            }),
        ),
    ]);
    assert_eq!(
        hit(&r, &Req::get("/api/x").header("accept-version", "2")).as_deref(),
        Some("v2")
    );
    assert_eq!(
        hit(&r, &Req::get("/api/x").header("accept-version", "1")).as_deref(),
        Some("v1")
    );
    assert_eq!(hit(&r, &Req::get("/api/x")).as_deref(), Some("v1"));
    assert_eq!(
        hit(&r, &Req::get("/api/x").header("accept-version", "3")),
        None
    );
}

#[test]
fn query_version_with_custom_name() {
    let mut v1 = version(VersionSource::Query, "1", false, true);
    v1.name = Some("api".into());
    let mut v2 = version(VersionSource::Query, "2", false, false);
    v2.name = Some("api".into());
    let r = router(&[
        ("v1", with(&["/x"], |r| r.version = Some(v1))),
        ("v2", with(&["/x"], |r| r.version = Some(v2))),
        (
            "std",
            with(&["/y"], |r| {
                r.version = Some(version(VersionSource::Query, "3", false, false))
            }),
        ),
    ]);
    assert_eq!(
        hit(&r, &Req::get("/x").query("api=2")).as_deref(),
        Some("v2")
    );
    assert_eq!(
        hit(&r, &Req::get("/x").query("api=1")).as_deref(),
        Some("v1")
    );
    assert_eq!(
        hit(&r, &Req::get("/x").query("other=2")).as_deref(),
        Some("v1")
    );
    assert_eq!(hit(&r, &Req::get("/x").query("api=9")), None);
    assert_eq!(
        hit(&r, &Req::get("/y").query("version=3")).as_deref(),
        Some("std")
    );
}

// === validation ===

#[test]
fn validation_names_the_field() {
    let cases: Vec<(RouteConfig, &str)> = vec![
        (route(&[]), "routes[3].paths"),
        (route(&["a/b"]), "routes[3].paths[0]"),
        (route(&["/ok", "/a/*/b"]), "routes[3].paths[1]"),
        (route(&["/a*"]), "routes[3].paths[0]"),
        (route(&["/:"]), "routes[3].paths[0]"),
        (route(&["/:id/x/:id"]), "routes[3].paths[0]"),
        (route(&["/a//b"]), "routes[3].paths[0]"),
        (route(&["//"]), "routes[3].paths[0]"),
        (route(&["/a b"]), "routes[3].paths[0]"),
        (route(&["/a?b"]), "routes[3].paths[0]"),
        (route(&["/a%2"]), "routes[3].paths[0]"),
        (route(&["/caf\u{e9}"]), "routes[3].paths[0]"),
        (route(&[&"/a".repeat(129)]), "routes[3].paths[0]"),
        (
            with(&["/"], |r| r.hosts = vec!["".into()]),
            "routes[3].hosts[0]",
        ),
        (
            with(&["/"], |r| {
                r.hosts = vec!["ok.com".into(), "a.*.com".into()]
            }),
            "routes[3].hosts[1]",
        ),
        (
            with(&["/"], |r| r.hosts = vec!["*".into()]),
            "routes[3].hosts[0]",
        ),
        (
            with(&["/"], |r| r.hosts = vec!["a.com:80".into()]),
            "routes[3].hosts[0]",
        ),
        (
            with(&["/"], |r| r.hosts = vec!["a..com".into()]),
            "routes[3].hosts[0]",
        ),
        (
            with(&["/"], |r| r.hosts = vec!["*.".into()]),
            "routes[3].hosts[0]",
        ),
        (
            with(&["/"], |r| r.methods = vec!["get".into()]),
            "routes[3].methods[0]",
        ),
        (
            with(&["/"], |r| r.methods = vec!["GET".into(), "G T".into()]),
            "routes[3].methods[1]",
        ),
        (
            with(&["/"], |r| {
                r.headers = vec![header("bad name", ValueRule::Present(true))]
            }),
            "routes[3].headers[0].name",
        ),
        (
            with(&["/"], |r| {
                r.headers = vec![header("x", ValueRule::Regex("a(".into()))]
            }),
            "routes[3].headers[0].regex",
        ),
        (
            with(&["/"], |r| {
                r.headers = vec![header("x", ValueRule::Exact("a\nb".into()))]
            }),
            "routes[3].headers[0].exact",
        ),
        (
            with(&["/"], |r| {
                r.query = vec![header("", ValueRule::Present(true))]
            }),
            "routes[3].query[0].name",
        ),
        (
            with(&["/"], |r| {
                r.query = vec![
                    header("q", ValueRule::Exact("1".into())),
                    header("q", ValueRule::Regex("[".into())),
                ]
            }),
            "routes[3].query[1].regex",
        ),
        (
            with(&["/"], |r| {
                r.version = Some(version(VersionSource::Path, "", false, false))
            }),
            "routes[3].version.value",
        ),
        (
            with(&["/"], |r| {
                r.version = Some(version(VersionSource::Path, "v1/x", false, false))
            }),
            "routes[3].version.value",
        ),
        (
            with(&["/"], |r| {
                r.version = Some(version(VersionSource::Path, ":v", false, false))
            }),
            "routes[3].version.value",
        ),
        (
            with(&["/"], |r| {
                r.version = Some(version(VersionSource::Header, "1", true, false))
            }),
            "routes[3].version.strip",
        ),
        (
            with(&["/"], |r| {
                r.version = Some(version(VersionSource::Header, "", false, false))
            }),
            "routes[3].version.value",
        ),
        (
            with(&["/"], |r| {
                let mut v = version(VersionSource::Header, "1", false, false);
                v.name = Some("bad name".into());
                r.version = Some(v);
            }),
            "routes[3].version.name",
        ),
        (
            with(&["/"], |r| {
                r.version = Some(version(VersionSource::Query, "", false, false))
            }),
            "routes[3].version.value",
        ),
    ];
    for (r, want) in cases {
        assert_eq!(problems(&r), vec![want.to_string()], "{r:?}");
    }
}

#[test]
fn validation_accepts_the_documented_forms() {
    let ok = with(
        &[
            "/",
            "/a/",
            "/a/:id",
            "/a/:id/*",
            "/*",
            "/v1/things:batch",
            "/%7Euser/x",
        ],
        |r| {
            r.hosts = vec![
                "API.example.com".into(),
                "*.example.com".into(),
                "[::1]".into(),
                "localhost".into(),
            ];
            r.methods = vec!["GET".into(), "PURGE".into()];
            r.headers = vec![header("X-A", ValueRule::Regex("^a".into()))];
            r.query = vec![header("a[b]", ValueRule::Present(false))];
            r.version = Some(version(VersionSource::Path, "v1", true, true));
        },
    );
    assert_eq!(problems(&ok), Vec::<String>::new());
}

#[test]
fn validation_reports_every_problem_of_a_route() {
    let r = with(&["x", "/ok", "/a/*/b"], |r| {
        r.hosts = vec!["a.*.com".into()];
        r.headers = vec![header("bad name", ValueRule::Regex("(".into()))];
    });
    assert_eq!(
        problems(&r),
        vec![
            "routes[3].paths[0]",
            "routes[3].paths[2]",
            "routes[3].hosts[0]",
            "routes[3].headers[0].name",
            "routes[3].headers[0].regex"
        ]
    );
}

#[test]
fn config_validation_reaches_the_router() {
    let src = "upstreams:\n  - id: u\n    targets: [{addr: '127.0.0.1:1'}]\nroutes:\n  - {id: a, paths: [/a], upstream: u}\n  - {id: b, paths: [/b], upstream: u}\n  - {id: c, paths: [/c], upstream: u}\n  - id: d\n    paths: [/d]\n    upstream: u\n    headers: [{name: x-a, regex: '('}]\n";
    let err = crate::compile::load_str(src).expect_err("bad regex");
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].path, "routes[3].headers[0].regex");
    assert!(
        err.0[0].reason.contains("unclosed group"),
        "{}",
        err.0[0].reason
    );
}

#[test]
fn build_reports_problems_by_position() {
    let good = route(&["/"]);
    let bad = route(&["nope"]);
    let err = Router::build(vec![(&good, 1), (&bad, 2)]).expect_err("bad path");
    assert_eq!(err.0[0].path, "routes[1].paths[0]");
}

// === the table ===

#[test]
fn router_is_send_sync_and_counts_routes() {
    fn send_sync<S: Send + Sync>() {}
    send_sync::<Router<String>>();
    send_sync::<RouteMatch<'static, String>>();

    let empty: Router<u8> = Router::build(Vec::new()).expect("empty builds");
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(empty.lookup(&Req::get("/").view()).is_none());

    let r = router(&[
        ("a", route(&["/a", "/b"])),
        ("b", with(&["/c"], |r| r.hosts = vec!["x.com".into()])),
    ]);
    assert_eq!(r.len(), 2);
    assert!(!r.is_empty());
    assert_eq!(r.values(), ["a".to_string(), "b".to_string()]);
}

// === property: the trie agrees with a linear scan ===

/// A route index, strip length and params.
type Winner = (usize, usize, Vec<(String, String)>);

/// The reference matcher: checks every route and path against the request
/// directly from the config, ranks with the documented rule, and returns
/// every (route index, strip length, params) sharing the best rank.
fn brute_force(routes: &[RouteConfig], req: &Req) -> Vec<Winner> {
    let versions: HashSet<&str> = routes
        .iter()
        .filter_map(|r| r.version.as_ref())
        .filter(|v| v.from == VersionSource::Path)
        .map(|v| v.value.as_str())
        .collect();
    let req_segs: Vec<&str> = match req.path.strip_prefix('/') {
        Some(body) => body.split('/').collect(),
        None => return Vec::new(),
    };
    let host = req.host.as_deref().map(str::to_ascii_lowercase);
    type Key = (i32, u8, usize, usize, u64, usize, Reverse<usize>);
    let mut best: Option<Key> = None;
    let mut winners = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let host_rank = if r.hosts.is_empty() {
            Some(0)
        } else {
            r.hosts
                .iter()
                .filter_map(|h| brute_host_rank(h, host.as_deref()))
                .max()
        };
        let Some(host_rank) = host_rank else { continue };
        if !brute_conditions(r, req) {
            continue;
        }
        let conditions = usize::from(!r.methods.is_empty())
            + r.headers.len()
            + r.query.len()
            + usize::from(r.version.is_some());
        for p in &r.paths {
            let mut forms = Vec::new();
            match &r.version {
                Some(v) if v.from == VersionSource::Path => {
                    let strip = if v.strip { v.value.len() + 1 } else { 0 };
                    forms.push((format!("/{}{}", v.value, p), strip, false));
                    if v.default {
                        forms.push((p.clone(), 0, true));
                    }
                }
                _ => forms.push((p.clone(), 0, false)),
            }
            for (pattern, strip, unversioned_only) in forms {
                if unversioned_only && versions.contains(req_segs[0]) {
                    continue;
                }
                let Some(params) = brute_path(&pattern, &req_segs) else {
                    continue;
                };
                let pat: Vec<&str> = pattern[1..].split('/').collect();
                let dynamic = pat.iter().position(|s| s.starts_with(':') || *s == "*");
                let kind = if pattern.ends_with("/*") {
                    0
                } else if dynamic.is_some() {
                    1
                } else {
                    2
                };
                let (segs, bytes) = match dynamic {
                    Some(k) => (k, pat[..k].iter().map(|s| s.len() + 1).sum::<usize>() + 1),
                    None => (pat.len(), pattern.len()),
                };
                let key = (
                    r.priority,
                    kind,
                    segs,
                    bytes,
                    host_rank,
                    conditions,
                    Reverse(i),
                );
                if best.is_none_or(|b| key > b) {
                    best = Some(key);
                    winners.clear();
                }
                if best == Some(key) {
                    winners.push((i, strip, params));
                }
            }
        }
    }
    winners
}

fn brute_host_rank(pattern: &str, host: Option<&str>) -> Option<u64> {
    let host = host?;
    let pattern = pattern.to_ascii_lowercase();
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let dotted = format!(".{suffix}");
        (host.ends_with(&dotted) && host.len() > dotted.len()).then(|| 1 + suffix.len() as u64)
    } else {
        (host == pattern).then_some(u64::from(u32::MAX))
    }
}

fn brute_path(pattern: &str, req: &[&str]) -> Option<Vec<(String, String)>> {
    let pat: Vec<&str> = pattern[1..].split('/').collect();
    let (fixed, wild) = match pat.split_last() {
        Some((&"*", rest)) => (rest, true),
        _ => (&pat[..], false),
    };
    if req.len() < fixed.len() || (!wild && req.len() != fixed.len()) {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in fixed.iter().zip(req) {
        match p.strip_prefix(':') {
            Some(name) if !s.is_empty() => params.push((name.to_string(), s.to_string())),
            Some(_) => return None,
            None if p == s => {}
            None => return None,
        }
    }
    Some(params)
}

fn brute_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn brute_query(req: &Req, name: &str) -> Vec<String> {
    let Some(q) = &req.query else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (brute_decode(k) == name).then(|| brute_decode(v))
        })
        .collect()
}

fn brute_rule(rule: &ValueRule, values: &[String]) -> bool {
    match rule {
        ValueRule::Present(want) => values.is_empty() != *want,
        ValueRule::Exact(v) => values.iter().any(|x| x == v),
        ValueRule::Regex(re) => {
            let re = regex::Regex::new(re).expect("generated regexes compile");
            values.iter().any(|x| re.is_match(x))
        }
    }
}

fn brute_conditions(r: &RouteConfig, req: &Req) -> bool {
    if !r.methods.is_empty() && !r.methods.iter().any(|m| m == req.method.as_str()) {
        return false;
    }
    let header_values = |name: &str| -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    if !r
        .headers
        .iter()
        .all(|h| brute_rule(&h.rule, &header_values(&h.name)))
    {
        return false;
    }
    if !r
        .query
        .iter()
        .all(|q| brute_rule(&q.rule, &brute_query(req, &q.name)))
    {
        return false;
    }
    match &r.version {
        Some(v) if v.from != VersionSource::Path => {
            let values = if v.from == VersionSource::Header {
                header_values(v.name())
            } else {
                brute_query(req, v.name())
            };
            (values.is_empty() && v.default) || values.contains(&v.value)
        }
        _ => true,
    }
}

fn arb_path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![Just("a"), Just("b"), Just("v1"), Just(":")];
    (prop::collection::vec(seg, 0..4), 0..3u8).prop_map(|(segs, end)| {
        let mut p = String::new();
        for (i, s) in segs.iter().enumerate() {
            p.push('/');
            if *s == ":" {
                p.push_str(&format!(":p{i}"));
            } else {
                p.push_str(s);
            }
        }
        match end {
            1 => p.push('/'),
            2 => p.push_str("/*"),
            _ if p.is_empty() => p.push('/'),
            _ => {}
        }
        p
    })
}

fn arb_rule(values: &'static [&'static str]) -> impl Strategy<Value = ValueRule> {
    prop_oneof![
        prop::sample::select(values).prop_map(|v| ValueRule::Exact(v.into())),
        Just(ValueRule::Regex("^[12]$".into())),
        Just(ValueRule::Regex("b".into())),
        any::<bool>().prop_map(ValueRule::Present),
    ]
}

fn arb_version() -> impl Strategy<Value = Option<VersionMatch>> {
    let from = prop_oneof![
        Just(VersionSource::Path),
        Just(VersionSource::Header),
        Just(VersionSource::Query)
    ];
    let v = (
        from,
        prop::sample::select(&["v1", "v2"][..]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(from, value, strip, default)| VersionMatch {
            value: value.into(),
            from,
            name: None,
            strip: strip && from == VersionSource::Path,
            default,
        });
    prop::option::weighted(0.3, v)
}

fn arb_route() -> impl Strategy<Value = RouteConfig> {
    let hosts = prop::collection::vec(
        prop::sample::select(&["a.com", "b.com", "*.a.com", "*.x.a.com", "A.com"][..]),
        0..3,
    );
    let methods = prop::collection::vec(prop::sample::select(&["GET", "POST"][..]), 0..2);
    let headers = prop::collection::vec(
        (
            prop::sample::select(&["x-a", "x-b"][..]),
            arb_rule(&["1", "2"]),
        ),
        0..2,
    );
    let query = prop::collection::vec(
        (
            prop::sample::select(&["q", "r"][..]),
            arb_rule(&["1", "a b"]),
        ),
        0..2,
    );
    (
        0..3i32,
        hosts,
        prop::collection::vec(arb_path(), 1..3),
        methods,
        headers,
        query,
        arb_version(),
    )
        .prop_map(
            |(priority, hosts, paths, methods, headers, query, version)| RouteConfig {
                id: "r".into(),
                priority,
                hosts: hosts.into_iter().map(String::from).collect(),
                paths,
                methods: methods.into_iter().map(String::from).collect(),
                headers: headers
                    .into_iter()
                    .map(|(n, rule)| ValueMatch {
                        name: n.into(),
                        rule,
                    })
                    .collect(),
                query: query
                    .into_iter()
                    .map(|(n, rule)| ValueMatch {
                        name: n.into(),
                        rule,
                    })
                    .collect(),
                version,
                upstream: Some("u".into()),
                ..RouteConfig::default()
            },
        )
}

fn arb_request() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec![Method::GET, Method::POST, Method::PUT]);
    let host = prop::option::of(prop::sample::select(
        &["a.com", "x.a.com", "y.x.a.com", "b.com", "c.com", "A.com"][..],
    ));
    let path = prop::collection::vec(
        prop::sample::select(&["a", "b", "c", "v1", "v2", ""][..]),
        0..5,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")));
    let header = prop::option::of(prop::sample::select(&["1", "2", "b"][..]));
    let version_header = prop::option::of(prop::sample::select(&["v1", "v2"][..]));
    let query = prop::option::of(prop::collection::vec(
        prop::sample::select(
            &[
                "q=1",
                "q=2",
                "r=a+b",
                "r=a%20b",
                "version=v1",
                "version=v2",
                "q",
                "x=1",
                "",
            ][..],
        ),
        0..3,
    ));
    (
        method,
        host,
        path,
        header.clone(),
        header,
        version_header,
        query,
    )
        .prop_map(|(method, host, path, a, b, v, query)| {
            let mut headers = HeaderMap::new();
            if let Some(a) = a {
                headers.append("x-a", HeaderValue::from_static(a));
            }
            if let Some(b) = b {
                headers.append("x-b", HeaderValue::from_static(b));
            }
            if let Some(v) = v {
                headers.append("accept-version", HeaderValue::from_static(v));
            }
            Req {
                method,
                host: host.map(String::from),
                path,
                query: query.map(|parts| parts.join("&")),
                headers,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn lookup_agrees_with_a_linear_scan(
        routes in prop::collection::vec(arb_route(), 1..12),
        requests in prop::collection::vec(arb_request(), 1..16),
    ) {
        let pairs: Vec<(&RouteConfig, usize)> = routes.iter().enumerate().map(|(i, r)| (r, i)).collect();
        let router = Router::build(pairs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for req in &requests {
            let want = brute_force(&routes, req);
            let got = router.lookup(&req.view()).map(|m| {
                let params: Vec<(String, String)> =
                    m.params(&req.path).map(|(n, v)| (n.to_string(), v.to_string())).collect();
                prop_assert_eq!(*m.value, m.index());
                Ok((m.index(), m.strip_len, params))
            }).transpose()?;
            match got {
                None => prop_assert!(want.is_empty(), "{:?}: no match, expected {:?}", req, want),
                Some(got) => prop_assert!(want.contains(&got), "{:?}: got {:?}, expected one of {:?}", req, got, want),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Hosts, paths and queries straight from a client: any string, none
    /// of it may panic (slicing at a non-char boundary, say).
    #[test]
    fn lookup_never_panics_on_odd_input(
        host in prop::option::of("\\PC{0,24}"),
        path in "/?\\PC{0,32}",
        query in prop::option::of("\\PC{0,24}"),
    ) {
        let r = router(&[
            ("wild", with(&["/:a/*"], |r| r.hosts = vec!["*.a.com".into(), "*.b.a.com".into()])),
            ("version", with(&["/x/*"], |r| r.version = Some(version(VersionSource::Path, "v1", true, true)))),
            ("query", with(&["/*"], |r| {
                r.query = vec![header("q", ValueRule::Regex("^.+$".into()))];
                r.version = Some(version(VersionSource::Query, "1", false, true));
            })),
        ]);
        let req = Req { method: Method::GET, host, path, query, headers: HeaderMap::new() };
        if let Some(m) = r.lookup(&req.view()) {
            prop_assert!(m.params(&req.path).count() <= 1);
            prop_assert!(m.strip_len <= req.path.len());
        }
    }
}

#[test]
fn non_ascii_hosts_and_paths_do_not_panic() {
    let r = router(&[("wild", with(&["/*"], |r| r.hosts = vec!["*.a.com".into()]))]);
    for host in [
        "\u{e9}.a.com",
        "x\u{e9}.\u{e9}.a.com",
        "\u{1F600}.",
        ".\u{e9}",
    ] {
        assert_eq!(
            hit(&r, &Req::get("/\u{e9}/x").host(host)).is_some(),
            host.ends_with(".a.com"),
            "{host}"
        );
    }
}

// === patching a table ===

/// Compiles each route once, as the snapshot does, so a route kept from
/// one table to the next keeps its `Matcher`.
fn matchers(routes: &[RouteConfig]) -> Vec<Matcher> {
    let mut regexes = RegexCache::default();
    let mut p = Problems::default();
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Matcher::compile(r, &format!("routes[{i}]"), &mut p, &mut regexes)
                .expect("generated routes compile")
        })
        .collect()
}

/// One edit of a route list: which old routes stay (in order) and where
/// new ones go.
#[derive(Debug, Clone)]
struct Edit {
    keep: Vec<bool>,
    /// (position among the kept routes, route) to insert.
    insert: Vec<(usize, RouteConfig)>,
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    (
        prop::collection::vec(prop::bool::weighted(0.8), 12),
        prop::collection::vec((0usize..12, arb_route()), 0..4),
    )
        .prop_map(|(keep, insert)| Edit { keep, insert })
}

/// Applies `edit` to `(matcher, route)` pairs; new routes get fresh
/// matchers, kept ones keep theirs.
fn apply_edit(old: &[(Matcher, RouteConfig)], edit: &Edit) -> Vec<(Matcher, RouteConfig)> {
    let mut out: Vec<(Matcher, RouteConfig)> = old
        .iter()
        .zip(edit.keep.iter().chain(std::iter::repeat(&true)))
        .filter(|(_, keep)| **keep)
        .map(|(pair, _)| pair.clone())
        .collect();
    for (at, r) in &edit.insert {
        let m = matchers(std::slice::from_ref(r)).remove(0);
        out.insert((*at).min(out.len()), (m, r.clone()));
    }
    out
}

/// What a lookup answered: route index, path index, strip length, params.
type Answer = Option<(usize, usize, usize, Vec<String>)>;

fn answers(r: &Router<usize>, requests: &[Req]) -> Vec<Answer> {
    requests
        .iter()
        .map(|req| {
            r.lookup(&req.view()).map(|m| {
                assert_eq!(*m.value, m.index(), "a value sits at its route's index");
                let params = m
                    .params(&req.path)
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                (m.index(), m.path_index(), m.strip_len, params)
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A table patched through several edits answers every request as a
    /// table built from scratch for the same routes does.
    #[test]
    fn a_patched_table_answers_as_a_fresh_one(
        routes in prop::collection::vec(arb_route(), 0..12),
        edits in prop::collection::vec(arb_edit(), 1..4),
        requests in prop::collection::vec(arb_request(), 1..16),
    ) {
        let mut current: Vec<(Matcher, RouteConfig)> =
            matchers(&routes).into_iter().zip(routes).collect();
        let table = |pairs: &[(Matcher, RouteConfig)]| -> Vec<(Matcher, usize)> {
            pairs.iter().enumerate().map(|(i, (m, _))| (m.clone(), i)).collect()
        };
        let mut patched = Router::from_compiled(table(&current)).expect("builds");
        for edit in &edits {
            current = apply_edit(&current, edit);
            patched = Router::update(&patched, table(&current)).expect("patches");
            let configs: Vec<RouteConfig> = current.iter().map(|(_, r)| r.clone()).collect();
            let fresh = Router::from_compiled(
                matchers(&configs).into_iter().enumerate().map(|(i, m)| (m, i)).collect(),
            )
            .expect("builds");
            prop_assert_eq!(patched.len(), current.len());
            prop_assert_eq!(answers(&patched, &requests), answers(&fresh, &requests));
        }
    }
}

#[test]
fn ranks_fill_gaps_and_refuse_reorders() {
    let rank = |slot: usize| (slot as u64 + 1) * RANK_STEP;
    // Kept 0 and 1 with two new routes between them, one before, one after.
    let r = patch_ranks(&[None, Some(0), None, None, Some(1), None], rank).expect("room");
    assert!(r.windows(2).all(|w| w[0] < w[1]), "{r:?}");
    assert_eq!((r[1], r[4]), (RANK_STEP, 2 * RANK_STEP));
    // Reordered kept routes: no patch.
    assert!(patch_ranks(&[Some(1), Some(0)], rank).is_none());
    // No room left between neighbours: no patch.
    assert!(patch_ranks(&[Some(0), None], |_| u64::MAX).is_none());
    assert!(patch_ranks(&[None, Some(0)], |_| 1).is_none());
}

#[test]
fn many_inserts_at_one_spot_keep_config_order() {
    // Each round puts a new route right after the first: the gap there
    // halves every time until no rank is left and the table is rebuilt;
    // before and after, the later of two equal routes loses.
    let mut configs = vec![route(&["/a"]), route(&["/b"])];
    let mut pairs: Vec<(Matcher, RouteConfig)> = matchers(&configs)
        .into_iter()
        .zip(configs.clone())
        .collect();
    let table = |pairs: &[(Matcher, RouteConfig)]| -> Vec<(Matcher, usize)> {
        pairs
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (m.clone(), i))
            .collect()
    };
    let mut r = Router::from_compiled(table(&pairs)).expect("builds");
    for n in 0..80 {
        let new = route(&[&format!("/n{n}"), "/x"]);
        let m = matchers(std::slice::from_ref(&new)).remove(0);
        pairs.insert(1, (m, new.clone()));
        configs.insert(1, new);
        r = Router::update(&r, table(&pairs)).expect("patches");
        let req = Req::get("/b");
        let got = r.lookup(&req.view()).map(|m| m.index());
        assert_eq!(got, Some(pairs.len() - 1));
        // Every inserted route also matches `/x`: the earliest wins.
        let first = r.lookup(&Req::get("/x").view()).map(|m| m.index());
        assert_eq!(first, Some(1), "round {n}");
    }
    assert_eq!(r.len(), 82);
}
