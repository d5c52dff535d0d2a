//! The plugin pipeline through a real gateway: placement (global, service,
//! route; the most specific wins), the response phases on upstream and
//! gateway answers, config errors at load and on reload, and the consumer
//! headers only the gateway may set.

mod common;

use std::time::Duration;

use common::{error_of, gateway, rejected};
use serde_json::json;
use weir_testsupport::{Gateway, GatewayConfig, Route, Service, Upstream, http_client, wait_until};

/// `response-rewrite` setting `x-level: level`.
fn level(level: &str) -> serde_json::Value {
    json!({"headers": {"set": {"x-level": level}}})
}

/// Upstream `u`, service `svc` setting `x-level: service`, and the routes
/// `plain` (no plugin), `via-service` and `own`, whose own plugin sets
/// `x-level: own_level` over the service's.
fn config(target: &str, own_level: &str) -> GatewayConfig {
    GatewayConfig::new()
        .upstream("u", target)
        .service(Service::new("svc", "u").plugin("response-rewrite", level("service")))
        .route(Route::new("plain", "/plain").upstream("u"))
        .route(Route::new("via-service", "/svc").service("svc"))
        .route(Route::new("own", "/own").service("svc").plugin(
            "response-rewrite",
            json!({"headers": {
                "set": {"x-level": own_level},
                "add": {"x-extra": "one"},
                "remove": ["x-upstream"],
            }}),
        ))
}

#[tokio::test]
async fn most_specific_level_wins() {
    let up = Upstream::start("a").await;
    let yaml = config(&up.target(), "route")
        .plugin("response-rewrite", level("global"))
        .to_yaml();
    let gw = gateway(&yaml).await;
    let c = http_client();

    let r = c.get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-level"], "global");

    let r = c.get(gw.url("/svc")).send().await.unwrap();
    assert_eq!(r.headers()["x-level"], "service");

    let r = c.get(gw.url("/own")).send().await.unwrap();
    assert_eq!(r.headers()["x-level"], "route");
    assert_eq!(r.headers()["x-extra"], "one");
    assert!(r.headers().get("x-upstream").is_none());
    // The upstream body still streams through the chain untouched.
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/own");

    // A 404 matches no route, so no route's plugins run on it.
    let r = c.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("x-level").is_none());
}

#[tokio::test]
async fn fixed_status_and_body_replace_the_upstream_answer() {
    let up = Upstream::start("a").await;
    let yaml = config(&up.target(), "route")
        .upstream_spec("{id: gone, targets: [{addr: \"127.0.0.1:1\"}], retries: 0}")
        .route(Route::new("mock", "/mock").upstream("u").plugin(
            "response-rewrite",
            "{status: 201, body: '{\"mocked\":true}', headers: {set: {content-type: application/json}}}",
        ))
        .route(Route::new("dead", "/dead").upstream("gone").plugin(
            "response-rewrite",
            "{headers: {set: {x-seen: 'yes'}}}",
        ))
        .to_yaml();
    let gw = gateway(&yaml).await;
    let c = http_client();

    let r = c.get(gw.url("/mock")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-length"], "15");
    assert_eq!(r.text().await.unwrap(), "{\"mocked\":true}");

    // The response phase also runs on the gateway's own error answers.
    let r = c.get(gw.url("/dead")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-seen"], "yes");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "upstream_error");
}

#[tokio::test]
async fn consumer_headers_from_the_client_never_reach_the_upstream() {
    let up = Upstream::start("a").await;
    let gw = gateway(&config(&up.target(), "route").to_yaml()).await;
    let c = http_client();
    for path in ["/plain", "/own"] {
        let r = c
            .get(gw.url(path))
            .header("x-consumer-name", "admin")
            .header("x-consumer-groups", "root")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["headers"].get("x-consumer-name").is_none(), "{body}");
        assert!(body["headers"].get("x-consumer-groups").is_none(), "{body}");
    }
}

#[test]
fn validate_names_plugin_field_and_reason() {
    rejected(
        "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
plugins:
  no-such-plugin: {}
routes:
  - id: a
    paths: [/a]
    upstream: u
  - id: b
    paths: [/b]
    upstream: u
  - id: c
    paths: [/c]
    upstream: u
    plugins:
      response-rewrite: {status: 999, headers: {set: {'bad header': x}}, colour: red}
  - id: d
    paths: [/d]
    upstream: u
    plugins:
      response-rewrite: {status: 99, headers: {set: {'bad header': x}}}
",
        &[
            "plugins.no-such-plugin: unknown plugin `no-such-plugin`",
            "routes[2].plugins.response-rewrite.colour: unknown field `colour`",
            "routes[3].plugins.response-rewrite.status: 99 is not a status",
            "routes[3].plugins.response-rewrite.headers.set.bad header: `bad header` is not a valid header name",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugin_config_on_reload_keeps_the_running_config() {
    let up = Upstream::start("a").await;
    let gw = gateway(&config(&up.target(), "route").to_yaml()).await;
    let c = http_client();
    let bad = config(&up.target(), "bad\nvalue").to_yaml();
    gw.rewrite_config(&Gateway::config(&bad)).unwrap();
    wait_until(
        "the rejection is logged",
        Duration::from_secs(10),
        || async { gw.log().contains("config rejected") },
    )
    .await;
    assert!(
        gw.log()
            .contains("routes[2].plugins.response-rewrite.headers.set.x-level"),
        "{}",
        gw.log()
    );
    let r = c.get(gw.url("/own")).send().await.unwrap();
    assert_eq!(r.headers()["x-level"], "route");

    // A good change is applied again.
    gw.rewrite_config(&Gateway::config(&config(&up.target(), "route2").to_yaml()))
        .unwrap();
    wait_until("the new config serves", Duration::from_secs(10), || async {
        let r = c.get(gw.url("/own")).send().await.unwrap();
        r.headers()["x-level"] == "route2"
    })
    .await;
}

#[tokio::test]
async fn disable_plugins_switches_off_wider_ones() {
    let up = Upstream::start("a").await;
    let yaml = GatewayConfig::new()
        .plugin("response-rewrite", level("global"))
        .plugin(
            "proxy-rewrite",
            "{headers: {set: {x-global-rewrite: 'yes'}}}",
        )
        .upstream("u", up.target())
        .service(Service::new("svc", "u").plugin("response-rewrite", level("service")))
        .service(Service::new("quiet", "u").set("disable_plugins", "[response-rewrite]"))
        .route(Route::new("plain", "/plain").upstream("u"))
        .route(
            Route::new("route-off", "/route-off")
                .upstream("u")
                .set("disable_plugins", "[response-rewrite, proxy-rewrite]"),
        )
        .route(
            Route::new("service-plugin-off", "/svc-off")
                .service("svc")
                .set("disable_plugins", "[response-rewrite]"),
        )
        .route(Route::new("quiet-service", "/quiet").service("quiet"))
        .route(
            Route::new("quiet-but-own", "/quiet-own")
                .service("quiet")
                .plugin("response-rewrite", level("route")),
        )
        .to_yaml();
    let gw = gateway(&yaml).await;
    let c = http_client();
    // (path, x-level answered, whether proxy-rewrite ran)
    for (path, level, rewrite) in [
        ("/plain", Some("global"), true),
        ("/route-off", None, false),
        ("/svc-off", None, true),
        ("/quiet", None, true),
        ("/quiet-own", Some("route"), true),
    ] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers().get("x-level").map(|v| v.to_str().unwrap()),
            level,
            "{path}"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["headers"].get("x-global-rewrite").is_some(),
            rewrite,
            "{path}: {body}"
        );
    }
}

#[test]
fn disable_plugins_names_are_checked() {
    rejected(
        "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
services:
  - id: s
    upstream: u
    disable_plugins: [corz]
routes:
  - id: a
    paths: [/a]
    upstream: u
    disable_plugins: [cors, no-such-plugin, cors]
  - id: b
    paths: [/b]
    upstream: u
    plugins:
      cors: {allow_origins: ['*']}
    disable_plugins: [cors]
",
        &[
            "services[0].disable_plugins[0]: unknown plugin `corz`; known:",
            "routes[0].disable_plugins[1]: unknown plugin `no-such-plugin`",
            "routes[0].disable_plugins[2]: `cors` is listed twice",
            "routes[1].disable_plugins[0]: `cors` is also set in `routes[1].plugins`",
        ],
    );
}
