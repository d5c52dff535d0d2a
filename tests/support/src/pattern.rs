//! The deterministic byte pattern used for large bodies in both directions.
//!
//! Byte `i` of every generated body is `i % 251`. The period is prime, so a
//! dropped, duplicated or reordered chunk shifts the pattern and is caught by
//! [`PatternCheck`]. Bodies are sliced out of one shared block, so producing
//! a chunk never allocates and a 1 GiB body uses the same memory as 1 KiB.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Size of the chunks a [`PatternBody`] yields.
pub const CHUNK_SIZE: usize = 64 * 1024;

const PERIOD: usize = 251;

/// One chunk plus one period, so any chunk is a slice of it.
static BLOCK: LazyLock<Bytes> = LazyLock::new(|| {
    (0..CHUNK_SIZE + PERIOD)
        .map(|i| (i % PERIOD) as u8)
        .collect::<Vec<u8>>()
        .into()
});

/// The pattern byte at `offset` of a body.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % PERIOD as u64) as u8
}

/// A body of `len` pattern bytes, produced chunk by chunk on demand.
///
/// Usable as a server response body and, through `reqwest::Body::wrap`, as a
/// streamed request body (see [`crate::upload_body`]).
#[derive(Debug, Clone)]
pub struct PatternBody {
    offset: u64,
    len: u64,
    exact_length: bool,
}

impl PatternBody {
    /// A body of `len` bytes that announces its length (`Content-Length`).
    pub fn new(len: u64) -> PatternBody {
        PatternBody {
            offset: 0,
            len,
            exact_length: true,
        }
    }

    /// The same bytes without announcing the length, so HTTP/1.1 sends them
    /// with `Transfer-Encoding: chunked`.
    pub fn without_length(mut self) -> PatternBody {
        self.exact_length = false;
        self
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let remaining = this.len - this.offset;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let n = remaining.min(CHUNK_SIZE as u64) as usize;
        let start = (this.offset % PERIOD as u64) as usize;
        this.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(BLOCK.slice(start..start + n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset == self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_length {
            SizeHint::with_exact(self.len - self.offset)
        } else {
            SizeHint::default()
        }
    }
}

/// Counts bytes fed to it and checks they follow the pattern from offset 0.
#[derive(Debug, Clone, Default)]
pub struct PatternCheck {
    bytes: u64,
    chunks: u64,
    first_mismatch: Option<u64>,
}

impl PatternCheck {
    /// A check that has seen nothing yet.
    pub fn new() -> PatternCheck {
        PatternCheck::default()
    }

    /// Feeds the next chunk of the body.
    pub fn update(&mut self, mut chunk: &[u8]) {
        self.chunks += 1;
        while !chunk.is_empty() {
            let n = chunk.len().min(CHUNK_SIZE);
            if self.first_mismatch.is_none() {
                let start = (self.bytes % PERIOD as u64) as usize;
                let expected = &BLOCK[start..start + n];
                // Slice equality is a memcmp, fast even in debug builds;
                // the byte-wise search runs only on a mismatch.
                if chunk[..n] != *expected {
                    let i = chunk[..n]
                        .iter()
                        .zip(expected)
                        .position(|(a, b)| a != b)
                        .expect("unequal slices of equal length differ somewhere");
                    self.first_mismatch = Some(self.bytes + i as u64);
                }
            }
            self.bytes += n as u64;
            chunk = &chunk[n..];
        }
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Non-empty or empty chunks fed so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Whether every byte seen so far matched the pattern.
    pub fn is_intact(&self) -> bool {
        self.first_mismatch.is_none()
    }

    /// Offset of the first byte that did not match, if any.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn body_yields_the_pattern_in_chunks() {
        let len = 3 * CHUNK_SIZE as u64 + 17;
        let mut body = PatternBody::new(len);
        assert_eq!(body.size_hint().exact(), Some(len));
        let mut check = PatternCheck::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("infallible").into_data().expect("data frame");
            assert!(data.len() <= CHUNK_SIZE);
            check.update(&data);
        }
        assert_eq!(check.bytes(), len);
        assert_eq!(check.chunks(), 4);
        assert!(check.is_intact());
    }

    #[test]
    fn check_finds_the_first_wrong_byte() {
        let mut check = PatternCheck::new();
        check.update(&[0, 1, 2]);
        check.update(&[3, 9, 5]);
        assert_eq!(check.first_mismatch(), Some(4));
        assert_eq!(check.bytes(), 6);
    }

    #[test]
    fn check_notices_a_dropped_chunk() {
        let mut check = PatternCheck::new();
        let block: Vec<u8> = (0..1000u64).map(pattern_byte).collect();
        check.update(&block[..500]);
        check.update(&block[600..]);
        assert!(!check.is_intact());
    }

    #[test]
    fn unknown_length_hides_the_size() {
        let body = PatternBody::new(10).without_length();
        assert_eq!(body.size_hint().exact(), None);
    }
}
