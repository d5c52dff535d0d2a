//! Rate and concurrency limits through a real gateway and upstream:
//! admitted counts, bursts, delay mode, in-flight caps, the `RateLimit-*`
//! headers and the 429 answer, and the adaptive limit following a
//! slowing-down upstream.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{error_of, gateway, weir_bin};
use weir_testsupport::{
    Behaviour, Gate, Script, ScriptedUpstream, Upstream, http_client, wait_for, wait_until,
};

fn config(target: &str, routes: &str) -> String {
    format!("upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]\nroutes:\n{routes}")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn limit_count_headers_and_429() {
    let up = Upstream::start("a").await;
    let routes = "  - id: counted
    paths: [/counted]
    upstream: u
    plugins:
      limit-count: {count: 3, time_window: 60s, key: [route]}
  - id: quiet
    paths: [/quiet]
    upstream: u
    plugins:
      limit-count: {count: 1, time_window: 60s, headers: false}
";
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
    let routes = "  - id: s
    paths: [/s]
    upstream: u
    plugins:
      limit-count: {count: 10, time_window: 60s, policy: sliding, key: [route, 'header:x-user']}
";
    let gw = gateway(&config(&up.target(), routes)).await;
    let c = http_client();
    for user in ["alice", "bob"] {
        let mut ok = 0;
        for _ in 0..15 {
            let r = c
                .get(gw.url("/s"))
                .header("x-user", user)
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                200 => ok += 1,
                429 => {}
                s => panic!("unexpected status {s}"),
            }
        }
        // Windows start at a key's first request: the whole run sits in one.
        assert_eq!(ok, 10, "admitted for {user}");
    }
}

/// Over several short windows, never more than `count` per window the run
/// touched, and the first window exactly `count`.
#[tokio::test]
async fn fixed_window_admitted_count_over_time() {
    let up = Upstream::start("a").await;
    let routes = "  - id: f
    paths: [/f]
    upstream: u
    plugins:
      limit-count: {count: 4, time_window: 1s, key: [route]}
";
    let gw = gateway(&config(&up.target(), routes)).await;
    let c = http_client();
    let start = Instant::now();
    let mut statuses = Vec::new();
    while start.elapsed() < Duration::from_millis(2500) {
        statuses.push(c.get(gw.url("/f")).send().await.unwrap().status().as_u16());
    }
    let span = start.elapsed();
    let ok = statuses.iter().filter(|&&s| s == 200).count() as u64;
    assert!(statuses.iter().all(|&s| s == 200 || s == 429));
    assert_eq!(&statuses[..4], [200; 4]);
    let windows = span.as_secs() + 1;
    assert!(ok <= 4 * windows, "{ok} admitted in {span:?}");
    assert_eq!(up.hits_for("/f"), ok);
}

#[tokio::test]
async fn limit_req_burst_then_rate() {
    let up = Upstream::start("a").await;
    let routes = "  - id: b
    paths: [/b]
    upstream: u
    plugins:
      limit-req: {rate: 2, burst: 4, key: [route]}
";
    let gw = gateway(&config(&up.target(), routes)).await;
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
    let routes = "  - id: d
    paths: [/d]
    upstream: u
    plugins:
      limit-req: {rate: 2, burst: 2, delay: true, key: [route]}
";
    let gw = gateway(&config(&up.target(), routes)).await;
    let c = http_client();
    let start = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            let url = gw.url("/d");
            tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                (r.status().as_u16(), Instant::now())
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
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
    let routes = "  - id: c
    paths: [/c/*]
    upstream: u
    plugins:
      limit-conn: {max: 2, key: [route]}
";
    let gw = gateway(&config(&up.target(), routes)).await;
    let c = http_client();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            let url = gw.url("/c/slow/3000");
            tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                let s = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap();
                (s, body)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let (s, body) = t.await.unwrap();
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
    let routes = "  - id: a
    paths: [/a]
    upstream: u
    plugins:
      adaptive-concurrency: {initial_limit: 10, min_limit: 1, max_limit: 50, backoff: 0.5, slack: 400ms}
";
    let gw = gateway(&config(&up.target(), routes)).await;
    let c = http_client();
    let batch = |n: usize| {
        let c = c.clone();
        let url = gw.url("/a");
        async move {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (c, url) = (c.clone(), url.clone());
                    tokio::spawn(async move {
                        let r = c.get(url).send().await.unwrap();
                        let s = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap();
                        (s, body)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    // Fast: a batch under the initial limit all passes. The slack (400 ms)
    // absorbs scheduling stalls of a loaded machine; the slow phase (2 s)
    // is far past it.
    for _ in 0..3 {
        assert!(batch(8).await.iter().all(|(s, _)| *s == 200));
    }
    up.set_behaviour(Behaviour::normal().with_delay(Duration::from_millis(2000)));
    let overloaded = wait_for("a 503 overloaded", Duration::from_secs(60), || async {
        let out = batch(12).await;
        out.iter().find(|(s, _)| *s == 503).map(|(_, b)| b.clone())
    })
    .await;
    assert_eq!(error_of(&overloaded)["code"], "overloaded");
    let peak_slow = up.max_concurrent();
    assert!(peak_slow <= 12);

    up.set_behaviour(Behaviour::normal());
    wait_until("the limit to recover", Duration::from_secs(60), || async {
        batch(8).await.iter().all(|(s, _)| *s == 200)
    })
    .await;
}

#[test]
fn validate_names_limit_fields() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
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
    )
    .unwrap();
    let out = Command::new(weir_bin())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "routes[0].plugins.limit-count.count: must be at least 1",
        "routes[0].plugins.limit-count.key[0]: unknown key part `ip`",
        "routes[0].plugins.limit-count.rejected_code: 200 is not a status between 400 and 599",
        "routes[0].plugins.limit-req.rate: must be between",
        "routes[0].plugins.limit-conn.colour: unknown field `colour`",
        "consumers[0].plugins.key-auth: `key-auth` cannot be set on a consumer; only limit-count, limit-req, limit-conn can",
        "consumers[0].plugins.limit-count.count: must be at least 1",
        "routes[0].plugins.adaptive-concurrency.backoff: must be between 0.5 and 0.99",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}

fn sha_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends `n` requests with `key` one after the other; the statuses.
async fn statuses(c: &reqwest::Client, url: &str, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c.get(url).header("apikey", key).send().await.unwrap();
        out.push(r.status().as_u16());
    }
    out
}

fn admitted(s: &[u16]) -> usize {
    s.iter().filter(|&&s| s == 200).count()
}

/// A consumer's own `limit-count`, `limit-req` and `limit-conn` win over
/// the route's, higher or lower; a consumer without one gets the route's.
/// Windows of an hour and a bucket refilling once in 1000 s make the
/// counts exact on any machine.
#[tokio::test]
async fn a_consumers_own_limits_win_over_the_routes() {
    let up = Upstream::start("a").await;
    let held = ScriptedUpstream::start().await;
    let yaml = format!(
        "upstreams:
  - {{id: u, targets: [{{addr: \"{}\"}}]}}
  - {{id: held, targets: [{{addr: \"{}\"}}]}}
consumers:
  - name: gold
    credentials: {{key-auth: [{{key_sha256: {}}}]}}
    plugins:
      limit-count: {{count: 5, time_window: 1h}}
      limit-req: {{rate: 0.001, burst: 4}}
      limit-conn: {{max: 3}}
  - name: plain
    credentials: {{key-auth: [{{key_sha256: {}}}]}}
  - name: tight
    credentials: {{key-auth: [{{key_sha256: {}}}]}}
    plugins:
      limit-count: {{count: 1, time_window: 1h}}
routes:
  - id: count
    paths: [/count]
    upstream: u
    plugins:
      key-auth: {{}}
      limit-count: {{count: 2, time_window: 1h, key: [consumer]}}
  - id: count2
    paths: [/count2]
    upstream: u
    plugins:
      key-auth: {{}}
      limit-count: {{count: 2, time_window: 1h, key: [consumer]}}
  - id: req
    paths: [/req]
    upstream: u
    plugins:
      key-auth: {{}}
      limit-req: {{rate: 0.001, burst: 2, key: [consumer]}}
  - id: conn
    paths: [/conn/*]
    upstream: held
    plugins:
      key-auth: {{}}
      limit-conn: {{max: 1, key: [consumer]}}
",
        up.target(),
        held.target(),
        sha_hex("gold-key"),
        sha_hex("plain-key"),
        sha_hex("tight-key"),
    );
    let gw = gateway(&yaml).await;
    let c = http_client();

    let gold = statuses(&c, &gw.url("/count"), "gold-key", 8).await;
    assert_eq!(admitted(&gold), 5, "gold: its own count {gold:?}");
    assert!(gold.iter().all(|&s| s == 200 || s == 429), "{gold:?}");
    let plain = statuses(&c, &gw.url("/count"), "plain-key", 8).await;
    assert_eq!(admitted(&plain), 2, "plain: the route's count {plain:?}");
    let tight = statuses(&c, &gw.url("/count"), "tight-key", 8).await;
    assert_eq!(admitted(&tight), 1, "tight: its own, lower count {tight:?}");
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

    let gold = statuses(&c, &gw.url("/req"), "gold-key", 8).await;
    assert_eq!(admitted(&gold), 4, "gold: its own burst {gold:?}");
    let plain = statuses(&c, &gw.url("/req"), "plain-key", 8).await;
    assert_eq!(admitted(&plain), 2, "plain: the route's burst {plain:?}");

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
        let r = wait_for("places given back", Duration::from_secs(10), || {
            let c = c.clone();
            let url = gw.url("/conn/held");
            async move {
                let r = c.get(url).header("apikey", key).send().await.ok()?;
                (r.status() == 200).then_some(r)
            }
        })
        .await;
        assert_eq!(&r.bytes().await.unwrap()[..], b"firstrest");
    }
}
