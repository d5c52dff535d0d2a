//! Bodies stream in both directions in constant memory.
//!
//! The proof is differential: the gateway's peak RSS (VmHWM) is read after a
//! warm-up transfer and again after 1 GiB each way (two 1 GiB transfers per
//! direction: with and without `Content-Length`). A gateway that buffered
//! bodies would grow by at least the difference; a streaming one stays where
//! allocator and buffer warm-up left it.

mod common;

use common::{gateway, one_upstream};
use weir_testsupport::{
    Gateway, Upstream, drain_response, http_client, upload_body, upload_body_chunked,
};

const WARM_UP: u64 = 64 << 20;

fn size() -> u64 {
    1 << 30
}

/// Peak resident set of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Growth of the peak allowed between the warm-up and the large transfer.
const GROWTH_CEILING: u64 = 24 << 20;

async fn download(gw: &Gateway, n: u64, chunked: bool) {
    let url = if chunked {
        gw.url(&format!("/bytes/{n}?chunked=1"))
    } else {
        gw.url(&format!("/bytes/{n}"))
    };
    let resp = http_client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let d = drain_response(resp).await.unwrap();
    assert_eq!(d.bytes, n);
    assert!(d.pattern_intact, "download corrupted");
}

async fn upload(gw: &Gateway, n: u64, chunked: bool) {
    let body = if chunked {
        upload_body_chunked(n)
    } else {
        upload_body(n)
    };
    let resp = http_client()
        .post(gw.url("/sink"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["received"], n);
    assert_eq!(v["pattern_intact"], true);
}

#[derive(Clone, Copy)]
enum Direction {
    Download,
    Upload,
}

/// Moves bodies of the warm-up size, then of [`size`], both framings each
/// time, and checks the gateway's peak RSS did not follow.
async fn assert_constant_memory(direction: Direction) {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let mut peaks = Vec::new();
    for n in [WARM_UP, size()] {
        for chunked in [false, true] {
            match direction {
                Direction::Download => download(&gw, n, chunked).await,
                Direction::Upload => upload(&gw, n, chunked).await,
            }
        }
        peaks.push(peak_rss(gw.pid()));
    }
    let (before, after) = (peaks[0], peaks[1]);
    assert!(
        after.saturating_sub(before) < GROWTH_CEILING,
        "peak RSS grew from {} to {} MiB moving {} MiB",
        before >> 20,
        after >> 20,
        size() >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_in_constant_memory() {
    assert_constant_memory(Direction::Download).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_in_constant_memory() {
    assert_constant_memory(Direction::Upload).await;
}
