//! Test clients: reqwest set up for loopback, streamed uploads and
//! downloads that count bytes without keeping them.

use std::time::Duration;

use anyhow::Context as _;

use crate::pattern::{PatternBody, PatternCheck};

/// A reqwest client for HTTP/1.1 that ignores proxy settings from the
/// environment. Keeps connections alive, like any ordinary client.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

/// A reqwest client that speaks h2c (HTTP/2 over plain TCP, prior
/// knowledge) and ignores proxy settings from the environment.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

/// A request body of `n` pattern bytes, generated as it is sent (64 KiB at
/// a time) and announced with `Content-Length`. The `/sink` endpoint checks
/// the pattern arrived intact.
pub fn upload_body(n: u64) -> reqwest::Body {
    reqwest::Body::wrap(PatternBody::new(n))
}

/// Like [`upload_body`] without announcing the length, so HTTP/1.1 sends it
/// chunked.
pub fn upload_body_chunked(n: u64) -> reqwest::Body {
    reqwest::Body::wrap(PatternBody::new(n).without_length())
}

/// What [`drain_response`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Body bytes received.
    pub bytes: u64,
    /// Chunks they came in.
    pub chunks: u64,
    /// Whether the bytes followed the pattern of `/bytes/{n}` from offset 0.
    pub pattern_intact: bool,
}

/// Reads a response body to its end, counting bytes and checking the
/// pattern, without keeping the body.
pub async fn drain_response(mut response: reqwest::Response) -> anyhow::Result<Drained> {
    let mut check = PatternCheck::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading the body after {} bytes", check.bytes()))?
    {
        check.update(&chunk);
    }
    Ok(Drained {
        bytes: check.bytes(),
        chunks: check.chunks(),
        pattern_intact: check.is_intact(),
    })
}
