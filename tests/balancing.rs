//! Each balancer through a real gateway, judged by the hits its upstreams
//! count, plus sticky sessions.
//!
//! Loads are fixed numbers of requests. Where the outcome is random, or
//! depends on timing, the bounds are derived in a comment next to them and
//! chosen so that a correct balancer passes on a loaded machine and a wrong
//! one (plain round robin, say) does not.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::gateway;
use futures_util::{StreamExt, stream};
use weir_testsupport::{Behaviour, Gateway, Upstream, http_client, wait_until};

/// How long a test waits for a reloaded config to be live.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// A config with one upstream `u` over `targets` (with weights), balanced
/// by `balancer` (a YAML flow mapping), plus `extra` lines under the
/// upstream, and one catch-all route.
fn config(targets: &[(&Upstream, u32)], balancer: &str, extra: &str) -> String {
    let mut y = format!("upstreams:\n  - id: u\n    balancer: {balancer}\n    targets:\n");
    for (up, weight) in targets {
        y.push_str(&format!(
            "      - {{addr: \"{}\", weight: {weight}}}\n",
            up.target()
        ));
    }
    y.push_str(extra);
    y.push_str("routes:\n  - {id: all, paths: [\"/*\"], upstream: u}\n");
    Gateway::config(&y)
}

/// What one answer said about balancing.
struct Reply {
    /// The `x-upstream` of the answer: who served it.
    upstream: String,
    /// Every `Set-Cookie` value, as sent.
    set_cookies: Vec<String>,
}

impl Reply {
    /// The value the answer sets cookie `name` to, if it does.
    fn cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies.iter().find_map(|v| {
            let pair = v.split(';').next()?;
            let (k, val) = pair.split_once('=')?;
            (k.trim() == name).then_some(val.trim())
        })
    }
}

/// Sends a request, expects a 200 and reads the body to its end, so the
/// connection goes back to the client's pool.
async fn fetch(rb: reqwest::RequestBuilder) -> Reply {
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{resp:?}");
    let h = resp.headers();
    let reply = Reply {
        upstream: h["x-upstream"].to_str().unwrap().to_string(),
        set_cookies: h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect(),
    };
    resp.bytes().await.unwrap();
    reply
}

/// Sends `total` GETs of `path` from `workers` concurrent loops, each
/// sending its next request as soon as the previous answer is read, and
/// returns how many each upstream answered.
async fn closed_loop(
    gw: &Gateway,
    workers: usize,
    total: usize,
    path: &str,
) -> HashMap<String, usize> {
    let c = http_client();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (c, next, url) = (c.clone(), next.clone(), gw.url(path));
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                seen.push(fetch(c.get(&url)).await.upstream);
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for name in t.await.unwrap() {
            *counts.entry(name).or_default() += 1;
        }
    }
    assert_eq!(counts.values().sum::<usize>(), total);
    counts
}

// === round robin ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights_exactly() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let z = Upstream::start("z").await;
    let gw = gateway(&config(
        &[(&a, 3), (&b, 1), (&z, 0)],
        "{kind: round_robin}",
        "",
    ))
    .await;
    let c = http_client();
    let mut order = String::new();
    // 100 whole cycles of 3 + 1 picks, sent one at a time so no two picks
    // ever contend (a contended pick falls back to weighted random).
    for _ in 0..400 {
        order.push_str(&fetch(c.get(gw.url("/x"))).await.upstream);
    }
    assert_eq!((a.hits(), b.hits(), z.hits()), (300, 100, 0));
    // Smooth WRR with nginx's tie-break spreads b's turn: a a b a, every
    // cycle.
    assert_eq!(order, "aaba".repeat(100));
}

// === least connections ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_favours_the_target_with_fewer_requests_in_flight() {
    const WORKERS: usize = 6;
    const TOTAL: usize = 120;
    const DELAY: Duration = Duration::from_millis(1000);
    let fast = Upstream::start("fast").await;
    let slow = Upstream::start_with("slow", Behaviour::normal().with_delay(DELAY)).await;
    let gw = gateway(&config(&[(&fast, 1), (&slow, 1)], "{kind: least_conn}", "")).await;
    let counts = closed_loop(&gw, WORKERS, TOTAL, "/x").await;
    // Round robin or random would give `slow` half, 60. Least connections
    // picks `slow` only while it has no more requests in flight than
    // `fast`; with 6 workers that keeps `slow` at about 4 at a time, so at
    // least 2 workers keep cycling through `fast`. Every `slow` request
    // takes 1 s, so 30 of them would stretch the run past 6 s, and 2
    // workers sending no more than the other 90 in that time would mean
    // `fast` answers taking 140 ms or more each, where a loopback round
    // trip takes milliseconds even on a loaded two-core machine.
    let (f, s) = (counts["fast"], counts.get("slow").copied().unwrap_or(0));
    assert!(s <= TOTAL / 4, "slow got {s}, fast {f}");
    assert!(f >= 3 * TOTAL / 4, "slow got {s}, fast {f}");
    assert!(
        s >= 1,
        "ties at zero in flight are shared, so slow gets some"
    );
}

// === random ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_weights_within_six_standard_deviations() {
    const N: usize = 1200;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&config(&[(&a, 1), (&b, 3)], "{kind: random}", "")).await;
    let counts = closed_loop(&gw, 4, N, "/x").await;
    // Each request goes to `a` with probability 1/4, independently: its
    // count is binomial(N, 1/4). A correct sampler lands more than 6
    // standard deviations from the mean with probability about 2e-9.
    // With N = 1200 the bound is 300 ± 90, which excludes 1:1 (600) and
    // 1:2 (400) splits.
    let n = N as f64;
    let p = 0.25;
    let mean = n * p;
    let bound = 6.0 * (n * p * (1.0 - p)).sqrt();
    let got_a = counts.get("a").copied().unwrap_or(0) as f64;
    assert!(
        (got_a - mean).abs() <= bound,
        "a got {got_a} of {N}; want {mean} ± {bound:.0} ({counts:?})"
    );
    assert_eq!(a.hits() + b.hits(), N as u64, "no request was retried");
}

// === consistent hashing ===

/// Where the test puts its hash key.
#[derive(Debug, Clone, Copy)]
enum Source {
    Header,
    Cookie,
    Ip,
    Uri,
}

impl Source {
    fn hash_on(self) -> &'static str {
        match self {
            Source::Header => "{source: header, name: x-user}",
            Source::Cookie => "{source: cookie, name: session}",
            Source::Ip => "{source: ip}",
            Source::Uri => "{source: uri}",
        }
    }

    /// Sends one request carrying key `k` and returns who answered.
    async fn send(self, gw: &Gateway, c: &reqwest::Client, k: usize) -> String {
        let rb = match self {
            Source::Header => c.get(gw.url("/x")).header("x-user", format!("user-{k}")),
            Source::Cookie => c
                .get(gw.url("/x"))
                .header("cookie", format!("theme=dark; session=sess-{k}")),
            Source::Ip => {
                // All of 127.0.0.0/8 is loopback: each key is its own
                // client address.
                let ip = IpAddr::from([127, 1, (k / 250) as u8, (k % 250 + 1) as u8]);
                let c = reqwest::Client::builder()
                    .no_proxy()
                    .local_address(ip)
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                return fetch(c.get(gw.url("/x"))).await.upstream;
            }
            Source::Uri => c.get(gw.url(&format!("/item/{k}?v=1"))),
        };
        fetch(rb).await.upstream
    }

    /// Who answers each of `keys`, 8 requests at a time.
    async fn map(self, gw: &Gateway, keys: std::ops::Range<usize>) -> Vec<String> {
        let c = http_client();
        let c = &c;
        stream::iter(keys)
            .map(|k| async move { self.send(gw, c, k).await })
            .buffered(8)
            .collect()
            .await
    }
}

/// Bounds on how many of `k` keys one of `n` equally weighted targets owns,
/// at 6 standard deviations. Two things vary: a target's share of the ketama
/// ring (the sum of its 160 arcs, each close to exponential with mean
/// 1/(160 n), so a standard deviation of 1/(n √160) around 1/n) and which
/// keys fall where (binomial). Simulating 3,000 random port sets with
/// pingora-ketama gave a standard deviation of 8 to 9 moved keys out of 300
/// (this bound uses 9.6) and never more than 103 moved.
fn share_bounds(k: usize, n: usize) -> (usize, usize) {
    let (k, n) = (k as f64, n as f64);
    let p = 1.0 / n;
    let ring_sd = 1.0 / (n * 160f64.sqrt());
    let sd = (k * p * (1.0 - p) + (k * ring_sd).powi(2)).sqrt();
    let lo = (k * p - 6.0 * sd).floor().max(0.0) as usize;
    let hi = (k * p + 6.0 * sd).ceil() as usize;
    (lo, hi)
}

async fn consistent_hash_is_stable_spread_and_consistent(source: Source) {
    const KEYS: usize = 300;
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
        Upstream::start("d").await,
    ];
    let balancer = format!("{{kind: consistent_hash, hash_on: {}}}", source.hash_on());
    let three: Vec<(&Upstream, u32)> = ups[..3].iter().map(|u| (u, 1)).collect();
    let gw = gateway(&config(&three, &balancer, "")).await;

    // The same key always reaches the same target.
    let first = source.map(&gw, 0..KEYS).await;
    let again = source.map(&gw, 0..KEYS).await;
    let unstable: Vec<usize> = (0..KEYS).filter(|&k| first[k] != again[k]).collect();
    assert!(unstable.is_empty(), "{source:?}: keys {unstable:?} moved");

    // Distinct keys spread over every target.
    let (lo, _) = share_bounds(KEYS, 3);
    for name in ["a", "b", "c"] {
        let n = first.iter().filter(|t| *t == name).count();
        assert!(
            n >= lo,
            "{source:?}: {name} owns {n} of {KEYS} keys, want ≥ {lo}"
        );
    }

    // A missing header or cookie hashes as empty: one target for all.
    if matches!(source, Source::Header | Source::Cookie) {
        let c = http_client();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            seen.insert(fetch(c.get(gw.url("/x"))).await.upstream);
        }
        assert_eq!(
            seen.len(),
            1,
            "{source:?}: keyless requests went to {seen:?}"
        );
    }

    // Add `d`. Fresh keys show when the new ring is live: `d` gets
    // traffic only from it.
    let four: Vec<(&Upstream, u32)> = ups.iter().map(|u| (u, 1)).collect();
    gw.rewrite_config(&config(&four, &balancer, "")).unwrap();
    let c = http_client();
    let probe = AtomicUsize::new(1_000);
    wait_until("the four-target ring is live", RELOAD_WAIT, || async {
        let k = probe.fetch_add(1, Ordering::Relaxed);
        source.send(&gw, &c, k).await == "d"
    })
    .await;

    // Ketama only moves keys onto the new target, and about a quarter of
    // them; modulo hashing would move three quarters.
    let after = source.map(&gw, 0..KEYS).await;
    let moved: Vec<usize> = (0..KEYS).filter(|&k| first[k] != after[k]).collect();
    let elsewhere: Vec<usize> = moved.iter().copied().filter(|&k| after[k] != "d").collect();
    assert!(
        elsewhere.is_empty(),
        "{source:?}: keys {elsewhere:?} moved between old targets"
    );
    let (lo, hi) = share_bounds(KEYS, 4);
    assert!(
        (lo..=hi).contains(&moved.len()),
        "{source:?}: {} of {KEYS} keys moved, want {lo}..={hi}",
        moved.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_header() {
    consistent_hash_is_stable_spread_and_consistent(Source::Header).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_cookie() {
    consistent_hash_is_stable_spread_and_consistent(Source::Cookie).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_client_ip() {
    consistent_hash_is_stable_spread_and_consistent(Source::Ip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_uri() {
    consistent_hash_is_stable_spread_and_consistent(Source::Uri).await;
}

// === peak EWMA ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_less_to_a_slow_target() {
    const WORKERS: usize = 6;
    const TOTAL: usize = 120;
    let fast = Upstream::start("fast").await;
    let slow = Upstream::start_with(
        "slow",
        Behaviour::normal().with_delay(Duration::from_millis(300)),
    )
    .await;
    let gw = gateway(&config(&[(&fast, 1), (&slow, 1)], "{kind: peak_ewma}", "")).await;
    let counts = closed_loop(&gw, WORKERS, TOTAL, "/x").await;
    // Round robin or random would give `slow` half, 60. With two targets
    // every pick compares both costs, estimate × (in flight + 1). Until
    // `slow` first answers, its estimate is the 1 ms a fresh target starts
    // with, so each worker may draw it once (and then waits 300 ms). Its
    // first answer puts its estimate at 300 ms, which the default 10 s
    // decay keeps above 250 ms for the first 1.8 s of the run (and every
    // later answer puts back). `fast`'s estimate follows its slowest recent
    // answer H, so `slow` gets another request only while
    // 250 ms × (s + 1) ≤ H × (f + 1), with s and f the requests in flight
    // on each and s + f ≤ 5 (the sixth worker is the one picking): H must
    // exceed 40 ms for one `slow` request at a time and 100 ms for two.
    // 30 `slow` requests would need `fast` answers that slow through most
    // of a run of seconds, where a loopback round trip takes milliseconds.
    let (f, s) = (counts["fast"], counts.get("slow").copied().unwrap_or(0));
    assert!(s <= TOTAL / 4, "slow got {s}, fast {f}");
    assert!(f >= 3 * TOTAL / 4, "slow got {s}, fast {f}");
}

// === sticky sessions ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_a_client_to_its_target_until_it_dies() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&config(
        &[(&a, 1), (&b, 1)],
        "{kind: round_robin}",
        "    sticky: {}\n",
    ))
    .await;
    let c = http_client();
    let with_cookie = |value: &str| {
        c.get(gw.url("/x"))
            .header("cookie", format!("a=1; weir_sticky={value}; b=2"))
    };

    // The first answer names its target in the cookie.
    let r = fetch(c.get(gw.url("/x"))).await;
    let first = r.upstream.clone();
    assert_eq!(r.set_cookies.len(), 1, "{:?}", r.set_cookies);
    let raw = &r.set_cookies[0];
    assert!(
        raw.starts_with("weir_sticky=") && raw.ends_with("; Path=/; HttpOnly"),
        "{raw}"
    );
    let cookie = r.cookie("weir_sticky").unwrap().to_string();

    // Without the cookie, round robin alternates...
    let mut bare = Vec::new();
    for _ in 0..4 {
        bare.push(fetch(c.get(gw.url("/x"))).await.upstream);
    }
    assert!(bare.iter().any(|t| *t != first), "no alternation: {bare:?}");
    // ...with it, every request goes to the same target, and the cookie is
    // not set again.
    for i in 0..10 {
        let r = fetch(with_cookie(&cookie)).await;
        assert_eq!(r.upstream, first, "request {i}");
        assert!(r.set_cookies.is_empty(), "request {i}: {:?}", r.set_cookies);
    }

    // An unknown value is balanced normally and replaced.
    let r = fetch(with_cookie("0000000000000000")).await;
    let id = r.cookie("weir_sticky").expect("a new cookie");
    assert_eq!(id == cookie, r.upstream == first);

    // The pinned target dies: the request goes to the other one, which
    // names itself in a new cookie.
    let (dead, other, other_name) = if first == "a" {
        (&a, &b, "b")
    } else {
        (&b, &a, "a")
    };
    dead.kill().await;
    let before = other.hits();
    let r = fetch(with_cookie(&cookie)).await;
    assert_eq!(r.upstream, other_name);
    let moved = r.cookie("weir_sticky").expect("a replacement cookie");
    assert_ne!(moved, cookie);
    assert_eq!(other.hits(), before + 1);

    // The new cookie sticks to the survivor.
    for i in 0..5 {
        let r = fetch(with_cookie(moved)).await;
        assert_eq!(r.upstream, other_name, "request {i}");
        assert!(r.set_cookies.is_empty(), "request {i}: {:?}", r.set_cookies);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_name_and_ttl_are_configurable() {
    let a = Upstream::start("a").await;
    let gw = gateway(&config(
        &[(&a, 1)],
        "{kind: round_robin}",
        "    sticky: {cookie: sid, ttl: 1h}\n",
    ))
    .await;
    let r = fetch(http_client().get(gw.url("/x"))).await;
    let id = r.cookie("sid").expect("the sid cookie");
    assert_eq!(
        r.set_cookies,
        [format!("sid={id}; Path=/; HttpOnly; Max-Age=3600")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_does_not_pin_a_drained_target() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&config(
        &[(&a, 1), (&b, 1)],
        "{kind: round_robin}",
        "    sticky: {}\n",
    ))
    .await;
    let c = http_client();
    // Find b's cookie.
    let cookie = loop {
        let r = fetch(c.get(gw.url("/x"))).await;
        if r.upstream == "b" {
            break r.cookie("weir_sticky").unwrap().to_string();
        }
    };
    // Weight 0 drains b: its cookie no longer pins, and is replaced.
    gw.rewrite_config(&config(
        &[(&a, 1), (&b, 0)],
        "{kind: round_robin}",
        "    sticky: {}\n",
    ))
    .unwrap();
    wait_until(
        "the drained config is live",
        Duration::from_secs(10),
        || async {
            fetch(c.get(gw.url("/x"))).await.upstream == "a"
                && fetch(c.get(gw.url("/x"))).await.upstream == "a"
        },
    )
    .await;
    let before = b.hits();
    let r = fetch(
        c.get(gw.url("/x"))
            .header("cookie", format!("weir_sticky={cookie}")),
    )
    .await;
    assert_eq!(r.upstream, "a");
    assert_ne!(
        r.cookie("weir_sticky").expect("a replacement cookie"),
        cookie
    );
    assert_eq!(b.hits(), before);
}
