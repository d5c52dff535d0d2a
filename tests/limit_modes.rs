//! Soft, shadow and dynamic limits through a real `weir` node and real
//! upstream servers: the soft threshold flags admitted requests in a
//! header, the metrics and the access log; a shadow limit counts like an
//! enforced one but rejects nothing, and keeps its counts when it is
//! switched to `enforce`; a dynamic limit halves when one of two targets
//! fails its active health checks and comes back with it.
//!
//! Windows of an hour (and, for the soft rate, a bucket refilling once in
//! 1000 s against one refilling every microsecond) keep every count exact
//! on any machine; conditions are waited for with deadlines.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{gateway, sample};
use weir_testsupport::{Gateway, Upstream, http_client, wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// One GET with an optional `x-k` header: status and the limit headers.
struct Answer {
    status: u16,
    limit: Option<String>,
    remaining: Option<String>,
    soft: Option<String>,
    retry_after: Option<String>,
}

async fn get(url: String, key: Option<&str>) -> Answer {
    let mut req = http_client().get(url);
    if let Some(k) = key {
        req = req.header("x-k", k);
    }
    let r = req.send().await.unwrap();
    let h = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let a = Answer {
        status: r.status().as_u16(),
        limit: h("ratelimit-limit"),
        remaining: h("ratelimit-remaining"),
        soft: h("weir-ratelimit-soft"),
        retry_after: h("retry-after"),
    };
    r.bytes().await.unwrap();
    a
}

async fn metrics_text(gw: &Gateway) -> String {
    let r = http_client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The per-limit decision counter of `limit` in `mode`.
fn decisions(text: &str, limit: &str, mode: &str, decision: &str) -> f64 {
    sample(
        text,
        "weir_ratelimit_limit_decisions_total",
        &[
            ("weir_limit", limit),
            ("mode", mode),
            ("decision", decision),
        ],
    )
    .unwrap_or(0.0)
}

/// `ratelimit_decision` of the access-log lines of `route`, in order,
/// once there are `n` of them (a line still being written is skipped).
async fn logged(path: &Path, route: &str, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} access-log lines of {route}"),
        WAIT,
        || async {
            let lines: Vec<String> = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|l| l["route"] == route)
                .map(|l| {
                    l["ratelimit_decision"]
                        .as_str()
                        .unwrap_or("null")
                        .to_string()
                })
                .collect();
            (lines.len() >= n).then_some(lines)
        },
    )
    .await
}

fn access_log(path: &Path) -> String {
    format!(
        "observability:\n  access_log: {{enabled: true, target: !file {}}}\n",
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_soft_threshold_requests_are_admitted_and_flagged() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = gateway(&format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{}\"}}]}}]
routes:
  - id: counted
    paths: [/counted]
    upstream: u
    plugins:
      limit-count: {{count: 5, soft: 2, time_window: 1h, key: [route]}}
  - id: paced
    paths: [/paced]
    upstream: u
    plugins:
      limit-req: {{rate: 1000000, burst: 2, soft: 0.001, key: [route]}}
{}",
        up.target(),
        access_log(&log)
    ))
    .await;

    // limit-count: 2 under soft, 3 over it (still admitted, the quota
    // headers still about the hard limit), then rejected.
    let mut got = Vec::new();
    for _ in 0..6 {
        let a = get(gw.url("/counted"), None).await;
        got.push((a.status, a.soft, a.remaining));
    }
    let soft = || Some("limit-count".to_string());
    let left = |n: &str| Some(n.to_string());
    assert_eq!(
        got,
        [
            (200, None, left("4")),
            (200, None, left("3")),
            (200, soft(), left("2")),
            (200, soft(), left("1")),
            (200, soft(), left("0")),
            (429, None, left("0")),
        ]
    );
    assert_eq!(up.hits_for("/counted"), 5);

    // limit-req: the hard bucket refills every microsecond, the soft one
    // every 1000 s: past the burst of 2, every request is over soft.
    let mut got = Vec::new();
    for _ in 0..5 {
        let a = get(gw.url("/paced"), None).await;
        got.push((a.status, a.soft, a.limit));
    }
    let soft = || Some("limit-req".to_string());
    let two = || Some("2".to_string());
    assert_eq!(
        got,
        [
            (200, None, two()),
            (200, None, two()),
            (200, soft(), two()),
            (200, soft(), two()),
            (200, soft(), two()),
        ]
    );

    let text = metrics_text(&gw).await;
    let count = "route:counted/limit-count";
    let req = "route:paced/limit-req";
    assert_eq!(
        decisions(&text, count, "enforce", "admitted"),
        2.0,
        "{text}"
    );
    assert_eq!(decisions(&text, count, "enforce", "over_soft"), 3.0);
    assert_eq!(decisions(&text, count, "enforce", "rejected"), 1.0);
    assert_eq!(decisions(&text, req, "enforce", "admitted"), 2.0);
    assert_eq!(decisions(&text, req, "enforce", "over_soft"), 3.0);
    assert_eq!(decisions(&text, req, "enforce", "rejected"), 0.0);

    assert_eq!(
        logged(&log, "counted", 6).await,
        [
            "allowed",
            "allowed",
            "over_soft",
            "over_soft",
            "over_soft",
            "rejected"
        ]
    );
    assert_eq!(
        logged(&log, "paced", 5).await,
        ["allowed", "allowed", "over_soft", "over_soft", "over_soft"]
    );
}

fn shadow_config(target: &str, mode: &str, log: &Path, extra: &str) -> String {
    Gateway::config(&format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]
routes:
  - id: shadowed
    paths: [/shadowed]
    upstream: u
    plugins:
      limit-count: {{count: 2, soft: 1, time_window: 1h, key: [route], mode: {mode}}}
{extra}{}",
        access_log(log)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_limit_counts_like_enforcement_and_rejects_nothing() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = gateway(&shadow_config(&up.target(), "shadow", &log, "")).await;

    // Every request goes through, and the client sees no trace of the
    // limit: no quota, soft or retry headers.
    for i in 0..5 {
        let a = get(gw.url("/shadowed"), None).await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(
            (a.limit, a.remaining, a.soft, a.retry_after),
            (None, None, None, None),
            "request {i}"
        );
    }
    assert_eq!(up.hits_for("/shadowed"), 5);

    // Counted exactly as enforcement would have: 1 under soft, 1 over it,
    // 3 over the limit, under mode="shadow".
    let text = metrics_text(&gw).await;
    let limit = "route:shadowed/limit-count";
    assert_eq!(decisions(&text, limit, "shadow", "admitted"), 1.0, "{text}");
    assert_eq!(decisions(&text, limit, "shadow", "over_soft"), 1.0);
    assert_eq!(decisions(&text, limit, "shadow", "rejected"), 3.0);
    assert_eq!(decisions(&text, limit, "enforce", "rejected"), 0.0);
    assert_eq!(
        sample(
            &text,
            "weir_ratelimit_decisions_total",
            &[("weir_route", "shadowed"), ("decision", "rejected")]
        ),
        None,
        "nothing was rejected"
    );
    assert_eq!(
        logged(&log, "shadowed", 5).await,
        [
            "allowed",
            "over_soft",
            "shadow_rejected",
            "shadow_rejected",
            "shadow_rejected"
        ]
    );

    // Switched to enforce: the limit keeps what it counted in shadow, so
    // the client, over the limit already, is rejected at once.
    gw.rewrite_config(&shadow_config(
        &up.target(),
        "enforce",
        &log,
        "  - id: other\n    paths: [/other]\n    upstream: u\n",
    ))
    .unwrap();
    wait_until("the enforcing config is live", WAIT, || async {
        get(gw.url("/other"), None).await.status == 200
    })
    .await;
    let a = get(gw.url("/shadowed"), None).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.remaining.as_deref(), Some("0"));
    assert!(a.retry_after.is_some());
    assert_eq!(up.hits_for("/shadowed"), 5);
    let text = metrics_text(&gw).await;
    assert_eq!(
        decisions(&text, limit, "enforce", "rejected"),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_limit_follows_the_healthy_share_of_the_upstream() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&format!(
        "upstreams:
  - id: u
    retries: 1
    targets: [{{addr: \"{}\"}}, {{addr: \"{}\"}}]
    health_check:
      path: /health
      interval: 200ms
      timeout: 150ms
      healthy_threshold: 1
      unhealthy_threshold: 1
routes:
  - id: dyn
    paths: [/dyn]
    upstream: u
    plugins:
      limit-count: {{count: 10, time_window: 1h, key: ['header:x-k'], dynamic: {{by: healthy_targets}}}}
",
        a.target(),
        b.target()
    ))
    .await;

    // Each probe uses a key of its own, so probing spends nothing of the
    // key under test.
    let probe = std::sync::atomic::AtomicU64::new(0);
    let limit_now = || async {
        let n = probe.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        get(gw.url("/dyn"), Some(&format!("probe-{n}"))).await.limit
    };
    assert_eq!(limit_now().await.as_deref(), Some("10"));

    // One of two targets fails its health checks: the limit halves.
    b.kill().await;
    wait_until("the limit halves", WAIT, || async {
        limit_now().await.as_deref() == Some("5")
    })
    .await;
    let mut got = Vec::new();
    for _ in 0..7 {
        let r = get(gw.url("/dyn"), Some("main")).await;
        got.push((r.status, r.limit));
    }
    let five = || Some("5".to_string());
    assert_eq!(
        got,
        [
            (200, five()),
            (200, five()),
            (200, five()),
            (200, five()),
            (200, five()),
            (429, five()),
            (429, five()),
        ]
    );

    // The target recovers: the whole limit is back, and the key that was
    // held at 5 gets the other 5 of its window.
    b.restart().await;
    wait_until("the limit is whole again", WAIT, || async {
        limit_now().await.as_deref() == Some("10")
    })
    .await;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(get(gw.url("/dyn"), Some("main")).await.status);
    }
    assert_eq!(got, [200, 200, 200, 200, 200, 429]);
}

#[test]
fn validate_names_soft_mode_and_dynamic_fields() {
    common::rejected(
        "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
routes:
  - id: a
    paths: [/a]
    upstream: u
    plugins:
      limit-count: {count: 5, time_window: 60s, soft: 5, dynamic: {by: healthy_targets, floor: 2}}
      limit-req: {rate: 1, soft: 3, mode: loud}
",
        &[
            "routes[0].plugins.limit-count.soft: must be at least 1 and below `count` (5); got 5",
            "routes[0].plugins.limit-count.dynamic.floor: must be a share between 0 and 1; got 2",
            "routes[0].plugins.limit-req.mode: unknown variant `loud`",
        ],
    );
}
