//! The gateway's own answers: JSON errors with the right status and code,
//! and malformed requests that never reach an upstream.

mod common;

use std::time::Duration;

use common::{error_of, gateway, one_upstream};
use weir_testsupport::{Behaviour, RawHttp, Upstream, http_client, unused_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_config_answers_json_404() {
    let gw = gateway("").await;
    let resp = http_client().get(gw.url("/anything")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    let e = error_of(&body);
    assert_eq!(e["status"], 404);
    assert_eq!(e["code"], "no_route");
    assert_eq!(e["request_id"], rid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_id_is_kept_and_echoed() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let resp = http_client()
        .get(gw.url("/x"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert_eq!(up.last_request_headers().unwrap()["x-request-id"], "req-42");
    // Generated when absent, and the same value both ways.
    let resp = http_client().get(gw.url("/x")).send().await.unwrap();
    let rid = resp.headers()["x-request-id"].clone();
    assert_eq!(rid.len(), 32);
    assert_eq!(up.last_request_headers().unwrap()["x-request-id"], rid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_never_reach_upstream() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let addr = gw.proxy_addr();

    // Dot segments could escape the route's path after upstream
    // normalisation.
    let r = RawHttp::exchange(addr, "GET /a/../admin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let body = r.json().unwrap();
    assert_eq!(error_of(&body)["code"], "bad_request");

    // HTTP/1.1 without Host (RFC 9112 §3.2).
    let r = RawHttp::exchange(addr, "GET /a HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);

    // A broken request line and a non-numeric Content-Length are refused
    // by the HTTP parser itself, which answers a bare 400 or just closes.
    for bad in [
        "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "NOT A REQUEST\r\n\r\n",
    ] {
        match RawHttp::exchange(addr, bad).await {
            Ok(r) => assert_eq!(r.status, 400, "{bad:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{bad:?}: {e}"),
        }
    }
    // Request smuggling shape: both Content-Length and chunked. The HTTP
    // parser lets Transfer-Encoding win (RFC 9112 §6.3) and closes the
    // connection after answering, so the request hidden in the "body" is
    // never read as a second request.
    let smuggle = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut raw = RawHttp::connect(addr).await.unwrap();
    raw.send(smuggle).await.unwrap();
    // The first response may or may not make it before the close; no
    // second one ever does.
    if let Ok(first) = raw.read_response().await {
        assert_eq!(first.status, 200);
        assert!(
            raw.read_response().await.is_err(),
            "a second response came back"
        );
    }
    assert_eq!(
        up.hits_for("/smuggled"),
        0,
        "a smuggled request reached the upstream"
    );
    assert!(
        up.hits() <= 1,
        "only the well-framed part of the smuggling attempt may be proxied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let up = Upstream::start("a").await;
    let mut yaml = one_upstream(&[up.target()], "");
    yaml.push_str("settings: {max_body_bytes: 1000}\n");
    let gw = gateway(&yaml).await;
    let c = http_client();

    // Announced length over the limit: refused before the upstream sees it.
    let resp = c
        .post(gw.url("/sink"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "payload_too_large");
    assert_eq!(up.hits(), 0);

    // Chunked, no length: cut off when the limit is crossed.
    let resp = c
        .post(gw.url("/sink"))
        .body(weir_testsupport::upload_body_chunked(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // At the limit it passes.
    let resp = c
        .post(gw.url("/sink"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let up = Upstream::start("a").await;
    let mut yaml = one_upstream(&[up.target()], "");
    yaml.push_str("settings: {max_header_bytes: 4096}\n");
    let gw = gateway(&yaml).await;
    let resp = http_client()
        .get(gw.url("/x"))
        .header("x-big", "v".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "headers_too_large");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_targets_give_502() {
    let gw = gateway(&one_upstream(
        &[unused_addr().to_string(), unused_addr().to_string()],
        "    retries: 1\n",
    ))
    .await;
    let resp = http_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "upstream_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_targets_out_gives_503() {
    let gw = gateway(&one_upstream(
        &[unused_addr().to_string()],
        "    retries: 0\n    passive_health: {max_fails: 1, fail_timeout: 60s}\n",
    ))
    .await;
    let c = http_client();
    // The first failure takes the only target out ...
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 502);
    // ... so the next request finds no healthy target.
    let resp = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "no_healthy_upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504() {
    let up = Upstream::start_with(
        "slow",
        Behaviour::normal().with_delay(Duration::from_secs(5)),
    )
    .await;
    let gw = gateway(&one_upstream(
        &[up.target()],
        "    retries: 0\n    timeouts: {read: 300ms}\n",
    ))
    .await;
    let resp = http_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    let e = error_of(&body);
    assert_eq!(e["code"], "upstream_timeout");
    assert!(
        e["message"].as_str().unwrap().contains("read timeout"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_bounds_retries() {
    let a = Upstream::start_with("a", Behaviour::normal().with_delay(Duration::from_secs(5))).await;
    let b = Upstream::start_with("b", Behaviour::normal().with_delay(Duration::from_secs(5))).await;
    let gw = gateway(&one_upstream(
        &[a.target(), b.target()],
        "    retries: 1\n    timeouts: {read: 400ms, total: 600ms}\n    passive_health: {max_fails: 0}\n",
    ))
    .await;
    let started = std::time::Instant::now();
    let resp = http_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        error_of(&body)["message"]
            .as_str()
            .unwrap()
            .contains("total timeout"),
        "{body}"
    );
    // Both targets were tried, and the whole thing stopped at the total
    // timeout rather than after two full read timeouts.
    assert_eq!(a.hits() + b.hits(), 2);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stalls_mid_body_gets_408() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(
        &[up.target()],
        "    timeouts: {send: 300ms}\n",
    ))
    .await;
    let mut raw = RawHttp::connect(gw.proxy_addr()).await.unwrap();
    raw.send("POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let r = raw.read_response().await.unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(error_of(&r.json().unwrap())["code"], "request_timeout");
}
