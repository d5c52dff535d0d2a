//! The response body as the request's log sees it.
//!
//! [`LoggedBody`] counts the body bytes sent to the client into the
//! request's [`RequestLog`] and closes the log when the body is dropped,
//! so the access-log line, the request metrics and the SERVER span cover
//! the whole exchange, body included. It knows nothing of what it wraps:
//! the proxy puts it outermost, after every layer that may change the
//! bytes.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};

use super::RequestLog;

/// A body whose data bytes are counted into a request's log, which is
/// closed when the body is dropped. Without a log (every sink off) it only
/// passes frames on.
pub struct LoggedBody<B> {
    // Declared first so it is dropped first: whatever the inner body
    // reports on drop (the plugins' log phase, the target leaving the
    // in-flight count) happens before the log is closed.
    inner: B,
    log: Option<Box<RequestLog>>,
}

impl<B> LoggedBody<B> {
    /// Wraps `inner`, with no log yet.
    pub fn new(inner: B) -> Self {
        LoggedBody { inner, log: None }
    }

    /// Hands the request's log to this body: it records the bytes that
    /// pass from now on and is closed with the body.
    pub fn attach(&mut self, log: Box<RequestLog>) {
        self.log = Some(log);
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let (Some(l), Some(Ok(f))) = (this.log.as_deref_mut(), &polled)
            && let Some(d) = f.data_ref()
        {
            l.add_bytes_out(d.remaining() as u64);
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
