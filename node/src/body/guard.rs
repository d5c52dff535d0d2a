//! Ties what an exchange holds (a pooled connection, an in-flight count) to
//! the body that finishes the exchange.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};

/// What a [`Guarded`] body reports to.
pub trait BodyGuard {
    /// The body is known to be complete: its last frame has been read, or
    /// it was empty from the start. Called at most once.
    fn on_end(&mut self);
    /// The body failed (the inner body's own error, not a wrapper's above
    /// this one).
    fn on_error(&mut self);
}

/// A body that tells its guard when it ends or fails and keeps the guard
/// until it is dropped, so whatever the guard releases on drop lives
/// exactly as long as the body.
pub struct Guarded<B, G> {
    inner: B,
    guard: G,
    ended: bool,
}

impl<B: Body, G: BodyGuard> Guarded<B, G> {
    /// Wraps `inner`. A body known to be empty already (HEAD, 204, 304,
    /// `Content-Length: 0`) is never polled, so it ends here.
    pub fn new(inner: B, guard: G) -> Self {
        let mut this = Guarded {
            inner,
            guard,
            ended: false,
        };
        if this.inner.is_end_stream() {
            this.end();
        }
        this
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.guard.on_end();
        }
    }
}

impl<B, G> Body for Guarded<B, G>
where
    B: Body + Unpin,
    G: BodyGuard + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            // With a known length, hyper stops polling after the last
            // chunk rather than waiting for the end.
            Some(Ok(_)) if this.inner.is_end_stream() => this.end(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.guard.on_error(),
            None => this.end(),
        }
        Poll::Ready(polled)
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
    use crate::body::Full;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Vec<&'static str>>>);

    impl BodyGuard for Seen {
        fn on_end(&mut self) {
            self.0.lock().unwrap().push("end");
        }
        fn on_error(&mut self) {
            self.0.lock().unwrap().push("error");
        }
    }

    impl Drop for Seen {
        fn drop(&mut self) {
            self.0.lock().unwrap().push("drop");
        }
    }

    #[tokio::test]
    async fn ends_once_at_the_last_chunk_and_drops_with_the_body() {
        let seen = Seen::default();
        let log = seen.0.clone();
        let mut b = Guarded::new(Full::new(Bytes::from_static(b"abc")), seen);
        assert!(log.lock().unwrap().is_empty());
        let data = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"abc");
        assert_eq!(*log.lock().unwrap(), ["end"]);
        assert!(b.frame().await.is_none());
        assert_eq!(*log.lock().unwrap(), ["end"], "the end is reported once");
        drop(b);
        assert_eq!(*log.lock().unwrap(), ["end", "drop"]);
    }

    #[test]
    fn an_empty_body_ends_before_it_is_polled() {
        let seen = Seen::default();
        let log = seen.0.clone();
        let b = Guarded::new(Full::empty(), seen);
        assert_eq!(*log.lock().unwrap(), ["end"]);
        drop(b);
    }

    /// Fails on its first poll.
    struct Fails;

    impl Body for Fails {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(Err(std::io::Error::other("reset"))))
        }
    }

    #[tokio::test]
    async fn a_failed_body_reports_the_failure_not_an_end() {
        let seen = Seen::default();
        let log = seen.0.clone();
        let mut b = Guarded::new(Fails, seen);
        let err = b.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "reset");
        drop(b);
        assert_eq!(*log.lock().unwrap(), ["error", "drop"]);
    }
}
