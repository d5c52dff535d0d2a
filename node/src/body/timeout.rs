//! The longest pause a body may take between two frames.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::BoxError;

/// A body that fails once its inner body has kept it waiting longer than
/// `limit` for the next frame. The timer is armed only when the body is
/// actually waiting, and pushed back by every data frame.
pub struct ReadTimeout<B> {
    inner: B,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The error of a [`ReadTimeout`] body that waited too long.
#[derive(Debug, thiserror::Error)]
#[error("body stalled for longer than its read timeout {0:?}")]
pub struct ReadTimeoutError(Duration);

impl<B> ReadTimeout<B> {
    /// Wraps `inner`, allowing pauses of at most `limit`.
    pub fn new(inner: B, limit: Duration) -> Self {
        ReadTimeout {
            inner,
            limit,
            sleep: None,
        }
    }
}

impl<B> Body for ReadTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(s) = this.sleep.as_mut() {
                    s.as_mut().reset(Instant::now() + this.limit);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let limit = this.limit;
                let s = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match s.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ReadTimeoutError(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::convert::Infallible;

    /// Sends one chunk, then waits forever.
    struct Stalls(Option<Bytes>);

    impl Body for Stalls {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.get_mut().0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_after_the_limit() {
        let limit = Duration::from_millis(50);
        let mut b = ReadTimeout::new(Stalls(Some(Bytes::from_static(b"x"))), limit);
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(&first.into_data().unwrap()[..], b"x");
        let started = Instant::now();
        let err = b.frame().await.unwrap().unwrap_err();
        assert!(err.is::<ReadTimeoutError>(), "{err}");
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_body_that_keeps_coming_is_not_cut() {
        let b = ReadTimeout::new(
            crate::body::Full::new(Bytes::from_static(b"abc")),
            Duration::from_millis(1),
        );
        assert_eq!(&b.collect().await.unwrap().to_bytes()[..], b"abc");
    }
}
