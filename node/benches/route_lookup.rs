//! Route lookup cost with a large table: 10,000 routes spread over exact
//! hosts, wildcard hosts and no host, with exact, parameterised and
//! wildcard paths, some bound to methods or headers. Each case looks up one
//! request shape; the table is built once.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use weir_node::config::{RouteConfig, ValueMatch, ValueRule, VersionMatch, VersionSource};
use weir_node::router::{RequestView, Router};

const ROUTES: usize = 10_000;

fn table() -> Vec<RouteConfig> {
    let mut routes = Vec::with_capacity(ROUTES + 2);
    for i in 0..ROUTES {
        let hosts = match i % 4 {
            1 => vec![format!("svc{}.example.com", i % 200)],
            2 => vec![format!("*.t{}.example.net", i % 50)],
            _ => Vec::new(),
        };
        let path = match i % 3 {
            0 => format!("/api/r{i}/items"),
            1 => format!("/api/r{i}/users/:id"),
            _ => format!("/static/r{i}/*"),
        };
        let methods = if i % 5 == 0 {
            vec!["GET".to_string(), "HEAD".to_string()]
        } else {
            Vec::new()
        };
        let headers = if i % 7 == 0 {
            vec![ValueMatch {
                name: "x-tenant".into(),
                rule: ValueRule::Regex("^t[0-9]+$".into()),
            }]
        } else {
            Vec::new()
        };
        routes.push(RouteConfig {
            id: format!("r{i}"),
            hosts,
            paths: vec![path],
            methods,
            headers,
            upstream: Some("u".into()),
            ..RouteConfig::default()
        });
    }
    // A backtracking pair: the exact path only takes POST, so a GET falls
    // back to the parameter route.
    routes.push(RouteConfig {
        id: "me".into(),
        paths: vec!["/accounts/me".into()],
        methods: vec!["POST".into()],
        upstream: Some("u".into()),
        ..RouteConfig::default()
    });
    routes.push(RouteConfig {
        id: "account".into(),
        paths: vec!["/accounts/:id".into()],
        upstream: Some("u".into()),
        ..RouteConfig::default()
    });
    routes.push(RouteConfig {
        id: "v2".into(),
        paths: vec!["/orders/*".into()],
        version: Some(VersionMatch {
            value: "v2".into(),
            from: VersionSource::Path,
            name: None,
            strip: true,
            default: false,
        }),
        upstream: Some("u".into()),
        ..RouteConfig::default()
    });
    routes
}

struct Case {
    name: &'static str,
    method: Method,
    host: Option<&'static str>,
    path: String,
    headers: HeaderMap,
    /// Expected route id, checked once before measuring.
    want: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let mut tenant = HeaderMap::new();
    tenant.insert("x-tenant", HeaderValue::from_static("t42"));
    vec![
        Case {
            name: "hit_exact_any_host",
            method: Method::GET,
            host: Some("unknown.org"),
            path: "/api/r3/items".into(),
            headers: HeaderMap::new(),
            want: Some("r3"),
        },
        Case {
            name: "hit_param_exact_host",
            method: Method::GET,
            host: Some("svc9.example.com"),
            path: "/api/r9409/users/12345".into(),
            headers: HeaderMap::new(),
            want: Some("r9409"),
        },
        Case {
            name: "hit_wildcard_wildcard_host",
            method: Method::GET,
            host: Some("a.b.t38.example.net"),
            path: "/static/r5438/css/site/main.css".into(),
            headers: HeaderMap::new(),
            want: Some("r5438"),
        },
        Case {
            name: "hit_regex_header",
            method: Method::GET,
            host: None,
            path: "/api/r7000/users/1".into(),
            headers: tenant,
            want: Some("r7000"),
        },
        Case {
            name: "hit_backtrack_to_param",
            method: Method::GET,
            host: Some("svc1.example.com"),
            path: "/accounts/me".into(),
            headers: HeaderMap::new(),
            want: Some("account"),
        },
        Case {
            name: "hit_path_version",
            method: Method::GET,
            host: None,
            path: "/v2/orders/17/lines".into(),
            headers: HeaderMap::new(),
            want: Some("v2"),
        },
        Case {
            name: "miss",
            method: Method::GET,
            host: Some("svc3.example.com"),
            path: "/api/r99999/users/1".into(),
            headers: HeaderMap::new(),
            want: None,
        },
    ]
}

fn bench(c: &mut Criterion) {
    let configs = table();
    let ids: Vec<&str> = configs.iter().map(|r| r.id.as_str()).collect();
    let router = match Router::build(configs.iter().zip(ids).collect()) {
        Ok(r) => r,
        Err(e) => panic!("bench table must build: {e}"),
    };
    assert_eq!(router.len(), ROUTES + 3);

    let mut group = c.benchmark_group("route_lookup_10k");
    for case in cases() {
        let view = RequestView {
            method: &case.method,
            host: case.host,
            path: &case.path,
            query: None,
            headers: &case.headers,
        };
        let got = router.lookup(&view).map(|m| *m.value);
        assert_eq!(got, case.want, "{}", case.name);
        group.bench_function(case.name, |b| {
            b.iter(|| router.lookup(black_box(&view)).map(|m| m.strip_len))
        });
    }
    group.finish();

    c.bench_function("route_build_10k", |b| {
        b.iter(|| Router::build(configs.iter().map(|r| (r, ())).collect()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
