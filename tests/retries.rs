//! Retries and passive health: what is retried, where, and how failing
//! targets leave rotation.

mod common;

use std::time::Duration;

use common::{gateway, one_upstream};
use weir_testsupport::{Behaviour, Upstream, http_client, unused_addr, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_target_for_any_method() {
    let good = Upstream::start("good").await;
    let dead = unused_addr().to_string();
    // max_fails 0: keep the dead target in rotation so every round hits it.
    let gw = gateway(&one_upstream(
        &[dead, good.target()],
        "    retries: 1\n    passive_health: {max_fails: 0}\n",
    ))
    .await;
    let c = http_client();
    for i in 0..20 {
        // POST with a body: a connect failure never reached the target, so
        // even a non-idempotent request is safe to send elsewhere, body
        // included.
        let resp = c
            .post(gw.url("/sink"))
            .body(vec![b'z'; 10_000])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["received"], 10_000);
    }
    assert_eq!(good.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_on_503_to_a_different_target() {
    let bad = Upstream::start_with("bad", Behaviour::failing(503)).await;
    let good = Upstream::start("good").await;
    let gw = gateway(&one_upstream(
        &[bad.target(), good.target()],
        "    retries: 1\n    passive_health: {max_fails: 0}\n",
    ))
    .await;
    let c = http_client();
    for _ in 0..10 {
        let resp = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "good");
    }
    // Every client request was answered by `good`; those whose first
    // attempt went to `bad` were retried there.
    assert!(bad.hits() >= 1, "round robin never tried `bad`");
    assert_eq!(good.hits(), 10);

    // POST is not idempotent: the 503 goes back to the client.
    bad.reset_stats();
    good.reset_stats();
    let mut failed = 0;
    for _ in 0..4 {
        if c.post(gw.url("/x"))
            .body("b")
            .send()
            .await
            .unwrap()
            .status()
            == 503
        {
            failed += 1;
        }
    }
    assert_eq!(
        failed,
        bad.hits(),
        "every POST that reached `bad` got its 503"
    );
    assert!(failed >= 1);
    assert_eq!(bad.hits() + good.hits(), 4, "no POST was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_by_the_count() {
    let ups = [
        Upstream::start_with("a", Behaviour::failing(502)).await,
        Upstream::start_with("b", Behaviour::failing(502)).await,
        Upstream::start_with("c", Behaviour::failing(502)).await,
        Upstream::start_with("d", Behaviour::failing(502)).await,
    ];
    let targets: Vec<String> = ups.iter().map(|u| u.target()).collect();
    let gw = gateway(&one_upstream(
        &targets,
        "    retries: 2\n    passive_health: {max_fails: 0}\n",
    ))
    .await;
    let resp = http_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let hits: Vec<u64> = ups.iter().map(|u| u.hits()).collect();
    assert_eq!(hits.iter().sum::<u64>(), 3, "1 try + 2 retries: {hits:?}");
    assert!(
        hits.iter().all(|&h| h <= 1),
        "each retry goes to a different target: {hits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries() {
    let bad = Upstream::start_with("bad", Behaviour::failing(503)).await;
    let bad2 = Upstream::start_with("bad2", Behaviour::failing(503)).await;
    // No minimum and a 10% ratio: of 100 failing requests at most ~10 (plus
    // the budget's initial reserve, which the ratio also bounds) retry.
    let gw = gateway(&one_upstream(
        &[bad.target(), bad2.target()],
        "    retries: 1\n    passive_health: {max_fails: 0}\n    retry_budget: {ratio: 0.1, min_per_sec: 0, ttl: 10s}\n",
    ))
    .await;
    let c = http_client();
    for _ in 0..100 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 503);
    }
    let total = bad.hits() + bad2.hits();
    let retries = total - 100;
    assert!(
        retries <= 12,
        "budget allowed {retries} retries for 100 requests"
    );
    assert!(retries >= 1, "the budget allowed no retry at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_target_is_ejected_for_fail_timeout_then_returns() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&one_upstream(
        &[a.target(), b.target()],
        "    retries: 1\n    passive_health: {max_fails: 2, fail_timeout: 3s}\n",
    ))
    .await;
    let c = http_client();
    a.set_behaviour(Behaviour::failing(503));
    // Two failures within fail_timeout take `a` out; every client request
    // still succeeds through the retry.
    for _ in 0..6 {
        let resp = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        a.hits(),
        2,
        "a should leave rotation after max_fails failures"
    );
    // While out, it gets nothing.
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.hits(), 2);
    // It recovers; after fail_timeout it is tried again and stays.
    a.set_behaviour(Behaviour::normal());
    wait_until("a back in rotation", Duration::from_secs(10), || async {
        c.get(gw.url("/x")).send().await.unwrap();
        a.hits() > 2
    })
    .await;
}
