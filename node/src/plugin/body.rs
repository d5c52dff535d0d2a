//! The body and log phases of a route's plugin chain, as a body layer.
//!
//! [`PluginBody`] wraps whatever body the client is about to get (the
//! upstream's, a plugin's early answer, a gateway error, a replaced body)
//! and runs each data chunk through the chain's [`Plugin::response_body`],
//! the chain's [`Plugin::response_end`] at the end, and its
//! [`Plugin::log`] when dropped. It does not know where its inner body
//! comes from nor what is wrapped around it (the request's log, in
//! `telemetry`); `proxy` composes them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

#[cfg(doc)]
use super::Plugin;
use super::{Chain, Outcome, RequestCtx};
use crate::body::BoxError;

/// A response body passing through the body and log phases.
pub struct PluginBody<B: Body> {
    inner: B,
    chain: Arc<Chain>,
    ctx: RequestCtx,
    status: StatusCode,
    sent: u64,
    completed: bool,
    /// A non-data frame (trailers) that arrived at the end of the body and
    /// waits until the plugins' last bytes are sent.
    held: Option<Frame<Bytes>>,
    /// The end phase has run.
    finished: bool,
}

impl<B: Body> PluginBody<B> {
    /// Runs `chain`'s body phases over `inner`, a response sent with
    /// `status`; its log phase runs when this body is dropped.
    pub(super) fn new(inner: B, chain: Arc<Chain>, ctx: RequestCtx, status: StatusCode) -> Self {
        PluginBody {
            inner,
            chain,
            ctx,
            status,
            sent: 0,
            completed: false,
            held: None,
            finished: false,
        }
    }
}

impl<B> PluginBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Runs the end phase: each plugin's held-back bytes pass the body
    /// phase of the plugins after it. Returns them as one data frame
    /// (possibly empty).
    fn finish(&mut self) -> Frame<Bytes> {
        self.finished = true;
        let mut pending = Bytes::new();
        for e in self.chain.entries.iter() {
            if !pending.is_empty() {
                e.plugin.response_body(&mut pending, &mut self.ctx);
            }
            if let Some(tail) = e.plugin.response_end(&mut self.ctx) {
                pending = concat(pending, tail);
            }
        }
        self.sent += pending.len() as u64;
        Frame::data(pending)
    }
}

impl<B> Body for PluginBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    /// Polls the wrapped body, filtering each data chunk.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            // The plugins' last bytes went out; what is left is the held
            // trailers frame, then the end.
            this.completed = this.held.is_none() || this.completed;
            return Poll::Ready(this.held.take().map(Ok));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        if this.chain.filters_body {
                            for e in this.chain.entries.iter() {
                                e.plugin.response_body(&mut data, &mut this.ctx);
                            }
                        }
                        this.sent += data.len() as u64;
                        if this.chain.filters_body && this.inner.is_end_stream() {
                            // A body of known length ends with its last
                            // chunk: hyper polls no further, so the end
                            // phase runs now and its bytes join this chunk.
                            let tail = this.finish();
                            if let Ok(tail) = tail.into_data() {
                                data = concat(data, tail);
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) if this.chain.filters_body => {
                        // Trailers end the data: the plugins finish first.
                        this.held = Some(frame);
                        return Poll::Ready(Some(Ok(this.finish())));
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None if this.chain.filters_body && !this.finished => {
                let last = this.finish();
                if last.data_ref().is_some_and(|d| d.is_empty()) {
                    this.completed = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(last)))
            }
            None => {
                this.completed = true;
                Poll::Ready(None)
            }
        }
    }

    /// Whether the wrapped body is known to be complete.
    fn is_end_stream(&self) -> bool {
        if self.chain.filters_body {
            // The end phase may still add bytes.
            self.finished && self.held.is_none()
        } else {
            self.inner.is_end_stream()
        }
    }

    /// Size hint of the wrapped body (unknown once a filter may change it).
    fn size_hint(&self) -> SizeHint {
        if self.chain.filters_body {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

/// `a` then `b`, copying only when both hold bytes.
fn concat(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let mut joined = Vec::with_capacity(a.len() + b.len());
    joined.extend_from_slice(&a);
    joined.extend_from_slice(&b);
    Bytes::from(joined)
}

impl<B: Body> Drop for PluginBody<B> {
    fn drop(&mut self) {
        let completed = self.completed || self.inner.is_end_stream();
        let outcome = Outcome {
            status: self.status,
            body_bytes: self.sent,
            completed,
        };
        for e in self.chain.entries.iter() {
            e.plugin.log(&self.ctx, &outcome);
        }
    }
}
