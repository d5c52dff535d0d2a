//! `store: redis` on `limit-count` (ADR 0034) with real `weir` processes
//! and a real `redis-server` on loopback: three nodes sharing a limit
//! through Redis hold L per window within [0.99 L, L] with 2 L offered
//! evenly and skewed (credit), and exactly L with `sync: per_request`;
//! a Redis that is killed or stalled mid-load costs no failed request and
//! at most 50 ms of p99 (credit), and is counted in again within 1 s of
//! answering; a per-request limit with a stalled Redis waits its bounded
//! response timeout, never hangs; a limit with `store: redis` and no
//! `redis:` section is refused by name.

mod common;

use std::time::{Duration, Instant};

use common::weir_bin;
use common::windows::{measure, metrics, series};
use weir_chaos::{Cluster, ClusterSpec};
use weir_testsupport::{Gateway, RedisServer, Upstream, assert_rejected, http_client, wait_until};

/// Generous for starting processes on a busy two-core machine.
const CONVERGE: Duration = Duration::from_secs(60);
/// The limit per window of the accuracy tests.
const L: u64 = 300;
/// Their window, in seconds.
const WINDOW_S: u64 = 4;

fn redis_section(redis: &RedisServer) -> String {
    format!(
        "redis:\n  urls: [\"{}\"]\n  connection_timeout: 100ms\n  response_timeout: 100ms\n",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_a_limit_through_redis_by_credit_and_per_request() {
    let redis = RedisServer::start().expect("redis starts");
    let up = Upstream::start("a").await;
    let config = format!(
        "{}upstreams: [{{id: u, targets: [{{addr: \"{}\"}}]}}]
routes:
  - id: credit
    paths: [/credit]
    upstream: u
    plugins:
      limit-count: {{count: {L}, time_window: {WINDOW_S}s, key: [route], store: redis}}
  - id: exact
    paths: [/exact]
    upstream: u
    plugins:
      limit-count: {{count: {L}, time_window: 1h, key: [route], store: redis, sync: per_request}}
",
        redis_section(&redis),
        up.target()
    );
    let c = Cluster::start(weir_bin(), ClusterSpec::new(3).config(config))
        .await
        .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    let urls =
        |path: &str| -> Vec<String> { (0..3).map(|i| c.node(i).gateway().url(path)).collect() };

    let credit = urls("/credit");
    let even = measure(WINDOW_S, &credit, &[200, 200, 200]).await;
    assert_within(
        &format!("credit, 2 L spread evenly {even:?}"),
        even.iter().sum(),
    );
    let skewed = measure(WINDOW_S, &credit, &[540, 30, 30]).await;
    assert_within(
        &format!("credit, 2 L with 90% on node 0 {skewed:?}"),
        skewed.iter().sum(),
    );

    // Per request: every request asks Redis, so the count is exact even
    // with all nodes racing for the last units.
    let exact = urls("/exact");
    let mut tasks = Vec::new();
    for url in &exact {
        for _ in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let client = http_client();
                let mut admitted = 0u64;
                for _ in 0..50 {
                    let s = client
                        .get(&url)
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    assert!(s == 200 || s == 429, "answered {s}: never a failed request");
                    admitted += u64::from(s == 200);
                }
                admitted
            }));
        }
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("sender");
    }
    assert_eq!(admitted, L, "per_request admits exactly L of 2 L");

    // The counts were Redis's, and every node said so.
    let keys = redis.command(&["DBSIZE"]).expect("DBSIZE");
    assert_ne!(keys, ":0", "the limits keep their counts in Redis");
    for i in 0..3 {
        let m = metrics(c.node(i).gateway()).await;
        let ok = series(&m, "weir_limit_redis_calls_total{result=\"ok\"}").unwrap_or(0.0);
        assert!(ok > 0.0, "node {i} counted its Redis calls:\n{m}");
        assert_eq!(series(&m, "weir_limit_redis_up"), Some(1.0), "node {i}");
    }
}

fn assert_within(what: &str, admitted: u64) {
    eprintln!("{what}: admitted {admitted} of L = {L}");
    let low = L * 99 / 100;
    assert!(
        (low..=L).contains(&admitted),
        "{what}: admitted {admitted} in one window, want {low}..={L}"
    );
}

/// Sends requests to `url` from four senders, each every 10 ms, for
/// `how_long`; returns every latency. Panics on any answer but 200.
async fn load(url: String, how_long: Duration) -> Vec<Duration> {
    let until = Instant::now() + how_long;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut lat = Vec::new();
            while Instant::now() < until {
                tick.tick().await;
                let t0 = Instant::now();
                let s = client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                lat.push(t0.elapsed());
                assert_eq!(s, 200, "{url}: never a failed request while Redis is down");
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    all
}

fn p99(mut lat: Vec<Duration>) -> Duration {
    assert!(!lat.is_empty());
    lat.sort();
    lat[(lat.len() * 99).div_ceil(100) - 1]
}

/// Sends requests to `url` (as [`load`] does) until `g` shows a Redis
/// call that worked after the `ok_before` it had; returns how long that
/// took.
async fn counted_in_again(
    g: &Gateway,
    url: &str,
    ok_before: f64,
    within: Duration,
    what: &str,
) -> Duration {
    let traffic = tokio::spawn(load(url.to_string(), within + Duration::from_millis(500)));
    let t0 = Instant::now();
    wait_until(what, within, || async {
        let m = metrics(g).await;
        series(&m, "weir_limit_redis_up") == Some(1.0)
            && series(&m, "weir_limit_redis_calls_total{result=\"ok\"}").unwrap_or(0.0) > ok_before
    })
    .await;
    let took = t0.elapsed();
    traffic.await.expect("traffic");
    took
}

async fn redis_ok_calls(g: &Gateway) -> f64 {
    series(
        &metrics(g).await,
        "weir_limit_redis_calls_total{result=\"ok\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_dies_or_stalls_fails_no_request() {
    let mut redis = RedisServer::start().expect("redis starts");
    let up = Upstream::start("a").await;
    // Limits far above the offered rate: every request is admitted, so
    // any other answer is a failure the outage caused. Short windows, so
    // the credit store asks Redis at least twice a second.
    let gw = common::gateway(&format!(
        "{}upstreams: [{{id: u, targets: [{{addr: \"{}\"}}]}}]
routes:
  - id: credit
    paths: [/credit]
    upstream: u
    plugins:
      limit-count: {{count: 100000, time_window: 500ms, key: [route], store: redis}}
  - id: exact
    paths: [/exact]
    upstream: u
    plugins:
      limit-count: {{count: 100000, time_window: 500ms, key: [route], store: redis, sync: per_request}}
",
        redis_section(&redis),
        up.target()
    ))
    .await;
    let credit = gw.url("/credit");

    let healthy = p99(load(credit.clone(), Duration::from_secs(2)).await);
    assert!(
        redis_ok_calls(&gw).await > 0.0,
        "Redis is used while healthy"
    );

    // Killed: the port refuses.
    redis.kill().expect("kill redis");
    let killed = p99(load(credit.clone(), Duration::from_secs(2)).await);
    let m = metrics(&gw).await;
    assert_eq!(
        series(&m, "weir_limit_redis_up"),
        Some(0.0),
        "the outage shows:\n{m}"
    );
    assert!(
        gw.log().contains("Redis call failed"),
        "the outage is logged:\n{}",
        gw.log()
    );
    let ok = redis_ok_calls(&gw).await;
    redis.restart().expect("restart redis");
    let back = counted_in_again(
        &gw,
        &credit,
        ok,
        Duration::from_secs(1),
        "Redis is used again within 1 s of its restart",
    )
    .await;
    eprintln!(
        "credit p99: healthy {healthy:?}, Redis killed {killed:?}; counted in again after {back:?}"
    );

    // Stalled: connections open, nothing answered.
    redis.stall().expect("stall redis");
    let stalled = p99(load(credit.clone(), Duration::from_secs(2)).await);
    let ok = redis_ok_calls(&gw).await;
    redis.resume().expect("resume redis");
    let back = counted_in_again(
        &gw,
        &credit,
        ok,
        Duration::from_secs(1),
        "Redis is used again within 1 s of resuming",
    )
    .await;
    eprintln!("credit p99: Redis stalled {stalled:?}; counted in again after {back:?}");
    let budget = healthy + Duration::from_millis(50);
    assert!(
        killed <= budget,
        "p99 with Redis killed {killed:?} > healthy {healthy:?} + 50 ms"
    );
    assert!(
        stalled <= budget,
        "p99 with Redis stalled {stalled:?} > healthy {healthy:?} + 50 ms"
    );

    // Per request, stalled: a request waits at most the response timeout
    // (100 ms here), and only one per breaker interval per sender does.
    redis.stall().expect("stall redis");
    let lat = load(gw.url("/exact"), Duration::from_secs(2)).await;
    redis.resume().expect("resume redis");
    let worst = lat.iter().max().copied().unwrap_or_default();
    let slow = lat
        .iter()
        .filter(|l| **l >= Duration::from_millis(90))
        .count();
    eprintln!(
        "per_request, Redis stalled: {} requests, {slow} waited the timeout, worst {worst:?}",
        lat.len()
    );
    assert!(
        worst < Duration::from_secs(1),
        "a stalled Redis never hangs a request: {worst:?}"
    );
    assert!(
        slow * 10 <= lat.len(),
        "the breaker spares most requests the wait: {slow} of {}",
        lat.len()
    );
}

#[test]
fn store_redis_without_a_redis_section_is_refused_by_name() {
    assert_rejected(
        weir_bin(),
        "upstreams: [{id: u, targets: [{addr: \"127.0.0.1:1\"}]}]
routes:
  - id: r
    paths: [/r]
    upstream: u
    plugins:
      limit-count: {count: 5, time_window: 1s, store: redis}
",
        &["store", "needs the top-level `redis:` section"],
    );
}
