//! Large bodies stream through the upstream in constant memory.
//!
//! Alone in its own test binary so that the peak resident size measured is
//! this transfer's and nothing else's.

use weir_testsupport::{Upstream, drain_response, http_client, upload_body};

const MIB: u64 = 1024 * 1024;
const TRANSFER: u64 = 1024 * MIB;
/// Far below the transfer size: buffering either body would exceed it.
const ALLOWED_GROWTH: u64 = 64 * MIB;

/// Peak resident set size of this process, from /proc.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value in kB");
    kib * 1024
}

#[tokio::test]
async fn large_download_and_upload_use_constant_memory() {
    let up = Upstream::start("big").await;
    let client = http_client();
    // Warm up so connection buffers and the pattern block are counted
    // before the baseline.
    drain_response(
        client
            .get(up.url("/bytes/1048576"))
            .send()
            .await
            .expect("request"),
    )
    .await
    .expect("drain");
    let before = peak_rss();

    let response = client
        .get(up.url(&format!("/bytes/{TRANSFER}")))
        .send()
        .await
        .expect("request");
    let drained = drain_response(response).await.expect("drain");
    assert_eq!(drained.bytes, TRANSFER);
    assert!(drained.pattern_intact);

    let response = client
        .post(up.url("/sink"))
        .body(upload_body(TRANSFER))
        .send()
        .await
        .expect("request");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["received"], TRANSFER);
    assert_eq!(body["pattern_intact"], true);

    let growth = peak_rss().saturating_sub(before);
    assert!(
        growth < ALLOWED_GROWTH,
        "peak memory grew by {} MiB moving {} MiB each way",
        growth / MIB,
        TRANSFER / MIB
    );
}
