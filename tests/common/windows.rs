//! Measuring window limits across nodes: traffic offered to each node
//! inside one wall-clock-aligned window, admitted requests counted per
//! node, every answer checked to be 200 or 429 (never a failed request);
//! and a node's `/metrics` read series by series.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_testsupport::{Gateway, http_client};

/// Windows tried before a measurement gives up (a window whose traffic
/// did not fit inside it is not counted).
const ATTEMPTS: usize = 5;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The text of `g`'s `/metrics` (empty when it does not answer).
pub async fn metrics(g: &Gateway) -> String {
    match http_client().get(g.admin_url("/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the series `name{labels}` (labels as written), if shown.
pub fn series(text: &str, name_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_labels)?.trim().parse().ok())
}

/// Offers `per_node[i]` requests to node `i` within one window of
/// `window_s` seconds (paced over its first 60%, four senders per node)
/// and returns the admitted count per node; `None` when the traffic did
/// not fit in the window. Panics on any answer other than 200 or 429.
pub async fn one_window(window_s: u64, urls: &[String], per_node: &[usize]) -> Option<Vec<u64>> {
    let w = window_s * 1_000_000;
    let start = next_window(window_s).await;
    let tasks = offer(window_s, start, urls, per_node, &vec![60; urls.len()], 4);
    let mut per = vec![0u64; urls.len()];
    for t in tasks {
        let (i, a) = t.await.expect("sender");
        per[i] += a;
    }
    (now_us() + 50_000 < start + w).then_some(per)
}

/// Runs [`one_window`] until a window fits (at most [`ATTEMPTS`]).
pub async fn measure(window_s: u64, urls: &[String], per_node: &[usize]) -> Vec<u64> {
    for _ in 0..ATTEMPTS {
        if let Some(per) = one_window(window_s, urls, per_node).await {
            return per;
        }
    }
    panic!("no window of {window_s}s fitted the offered traffic in {ATTEMPTS} attempts");
}

/// Offers `per_node[i]` requests to node `i`, paced over the first
/// `spread_pct[i]`% of the window of `window_s` seconds starting at
/// `start` (µs); each sender returns the statuses of the requests
/// answered before the window ended (one admitted late may belong to the
/// next window: not counted, so this count never overstates a window).
pub fn offer(
    window_s: u64,
    start: u64,
    urls: &[String],
    per_node: &[usize],
    spread_pct: &[u64],
    senders: usize,
) -> Vec<tokio::task::JoinHandle<(usize, u64)>> {
    let w = window_s * 1_000_000;
    let mut tasks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        for s in 0..senders {
            let n = per_node[i] / senders + usize::from(s < per_node[i] % senders);
            if n == 0 {
                continue;
            }
            let url = url.clone();
            let spread = Duration::from_micros(w * spread_pct[i] / 100);
            tasks.push(tokio::spawn(async move {
                let client = http_client();
                let mut tick = tokio::time::interval(spread / n as u32);
                let mut admitted = 0u64;
                for _ in 0..n {
                    tick.tick().await;
                    let status = client
                        .get(&url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    assert!(
                        status == 200 || status == 429,
                        "node {i} answered {status}: never a failed request"
                    );
                    if now_us() < start + w {
                        admitted += u64::from(status == 200);
                    }
                }
                (i, admitted)
            }));
        }
    }
    tasks
}

/// Sleeps until the next window of `window_s` seconds starts; returns its
/// start (µs).
pub async fn next_window(window_s: u64) -> u64 {
    let w = window_s * 1_000_000;
    let start = (now_us() / w + 1) * w;
    tokio::time::sleep(Duration::from_micros(start - now_us() + 20_000)).await;
    start
}
