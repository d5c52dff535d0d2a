//! Hot reload: a changed file swaps the route table atomically, under load,
//! without a failed request; a bad file keeps the running config.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::gateway;
use weir_testsupport::{Gateway, Upstream, http_client, wait_until};

fn config(target: &str, route_path: &str) -> String {
    Gateway::config(&format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]\nroutes: [{{id: r, paths: [\"{route_path}\", \"/steady\"], upstream: u}}]\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&config(&a.target(), "/old")).await;
    let c = http_client();

    // Continuous load on a path both configs route.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (c, url, stop, ok) = (c.clone(), gw.url("/steady"), stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: at most 20,000 requests per worker.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }

    // Flip between two upstreams and two route sets several times.
    for round in 0..6 {
        let (target, path, expect) = if round % 2 == 0 {
            (b.target(), "/new", "b")
        } else {
            (a.target(), "/old", "a")
        };
        let before = ok.load(Ordering::Relaxed);
        gw.rewrite_config(&config(&target, path)).unwrap();
        wait_until(
            "the reloaded route answers",
            Duration::from_secs(10),
            || async {
                let r = c.get(gw.url(path)).send().await.unwrap();
                r.status() == 200 && r.headers()["x-upstream"] == expect
            },
        )
        .await;
        // Load kept flowing across the swap.
        wait_until(
            "requests flow after the swap",
            Duration::from_secs(10),
            || async { ok.load(Ordering::Relaxed) > before + 50 },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let failures = w.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during reload: {:?}",
            &failures[..failures.len().min(5)]
        );
    }
    assert!(ok.load(Ordering::Relaxed) > 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_file_keeps_running_config() {
    let a = Upstream::start("a").await;
    let gw = gateway(&config(&a.target(), "/old")).await;
    let c = http_client();
    // An unknown field, and a route pointing at a missing upstream.
    gw.rewrite_config(&Gateway::config(
        "upstreams: [{id: u, targets: [{addr: \"127.0.0.1:1\"}], colour: red}]\nroutes: [{id: r, paths: [/new], upstream: nope}]\n",
    ))
    .unwrap();
    wait_until(
        "the rejection is logged",
        Duration::from_secs(10),
        || async { gw.log().contains("config rejected") },
    )
    .await;
    assert!(gw.log().contains("unknown field `colour`"), "{}", gw.log());
    let r = c.get(gw.url("/old")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "a");
    assert_eq!(c.get(gw.url("/new")).send().await.unwrap().status(), 404);

    // A later good file is picked up again.
    gw.rewrite_config(&config(&a.target(), "/new")).unwrap();
    wait_until(
        "the good file is applied",
        Duration::from_secs(10),
        || async { c.get(gw.url("/new")).send().await.unwrap().status() == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_overrides_survive_reloads() {
    let a = Upstream::start("a").await;
    // The file says port 0 on loopback; the flag picks the workers. A reload
    // of the same file must not see a "changed" setting.
    let gw = Gateway::builder(common::weir_bin())
        .config(config(&a.target(), "/old"))
        .args(["--workers", "2"])
        .start()
        .await
        .unwrap();
    gw.rewrite_config(&config(&a.target(), "/new")).unwrap();
    let c = http_client();
    wait_until("the reload is live", Duration::from_secs(10), || async {
        c.get(gw.url("/new")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(!gw.log().contains("change only on restart"), "{}", gw.log());
}
