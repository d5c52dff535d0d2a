//! Request loops the gateway tests share: send a request many times and
//! keep the statuses, send a batch at once, send until a status comes, and
//! run `weir validate` on a config that must be refused.
//!
//! The request itself is the caller's: each helper takes a closure that
//! builds a fresh `reqwest::RequestBuilder` (headers, auth, body), so these
//! loops never decide what is sent, only how often and when. What counts
//! as a pass is the caller's too; the helpers return what they saw.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use crate::wait::wait_for;

/// Sends `n` requests one after the other; their statuses in order.
///
/// # Panics
/// If a request fails without a response.
pub async fn statuses<F>(n: usize, mut request: F) -> Vec<u16>
where
    F: FnMut() -> reqwest::RequestBuilder,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(send(request()).await.status().as_u16());
    }
    out
}

/// Sends requests one after the other for `span`; their statuses in order.
///
/// # Panics
/// If a request fails without a response.
pub async fn statuses_during<F>(span: Duration, mut request: F) -> Vec<u16>
where
    F: FnMut() -> reqwest::RequestBuilder,
{
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < span {
        out.push(send(request()).await.status().as_u16());
    }
    out
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// Runs `n` copies of `task` at once on the runtime and returns their
/// results in the order they were started.
///
/// # Panics
/// If a task panics.
pub async fn concurrently<F, Fut, T>(n: usize, mut task: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(task())).collect();
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        out.push(handle.await.expect("a concurrent request task panicked"));
    }
    out
}

/// Sends the request again and again until it is answered with `status`,
/// and returns that response. Requests that fail without a response count
/// as misses.
///
/// # Panics
/// If `timeout` passes first; the message names `what` was awaited.
pub async fn until_status<F>(
    what: &str,
    timeout: Duration,
    status: u16,
    mut request: F,
) -> reqwest::Response
where
    F: FnMut() -> reqwest::RequestBuilder,
{
    wait_for(what, timeout, || {
        let pending = request().send();
        async move {
            let response = pending.await.ok()?;
            (response.status().as_u16() == status).then_some(response)
        }
    })
    .await
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed without a response: {e}"))
}

/// Runs `<bin> validate -f <file>` on `yaml` (written as is to a temp
/// file), asserts it exits with 2 and that its stderr holds every line of
/// `wants`; returns the stderr for further checks.
///
/// # Panics
/// If the binary cannot run, exits otherwise, or a wanted line is missing;
/// the message shows the stderr.
pub fn assert_rejected(bin: &Path, yaml: &str, wants: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, yaml).expect("write the config");
    let out = Command::new(bin)
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "validate exit status; stderr:\n{err}"
    );
    for want in wants {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_counts_one_status() {
        assert_eq!(count(&[200, 429, 200, 503], 200), 2);
        assert_eq!(count(&[], 200), 0);
    }

    #[tokio::test]
    async fn concurrently_keeps_the_start_order() {
        let mut i = 0;
        let out = concurrently(4, || {
            i += 1;
            let n = i;
            async move { n * 10 }
        })
        .await;
        assert_eq!(out, [10, 20, 30, 40]);
    }
}
