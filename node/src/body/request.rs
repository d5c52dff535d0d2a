//! The client's request body on its way upstream.
//!
//! [`ClientBody`] is the body as the client sends it, or as an access-phase
//! plugin read it whole. Once the request is forwarded it waits in a
//! [`BodySlot`], where a failed attempt that never started reading it can
//! leave it for the next one; [`BodySource`] is what the attempt loop asks
//! for a body, whether a retry can still send one, and how far sending got.
//! [`ReqBody`] is the body one attempt sends: it enforces the size limit
//! and stamps progress as it streams, without buffering.
//!
//! This module does not decide when to retry or which error the client
//! gets (that is `proxy`); it reports what happened to the body in
//! [`ClientBodyError`], which [`crate::error`] turns into the answer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;
use crate::clock::mono_ms;

/// What went wrong with the client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// The body is larger than allowed.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The client stopped sending it.
    #[error("the client stopped sending the request body")]
    Timeout,
    /// The client's stream failed.
    #[error("the request body could not be read")]
    Unreadable,
}

/// The client's request body, kept where a failed attempt can hand it back:
/// until an attempt starts reading it, it stays in the slot, so a retry
/// after a connect failure can still send it.
pub struct BodySlot {
    body: std::sync::Mutex<Option<ClientBody>>,
    started: AtomicBool,
    done: AtomicBool,
    progress_ms: AtomicU64,
    limit: u64,
    too_large: AtomicBool,
    client_error: AtomicBool,
    /// True while the last read of the client's body is pending: a stall
    /// then is the client's, not the upstream's.
    waiting_on_client: AtomicBool,
    /// Body bytes read from the client.
    received: AtomicU64,
}

impl BodySlot {
    /// Holds `body` until an attempt reads it, refusing more than `limit`
    /// bytes while it streams (0: no limit).
    pub fn new(body: ClientBody, limit: u64) -> Self {
        BodySlot {
            body: std::sync::Mutex::new(Some(body)),
            started: AtomicBool::new(false),
            done: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            limit,
            too_large: AtomicBool::new(false),
            client_error: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
            received: AtomicU64::new(0),
        }
    }

    /// Body bytes read from the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// The request body as the attempt loop sees it.
pub enum BodySource {
    /// No body: every attempt sends none.
    Empty,
    /// The client's body, in its slot.
    Stream(Arc<BodySlot>),
}

impl BodySource {
    /// A body for the next attempt, or None when it was already consumed.
    pub fn take(&self) -> Option<ReqBody> {
        match self {
            BodySource::Empty => Some(ReqBody::Empty),
            BodySource::Stream(slot) => {
                if slot.started.load(Ordering::Acquire) {
                    return None;
                }
                Some(ReqBody::Stream {
                    slot: slot.clone(),
                    body: None,
                    seen: 0,
                })
            }
        }
    }

    /// Whether a new attempt can still send the whole body.
    pub fn replayable(&self) -> bool {
        match self {
            BodySource::Empty => true,
            BodySource::Stream(slot) => !slot.started.load(Ordering::Acquire),
        }
    }

    /// (body fully sent, ms of last progress).
    pub fn progress(&self, attempt_start: u64) -> (bool, u64) {
        match self {
            BodySource::Empty => (true, attempt_start),
            BodySource::Stream(slot) => {
                let p = slot.progress_ms.load(Ordering::Relaxed).max(attempt_start);
                (slot.done.load(Ordering::Acquire), p)
            }
        }
    }

    /// Whether the body is stalled on the client rather than the upstream.
    pub fn stalled_on_client(&self) -> bool {
        match self {
            BodySource::Empty => false,
            BodySource::Stream(slot) => {
                !slot.done.load(Ordering::Acquire) && slot.waiting_on_client.load(Ordering::Relaxed)
            }
        }
    }

    /// What the client did wrong with its body, if anything: sent too
    /// much, or broke off.
    pub fn client_fault(&self) -> Option<ClientBodyError> {
        match self {
            BodySource::Empty => None,
            BodySource::Stream(slot) => {
                if slot.too_large.load(Ordering::Acquire) {
                    Some(ClientBodyError::TooLarge { limit: slot.limit })
                } else if slot.client_error.load(Ordering::Acquire) {
                    Some(ClientBodyError::Unreadable)
                } else {
                    None
                }
            }
        }
    }
}

/// Body sent to the upstream.
pub enum ReqBody {
    /// No body.
    Empty,
    /// The client's body, streamed.
    Stream {
        /// Where the body waits until an attempt reads it.
        slot: Arc<BodySlot>,
        /// The body, once this attempt took it.
        body: Option<ClientBody>,
        /// Bytes forwarded so far.
        seen: u64,
    },
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body exceeds the limit")]
    TooLarge,
    #[error("reading the client's request body failed: {0}")]
    Client(hyper::Error),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let ReqBody::Stream { slot, body, seen } = this else {
            return Poll::Ready(None);
        };
        if body.is_none() {
            slot.started.store(true, Ordering::Release);
            *body = slot.body.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        slot.waiting_on_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *seen += data.len() as u64;
                    slot.received.store(*seen, Ordering::Relaxed);
                    if slot.limit > 0 && *seen > slot.limit {
                        slot.too_large.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyError::TooLarge))));
                    }
                }
                slot.progress_ms.store(mono_ms(), Ordering::Relaxed);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                slot.client_error.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(BodyError::Client(e)))))
            }
            None => {
                slot.progress_ms.store(mono_ms(), Ordering::Relaxed);
                slot.done.store(true, Ordering::Release);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { body: Some(b), .. } => b.is_end_stream(),
            ReqBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { body: Some(b), .. } => b.size_hint(),
            ReqBody::Stream { slot, .. } => {
                match slot.body.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    Some(b) => b.size_hint(),
                    None => SizeHint::default(),
                }
            }
        }
    }
}

/// The client's request body: still streaming from the client, or read
/// whole by a plugin of the access phase (e.g. to check its digest).
pub enum ClientBody {
    /// Not read yet; it streams upstream as it arrives.
    Streamed(Incoming),
    /// Read whole; sent upstream as one chunk (taken when sent).
    Read(Option<Bytes>),
}

impl ClientBody {
    /// Reads the whole body, refusing more than `limit` bytes (0: no
    /// limit) or a client slower than `timeout`, and keeps it so it is
    /// still sent upstream. Reading again returns the same bytes.
    pub async fn read_all(
        &mut self,
        limit: u64,
        timeout: Duration,
    ) -> Result<Bytes, ClientBodyError> {
        use http_body_util::BodyExt;
        let incoming = match self {
            ClientBody::Read(b) => return Ok(b.clone().unwrap_or_default()),
            ClientBody::Streamed(i) => i,
        };
        if limit > 0 && incoming.size_hint().lower() > limit {
            return Err(ClientBodyError::TooLarge { limit });
        }
        let read = async {
            let mut buf = bytes::BytesMut::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|_| ClientBodyError::Unreadable)?;
                if let Ok(data) = frame.into_data() {
                    if limit > 0 && (buf.len() + data.len()) as u64 > limit {
                        return Err(ClientBodyError::TooLarge { limit });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(buf.freeze())
        };
        let bytes = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ClientBodyError::Timeout)??;
        *self = ClientBody::Read(Some(bytes.clone()));
        Ok(bytes)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Streamed(i) => Pin::new(i).poll_frame(cx),
            ClientBody::Read(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streamed(i) => i.is_end_stream(),
            ClientBody::Read(b) => b.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Streamed(i) => i.size_hint(),
            ClientBody::Read(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
