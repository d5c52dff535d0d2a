//! Rate and concurrency limits through a real gateway and upstream:
//! admitted counts, bursts, delay mode, in-flight caps, the `RateLimit-*`
//! headers and the 429 answer, and the adaptive limit following a
//! slowing-down upstream.

mod common;

use std::time::{Duration, Instant};

use common::{error_of, gateway, rejected, sha_hex};
use weir_testsupport::{
    Behaviour, Consumer, Gate, GatewayConfig, Route, Script, ScriptedUpstream, Upstream,
    concurrently, count, http_client, statuses, statuses_during, until_status, wait_for,
    wait_until,
};

/// One upstream `u` at `target` and `routes` to it.
fn config(target: &str, routes: impl IntoIterator<Item = Route>) -> String {
    routes
        .into_iter()
        .fold(
            GatewayConfig::new().upstream("u", target),
            GatewayConfig::route,
        )
        .to_yaml()
}

/// A route on `path` to upstream `u` with one plugin, named after the
/// path's first segment (`/c/*` is route `c`).
fn limited(path: &str, plugin: &str, plugin_config: &str) -> Route {
    let id = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    Route::new(id, path)
        .upstream("u")
        .plugin(plugin, plugin_config)
}

/// Sends `n` GETs of `url` at once; their statuses and JSON bodies.
async fn batch(c: &reqwest::Client, url: &str, n: usize) -> Vec<(u16, serde_json::Value)> {
    concurrently(n, || {
        let request = c.get(url);
        async move {
            let r = request.send().await.unwrap();
            let s = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (s, body)
        }
    })
    .await
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn limit_count_headers_and_429() {
    let up = Upstream::start("a").await;
    let routes = [
        limited(
            "/counted",
            "limit-count",
            "{count: 3, time_window: 60s, key: [route]}",
        ),
        limited(
            "/quiet",
            "limit-count",
            "{count: 1, time_window: 60s, headers: false}",
        ),
    ];
    let gw = gateway(&config(&up.target(), routes)).await;
    let c = http_client();
    for left in ["2", "1", "0"] {
        let r = c.get(gw.url("/counted")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some(left));
        let reset: u64 = header(&r, "ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let r = c.get(gw.url("/counted")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("3"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "rate_limited");
    assert_eq!(up.hits_for("/counted"), 3);

    // `headers: false`: admitted answers carry none, rejections still do.
    let r = c.get(gw.url("/quiet")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "ratelimit-limit").is_none());
    let r = c.get(gw.url("/quiet")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(header(&r, "ratelimit-limit").is_some());
}

#[tokio::test]
async fn limit_count_keys_apart_and_sliding_window() {
    let up = Upstream::start("a").await;
    let route = limited(
        "/s",
        "limit-count",
        "{count: 10, time_window: 60s, policy: sliding, key: [route, 'header:x-user']}",
    );
    let gw = gateway(&config(&up.target(), [route])).await;
    let c = http_client();
    for user in ["alice", "bob"] {
        let got = statuses(15, || c.get(gw.url("/s")).header("x-user", user)).await;
        assert!(
            got.iter().all(|&s| s == 200 || s == 429),
            "unexpected status in {got:?}"
        );
        // Windows start at a key's first request: the whole run sits in one.
        assert_eq!(count(&got, 200), 10, "admitted for {user}");
    }
}

/// Over several short windows, never more than `count` per window the run
/// touched, and the first window exactly `count`.
#[tokio::test]
async fn fixed_window_admitted_count_over_time() {
    let up = Upstream::start("a").await;
    let route = limited(
        "/f",
        "limit-count",
        "{count: 4, time_window: 1s, key: [route]}",
    );
    let gw = gateway(&config(&up.target(), [route])).await;
    let c = http_client();
    let start = Instant::now();
    let statuses = statuses_during(Duration::from_millis(2500), || c.get(gw.url("/f"))).await;
    let span = start.elapsed();
    let ok = count(&statuses, 200) as u64;
    assert!(statuses.iter().all(|&s| s == 200 || s == 429));
    assert_eq!(&statuses[..4], [200; 4]);
    let windows = span.as_secs() + 1;
    assert!(ok <= 4 * windows, "{ok} admitted in {span:?}");
    assert_eq!(up.hits_for("/f"), ok);
}

#[tokio::test]
async fn limit_req_burst_then_rate() {
    let up = Upstream::start("a").await;
    let route = limited("/b", "limit-req", "{rate: 2, burst: 4, key: [route]}");
    let gw = gateway(&config(&up.target(), [route])).await;
    let c = http_client();
    let start = Instant::now();
    let mut ok = 0u64;
    let mut first_429 = None;
    for i in 0..12 {
        let r = c.get(gw.url("/b")).send().await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                if first_429.is_none() {
                    first_429 = Some(i);
                    assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("4"));
                    let body: serde_json::Value = r.json().await.unwrap();
                    assert_eq!(error_of(&body)["code"], "rate_limited");
                }
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let span = start.elapsed().as_secs_f64();
    // The whole burst at once, then at most the refill of the elapsed time.
    assert!(ok >= 4, "{ok} admitted");
    assert!(
        ok as f64 <= 4.0 + (span * 2.0).ceil(),
        "{ok} admitted in {span}s"
    );
    assert!(first_429.is_some(), "no rejection in {span}s");
}

#[tokio::test]
async fn limit_req_delay_mode_queues_instead_of_rejecting() {
    let up = Upstream::start("a").await;
    let route = limited(
        "/d",
        "limit-req",
        "{rate: 2, burst: 2, delay: true, key: [route]}",
    );
    let gw = gateway(&config(&up.target(), [route])).await;
    let c = http_client();
    let start = Instant::now();
    let done = concurrently(6, || {
        let request = c.get(gw.url("/d"));
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), Instant::now())
        }
    })
    .await;
    let admitted: Vec<_> = done
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| *t)
        .collect();
    assert!(done.iter().all(|(s, _)| *s == 200 || *s == 429));
    // One at once plus two queued, spaced 0.5 s apart: the third admitted
    // cannot leave before 1 s.
    assert!(admitted.len() >= 3, "{} admitted", admitted.len());
    let last = admitted.iter().max().unwrap().duration_since(start);
    assert!(
        last >= Duration::from_millis(990),
        "last admitted after {last:?}"
    );
    // Nothing beyond the queue and the rate of the elapsed time.
    let span = start.elapsed().as_secs_f64();
    assert!(admitted.len() as f64 <= 3.0 + (span * 2.0).ceil());
}

#[tokio::test]
async fn limit_conn_caps_requests_in_flight() {
    let up = Upstream::start("a").await;
    let route = limited("/c/*", "limit-conn", "{max: 2, key: [route]}");
    let gw = gateway(&config(&up.target(), [route])).await;
    let c = http_client();
    let done = batch(&c, &gw.url("/c/slow/3000"), 6).await;
    let mut statuses = Vec::new();
    for (s, body) in done {
        if s == 429 {
            assert_eq!(error_of(&body)["code"], "rate_limited");
        }
        statuses.push(s);
    }
    assert!(
        up.max_concurrent() <= 2,
        "{} at once upstream",
        up.max_concurrent()
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() >= 2,
        "{statuses:?}"
    );
    // Places are given back when the bodies end.
    let r = c.get(gw.url("/c/fast")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The upstream slows down: the limit falls and excess requests get 503
/// `overloaded`; it speeds up again: the limit recovers.
#[tokio::test]
async fn adaptive_concurrency_follows_upstream_latency() {
    let up = Upstream::start("a").await;
    let route = limited(
        "/a",
        "adaptive-concurrency",
        "{initial_limit: 10, min_limit: 1, max_limit: 50, backoff: 0.5, slack: 400ms}",
    );
    let gw = gateway(&config(&up.target(), [route])).await;
    let c = http_client();
    let url = gw.url("/a");
    let send_batch = |n: usize| batch(&c, &url, n);
    // Fast: a batch under the initial limit all passes. The slack (400 ms)
    // absorbs scheduling stalls of a loaded machine; the slow phase (2 s)
    // is far past it.
    for _ in 0..3 {
        assert!(send_batch(8).await.iter().all(|(s, _)| *s == 200));
    }
    up.set_behaviour(Behaviour::normal().with_delay(Duration::from_millis(2000)));
    let overloaded = wait_for("a 503 overloaded", Duration::from_secs(60), || async {
        let out = send_batch(12).await;
        out.iter().find(|(s, _)| *s == 503).map(|(_, b)| b.clone())
    })
    .await;
    assert_eq!(error_of(&overloaded)["code"], "overloaded");
    let peak_slow = up.max_concurrent();
    assert!(peak_slow <= 12);

    up.set_behaviour(Behaviour::normal());
    wait_until("the limit to recover", Duration::from_secs(60), || async {
        send_batch(8).await.iter().all(|(s, _)| *s == 200)
    })
    .await;
}

#[test]
fn validate_names_limit_fields() {
    rejected(
        "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
consumers:
  - name: c
    plugins:
      key-auth: {}
      limit-count: {count: 0, time_window: 60s}
routes:
  - id: a
    paths: [/a]
    upstream: u
    plugins:
      limit-count: {count: 0, time_window: 60s, key: [ip], rejected_code: 200}
      limit-req: {rate: -1}
      limit-conn: {max: 1, colour: red}
      adaptive-concurrency: {backoff: 2}
",
        &[
            "routes[0].plugins.limit-count.count: must be at least 1",
            "routes[0].plugins.limit-count.key[0]: unknown key part `ip`",
            "routes[0].plugins.limit-count.rejected_code: 200 is not a status between 400 and 599",
            "routes[0].plugins.limit-req.rate: must be between",
            "routes[0].plugins.limit-conn.colour: unknown field `colour`",
            "consumers[0].plugins.key-auth: `key-auth` cannot be set on a consumer; only limit-count, limit-req, limit-conn can",
            "consumers[0].plugins.limit-count.count: must be at least 1",
            "routes[0].plugins.adaptive-concurrency.backoff: must be between 0.5 and 0.99",
        ],
    );
}

/// Sends `n` requests with `key` one after the other; the statuses.
async fn with_key(c: &reqwest::Client, url: &str, key: &str, n: usize) -> Vec<u16> {
    statuses(n, || c.get(url).header("apikey", key)).await
}

/// A consumer's own `limit-count`, `limit-req` and `limit-conn` win over
/// the route's, higher or lower; a consumer without one gets the route's.
/// Windows of an hour and a bucket refilling once in 1000 s make the
/// counts exact on any machine.
#[tokio::test]
async fn a_consumers_own_limits_win_over_the_routes() {
    let up = Upstream::start("a").await;
    let held = ScriptedUpstream::start().await;
    let keyed = |id: &str, path: &str, upstream: &str| {
        Route::new(id, path)
            .upstream(upstream)
            .plugin("key-auth", "{}")
    };
    let yaml = GatewayConfig::new()
        .upstream("u", up.target())
        .upstream("held", held.target())
        .consumer(
            Consumer::new("gold")
                .key_auth(&[&sha_hex("gold-key")])
                .plugin("limit-count", "{count: 5, time_window: 1h}")
                .plugin("limit-req", "{rate: 0.001, burst: 4}")
                .plugin("limit-conn", "{max: 3}"),
        )
        .consumer(Consumer::new("plain").key_auth(&[&sha_hex("plain-key")]))
        .consumer(
            Consumer::new("tight")
                .key_auth(&[&sha_hex("tight-key")])
                .plugin("limit-count", "{count: 1, time_window: 1h}"),
        )
        .route(keyed("count", "/count", "u").plugin(
            "limit-count",
            "{count: 2, time_window: 1h, key: [consumer]}",
        ))
        .route(keyed("count2", "/count2", "u").plugin(
            "limit-count",
            "{count: 2, time_window: 1h, key: [consumer]}",
        ))
        .route(
            keyed("req", "/req", "u")
                .plugin("limit-req", "{rate: 0.001, burst: 2, key: [consumer]}"),
        )
        .route(keyed("conn", "/conn/*", "held").plugin("limit-conn", "{max: 1, key: [consumer]}"))
        .to_yaml();
    let gw = gateway(&yaml).await;
    let c = http_client();

    let gold = with_key(&c, &gw.url("/count"), "gold-key", 8).await;
    assert_eq!(count(&gold, 200), 5, "gold: its own count {gold:?}");
    assert!(gold.iter().all(|&s| s == 200 || s == 429), "{gold:?}");
    let plain = with_key(&c, &gw.url("/count"), "plain-key", 8).await;
    assert_eq!(count(&plain, 200), 2, "plain: the route's count {plain:?}");
    let tight = with_key(&c, &gw.url("/count"), "tight-key", 8).await;
    assert_eq!(
        count(&tight, 200),
        1,
        "tight: its own, lower count {tight:?}"
    );
    // The consumer's quota holds per route (default key: consumer, route).
    let r = c
        .get(gw.url("/count2"))
        .header("apikey", "gold-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some("4"));

    let gold = with_key(&c, &gw.url("/req"), "gold-key", 8).await;
    assert_eq!(count(&gold, 200), 4, "gold: its own burst {gold:?}");
    let plain = with_key(&c, &gw.url("/req"), "plain-key", 8).await;
    assert_eq!(count(&plain, 200), 2, "plain: the route's burst {plain:?}");

    // In flight: admitted bodies stay open until the gate opens, so every
    // admitted request holds its place while the others are decided.
    for (key, want) in [("gold-key", 3), ("plain-key", 1)] {
        let gate = Gate::new();
        held.set(
            "/conn/held",
            Script::ok()
                .header("content-type", "text/plain")
                .body(&b"first"[..])
                .wait(&gate)
                .body(&b"rest"[..]),
        );
        let mut open = Vec::new();
        let mut refused = 0;
        for _ in 0..6 {
            let r = c
                .get(gw.url("/conn/held"))
                .header("apikey", key)
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                200 => open.push(r),
                429 => refused += 1,
                s => panic!("{key}: unexpected status {s}"),
            }
        }
        assert_eq!(open.len(), want, "{key}: admitted in flight");
        assert_eq!(refused, 6 - want, "{key}");
        gate.open();
        for r in open {
            assert_eq!(&r.bytes().await.unwrap()[..], b"firstrest");
        }
        // Every place is given back once the bodies have ended.
        let r = until_status("places given back", Duration::from_secs(10), 200, || {
            c.get(gw.url("/conn/held")).header("apikey", key)
        })
        .await;
        assert_eq!(&r.bytes().await.unwrap()[..], b"firstrest");
    }
}
