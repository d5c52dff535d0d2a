//! API lifecycle (deprecated headers, retired 410) and subscriptions
//! through a real gateway.

mod common;

use common::{error_of, gateway, rejected, sha_hex};
use weir_testsupport::{Consumer, GatewayConfig, Route, Service, Upstream, http_client};

fn config(target: &str) -> String {
    let consumers = ["alice", "bob", "carol", "dave", "erin", "frank"]
        .into_iter()
        .map(|name| Consumer::new(name).key_auth(&[&sha_hex(&key(name))]));
    consumers
        .fold(GatewayConfig::new().upstream("u", target), GatewayConfig::consumer)
        .set(
            "subscriptions",
            "
- {consumer: alice, route: orders, state: approved}
- {consumer: bob, route: orders, state: requested}
- {consumer: carol, route: orders, state: rejected}
- {consumer: dave, route: orders, state: revoked}
- {consumer: erin, service: billing, state: approved}
- {consumer: frank, route: invoices, state: revoked}
- {consumer: frank, service: billing, state: approved}
",
        )
        .service(
            Service::new("billing", "u")
                .set("require_subscription", "true")
                .plugin("key-auth", "{}")
                .set(
                    "lifecycle",
                    "{status: deprecated, deprecated_at: '2026-01-01T00:00:00Z', \
                     sunset: '2027-06-30T12:00:00Z', successor: 'https://api.example.com/v2/billing'}",
                ),
        )
        .route(
            Route::new("orders", "/orders")
                .upstream("u")
                .set("require_subscription", "true")
                .plugin("key-auth", "{}"),
        )
        .route(Route::new("invoices", "/invoices").service("billing"))
        .route(
            Route::new("invoices-v2", "/v2/invoices")
                .service("billing")
                .set("lifecycle", "{status: published}")
                .set("require_subscription", "false"),
        )
        .route(
            Route::new("old", "/old/*")
                .upstream("u")
                .plugin("key-auth", "{}")
                .set(
                    "lifecycle",
                    "{status: retired, deprecated_at: '2025-01-01T00:00:00Z', \
                     sunset: '2025-12-31T00:00:00Z', successor: /v2/orders}",
                ),
        )
        .to_yaml()
}

fn key(name: &str) -> String {
    format!("{name}-key-0000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_and_retired_apis() {
    let up = Upstream::start("a").await;
    let gw = gateway(&config(&up.target())).await;
    let c = http_client();

    // Inherited from the service.
    let r = c
        .get(gw.url("/invoices"))
        .header("apikey", key("erin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["deprecation"], "@1767225600");
    assert_eq!(r.headers()["sunset"], "Wed, 30 Jun 2027 12:00:00 GMT");
    assert_eq!(
        r.headers()["link"],
        "<https://api.example.com/v2/billing>; rel=\"successor-version\""
    );
    // Even a refusal carries them: the client learns of the deprecation.
    let r = c.get(gw.url("/invoices")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["deprecation"], "@1767225600");

    // The route overrides its service: published, no subscription needed.
    let r = c
        .get(gw.url("/v2/invoices"))
        .header("apikey", key("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("deprecation").is_none());
    assert!(r.headers().get("sunset").is_none());

    // Retired: 410 before any credential check; the upstream is never called.
    let before = up.hits();
    let r = c
        .post(gw.url("/old/x"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(
        r.headers()["link"],
        "</v2/orders>; rel=\"successor-version\""
    );
    assert_eq!(r.headers()["sunset"], "Wed, 31 Dec 2025 00:00:00 GMT");
    let body: serde_json::Value = r.json().await.unwrap();
    let e = error_of(&body);
    assert_eq!(e["status"], 410);
    assert_eq!(e["code"], "api_retired");
    assert_eq!(e["successor"], "/v2/orders");
    assert_eq!(up.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_approved_subscriptions_pass() {
    let up = Upstream::start("a").await;
    let gw = gateway(&config(&up.target())).await;
    let c = http_client();
    let get = |path: &str, who: &str| c.get(gw.url(path)).header("apikey", key(who)).send();

    assert_eq!(get("/orders", "alice").await.unwrap().status(), 200);
    for who in ["bob", "carol", "dave", "erin"] {
        let r = get("/orders", who).await.unwrap();
        assert_eq!(r.status(), 403, "{who}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error_of(&body)["code"], "subscription_required", "{who}");
    }
    // No credential: 401 from key-auth before the subscription check.
    assert_eq!(c.get(gw.url("/orders")).send().await.unwrap().status(), 401);

    // A service subscription covers its routes; a revoked route
    // subscription does not cancel an approved service one.
    assert_eq!(get("/invoices", "erin").await.unwrap().status(), 200);
    assert_eq!(get("/invoices", "frank").await.unwrap().status(), 200);
    assert_eq!(get("/invoices", "alice").await.unwrap().status(), 403);
}

#[test]
fn governance_config_errors() {
    let yaml = "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
consumers: [{name: alice}]
subscriptions:
  - {consumer: nobody, route: r, state: approved}
  - {consumer: alice, route: missing, state: approved}
  - {consumer: alice, route: r, service: s, state: approved}
  - {consumer: alice, route: r, state: maybe}
routes:
  - id: r
    paths: [/]
    upstream: u
    require_subscription: true
    lifecycle: {status: deprecated, sunset: 'next tuesday'}
";
    // An unknown enum value stops parsing before the other checks.
    rejected(yaml, &["subscriptions[3].state: unknown variant `maybe`"]);

    rejected(
        &yaml.replace("  - {consumer: alice, route: r, state: maybe}\n", ""),
        &[
            "subscriptions[0].consumer: no consumer named `nobody`",
            "subscriptions[1].route: no route with id `missing`",
            "subscriptions[2]: set exactly one of `route`, `service`",
            "routes[0].require_subscription: needs an auth plugin",
            "routes[0].lifecycle.sunset: `next tuesday` is not an RFC 3339 time",
            "routes[0].lifecycle.deprecated_at: a deprecated API needs the date",
        ],
    );
}
