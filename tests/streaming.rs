//! Bodies stream in both directions in constant memory.
//!
//! The gateway's peak RSS is read from /proc after pushing the bodies
//! through, and must stay far below the bytes moved. `WEIR_SLOW=1` moves
//! 1 GiB each way; by default 256 MiB keeps CI quick while still being
//! many times any buffer.

mod common;

use common::{gateway, one_upstream};
use weir_testsupport::{Upstream, drain_response, http_client, upload_body, upload_body_chunked};

fn size() -> u64 {
    if std::env::var_os("WEIR_SLOW").is_some() {
        1 << 30
    } else {
        256 << 20
    }
}

/// Peak resident set of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

const RSS_CEILING: u64 = 96 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_in_constant_memory() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let n = size();
    for chunked in [false, true] {
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
    let rss = peak_rss(gw.pid());
    assert!(
        rss < RSS_CEILING,
        "peak RSS {} MiB after {} MiB each way",
        rss >> 20,
        n >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_in_constant_memory() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let n = size();
    for chunked in [false, true] {
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
    let rss = peak_rss(gw.pid());
    assert!(
        rss < RSS_CEILING,
        "peak RSS {} MiB after {} MiB each way",
        rss >> 20,
        n >> 20
    );
}
