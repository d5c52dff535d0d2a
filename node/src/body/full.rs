//! A body the gateway made in one piece.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A body made of at most one chunk, held until it is polled.
///
/// Unlike `http_body_util::Full`, a chunk that happens to be empty is still
/// sent as one (empty) data frame, so the body is not complete until it has
/// been polled; only [`Full::empty`] is complete from the start.
#[derive(Debug, Default)]
pub struct Full(Option<Bytes>);

impl Full {
    /// A body made of `b`.
    pub fn new(b: Bytes) -> Self {
        Full(Some(b))
    }

    /// No body at all.
    pub fn empty() -> Self {
        Full(None)
    }

    /// Bytes not polled yet.
    pub fn len(&self) -> u64 {
        self.0.as_ref().map_or(0, |b| b.len() as u64)
    }

    /// Whether no bytes are left to poll.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Body for Full {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_empty_chunk_is_still_one_frame() {
        let mut b = Full::new(Bytes::new());
        assert!(!b.is_end_stream());
        let f = b.frame().await.expect("one frame").expect("infallible");
        assert_eq!(f.into_data().expect("data").len(), 0);
        assert!(b.is_end_stream());
        assert!(b.frame().await.is_none());
        assert!(Full::empty().is_end_stream());
        assert_eq!(Full::empty().size_hint().exact(), Some(0));
    }
}
