//! The quickstart from the README works as the tour says, with no other
//! software: weir serves its own echo upstream.

mod common;

use common::weir_bin;
use weir_testsupport::{Gateway, http_client, unused_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_tour() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.yaml"
    ))
    .unwrap();
    // Same file, on ports that cannot collide with anything else.
    let echo = unused_addr().to_string();
    let yaml = src
        .replace("127.0.0.1:9081", &echo)
        .replace("127.0.0.1:9080", "127.0.0.1:0")
        .replace("127.0.0.1:9180", "127.0.0.1:0");
    let gw = Gateway::start(weir_bin(), &yaml)
        .await
        .expect("quickstart starts");
    let c = http_client();

    let r = c.get(gw.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].clone();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["served_by"], "echo");
    assert_eq!(body["headers"]["x-request-id"], rid.to_str().unwrap());
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");

    let body: serde_json::Value = c
        .get(gw.url("/v2/users/7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["path"], "/users/7");
    assert_eq!(body["headers"]["host"], "users-v2.internal");
    let body: serde_json::Value = c
        .get(gw.url("/users/7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["path"], "/users/7");
    assert_ne!(body["headers"]["host"], "users-v2.internal");

    let body: serde_json::Value = c
        .get(gw.url("/hello/x"))
        .header("x-canary", "on")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["headers"]["host"],
        echo.as_str(),
        "the canary route sends the target's address as Host"
    );

    let r = c.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");

    let status: serde_json::Value = c
        .get(gw.admin_url("/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["config"]["routes"], 4);
}
