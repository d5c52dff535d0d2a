//! The mesh frame: what one request, response or datagram carries, and
//! the checks every received frame passes before anything else looks at
//! it. It owns the byte layout and nothing about connections.
//!
//! Layout, version 1 (all integers big-endian):
//!
//! ```text
//! version u8 | flags u8 | kind u16 | seq u64 | sender_len u8 | sender | body_len u32 | body
//! ```
//!
//! - `version` is [`VERSION`]; any other value is refused before the rest
//!   is read, so a later version can change everything after it.
//! - `flags`: [`FLAG_RESPONSE`], [`FLAG_ERROR`] (a response whose body is
//!   the remote error text); other bits are refused.
//! - `kind` names what the body is; handlers register per kind.
//! - `seq` counts frames per connection, direction and channel (streams,
//!   datagrams) from 1; the receiver refuses a number it has seen (see
//!   [`crate::replay`]).
//! - `sender` is the sending node's id; it must be the authenticated peer.
//! - `body_len` must equal what follows: no trailing bytes, no short body.
//!
//! A whole frame is at most [`MAX_FRAME`] bytes. The length field is
//! checked against it before the body is touched, and decoding slices the
//! received buffer (whose size the reader bounded by [`MAX_FRAME`]) instead
//! of allocating from the field.

use bytes::{BufMut, Bytes, BytesMut};

/// The frame format version this node speaks.
pub const VERSION: u8 = 1;
/// Largest frame, header included, in bytes. Stream readers stop at this
/// many bytes; a datagram is further bounded by the path.
pub const MAX_FRAME: usize = 1024 * 1024;
/// Longest sender id, in bytes.
pub const MAX_SENDER: usize = 255;
/// The frame answers a request.
pub const FLAG_RESPONSE: u8 = 0x01;
/// The response carries the remote error text instead of a result.
pub const FLAG_ERROR: u8 = 0x02;

const KNOWN_FLAGS: u8 = FLAG_RESPONSE | FLAG_ERROR;
/// Header bytes besides the sender: version, flags, kind, seq, sender
/// length, body length.
const FIXED_HEADER: usize = 1 + 1 + 2 + 8 + 1 + 4;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// [`FLAG_RESPONSE`], [`FLAG_ERROR`].
    pub flags: u8,
    /// What the body is.
    pub kind: u16,
    /// Sequence number (from 1) in its connection, direction and channel.
    pub seq: u64,
    /// The sending node's id.
    pub sender: String,
    /// The payload.
    pub body: Bytes,
}

/// Why a received frame was refused. [`FrameError::reason`] is the label
/// counters and logs use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version byte is not [`VERSION`].
    #[error("frame version {0} is not supported (this node speaks {VERSION})")]
    UnknownVersion(u8),
    /// Larger than [`MAX_FRAME`] (or the path's datagram size).
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Its (claimed) length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Does not parse; the text names the field.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// Claims a sender other than the authenticated peer.
    #[error("frame claims sender `{claimed}` on the connection of `{peer}`")]
    ForgedSender {
        /// The `sender` field.
        claimed: String,
        /// Who the connection authenticated.
        peer: String,
    },
    /// A sequence number already seen, or too old to tell.
    #[error("frame sequence number {0} was already seen or is too old")]
    Replayed(u64),
    /// No handler for this kind.
    #[error("no handler for frame kind {0}")]
    UnknownKind(u16),
}

/// Every refusal reason label, in a fixed order (metrics iterate it).
pub const REFUSAL_REASONS: [&str; 6] = [
    "unknown_version",
    "oversized",
    "malformed",
    "forged_sender",
    "replayed",
    "unknown_kind",
];

impl FrameError {
    /// The reason label: one of [`REFUSAL_REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::UnknownVersion(_) => REFUSAL_REASONS[0],
            FrameError::Oversized { .. } => REFUSAL_REASONS[1],
            FrameError::Malformed(_) => REFUSAL_REASONS[2],
            FrameError::ForgedSender { .. } => REFUSAL_REASONS[3],
            FrameError::Replayed(_) => REFUSAL_REASONS[4],
            FrameError::UnknownKind(_) => REFUSAL_REASONS[5],
        }
    }

    /// Index of [`FrameError::reason`] in [`REFUSAL_REASONS`].
    pub(crate) fn index(&self) -> usize {
        REFUSAL_REASONS
            .iter()
            .position(|r| *r == self.reason())
            .unwrap_or(0)
    }
}

impl Frame {
    /// Bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER + self.sender.len() + self.body.len()
    }

    /// The wire form.
    ///
    /// # Errors
    /// [`FrameError::Oversized`] past [`MAX_FRAME`];
    /// [`FrameError::Malformed`] for a sender longer than [`MAX_SENDER`].
    pub fn encode(&self) -> Result<Bytes, FrameError> {
        let len = self.encoded_len();
        if len > MAX_FRAME {
            return Err(FrameError::Oversized {
                len,
                max: MAX_FRAME,
            });
        }
        let sender_len =
            u8::try_from(self.sender.len()).map_err(|_| FrameError::Malformed("sender"))?;
        let body_len = u32::try_from(self.body.len()).map_err(|_| FrameError::Oversized {
            len,
            max: MAX_FRAME,
        })?;
        let mut out = BytesMut::with_capacity(len);
        out.put_u8(VERSION);
        out.put_u8(self.flags);
        out.put_u16(self.kind);
        out.put_u64(self.seq);
        out.put_u8(sender_len);
        out.put_slice(self.sender.as_bytes());
        out.put_u32(body_len);
        out.put_slice(&self.body);
        Ok(out.freeze())
    }

    /// Parses one frame that must fill `buf` exactly. Never panics and
    /// never allocates from a length field: the body is a slice of `buf`.
    ///
    /// # Errors
    /// The first problem found, see [`FrameError`].
    pub fn decode(buf: Bytes) -> Result<Frame, FrameError> {
        let Some(&version) = buf.first() else {
            return Err(FrameError::Malformed("empty frame"));
        };
        if version != VERSION {
            return Err(FrameError::UnknownVersion(version));
        }
        if buf.len() > MAX_FRAME {
            return Err(FrameError::Oversized {
                len: buf.len(),
                max: MAX_FRAME,
            });
        }
        let mut r = Reader { buf: &buf, at: 1 };
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::Malformed("flags has unknown bits"));
        }
        let kind = r.u16("kind")?;
        let seq = r.u64("seq")?;
        let sender_len = usize::from(r.u8("sender_len")?);
        let sender = r.take(sender_len, "sender")?;
        let sender = std::str::from_utf8(sender)
            .map_err(|_| FrameError::Malformed("sender is not UTF-8"))?
            .to_string();
        let body_len = r.u32("body_len")? as usize;
        if body_len > MAX_FRAME {
            return Err(FrameError::Oversized {
                len: body_len,
                max: MAX_FRAME,
            });
        }
        let start = r.at;
        if buf.len() - start != body_len {
            return Err(FrameError::Malformed(
                "body_len does not match the bytes that follow",
            ));
        }
        if seq == 0 {
            return Err(FrameError::Malformed("seq is 0"));
        }
        Ok(Frame {
            flags,
            kind,
            seq,
            sender,
            body: buf.slice(start..),
        })
    }
}

/// Bounds-checked reads from a frame.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(FrameError::Malformed(field))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            flags: FLAG_RESPONSE,
            kind: 7,
            seq: 42,
            sender: "node-a".into(),
            body: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn round_trips() {
        let f = frame();
        let wire = f.encode().expect("encodes");
        assert_eq!(wire.len(), f.encoded_len());
        assert_eq!(Frame::decode(wire).expect("decodes"), f);
    }

    #[test]
    fn refuses_each_kind_of_bad_input_without_panicking() {
        let wire = frame().encode().expect("encodes").to_vec();
        // Every truncation is malformed (or empty), never a panic.
        for n in 0..wire.len() {
            let e = Frame::decode(Bytes::copy_from_slice(&wire[..n])).expect_err("truncated");
            assert_eq!(e.reason(), "malformed", "{n}: {e}");
        }
        let mut v = wire.clone();
        v[0] = 2;
        assert_eq!(
            Frame::decode(Bytes::from(v)),
            Err(FrameError::UnknownVersion(2))
        );
        let mut v = wire.clone();
        v[1] = 0x80;
        assert_eq!(
            Frame::decode(Bytes::from(v)).map_err(|e| e.reason()),
            Err("malformed")
        );
        // A length field claiming 4 GiB is refused before anything is
        // allocated for it.
        let mut v = wire.clone();
        let at = FIXED_HEADER - 4 + "node-a".len();
        v[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Frame::decode(Bytes::from(v)),
            Err(FrameError::Oversized { .. })
        ));
        let mut v = wire.clone();
        v.push(0);
        assert_eq!(
            Frame::decode(Bytes::from(v)).map_err(|e| e.reason()),
            Err("malformed")
        );
        let big = vec![VERSION; MAX_FRAME + 1];
        assert!(matches!(
            Frame::decode(Bytes::from(big)),
            Err(FrameError::Oversized { .. })
        ));
        let mut f = frame();
        f.body = Bytes::from(vec![0u8; MAX_FRAME]);
        assert!(matches!(f.encode(), Err(FrameError::Oversized { .. })));
    }

    use proptest::collection::vec;
    use proptest::prelude::any;

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            mut v in vec(any::<u8>(), 0..64),
            versioned in any::<bool>(),
        ) {
            // Half the inputs get past the version byte.
            if versioned && !v.is_empty() {
                v[0] = VERSION;
            }
            let _ = Frame::decode(Bytes::from(v));
        }

        #[test]
        fn any_frame_round_trips(
            flags in 0u8..4,
            kind in any::<u16>(),
            seq in 1u64..,
            sender in "[a-z0-9._-]{0,63}",
            body in vec(any::<u8>(), 0..256),
        ) {
            let f = Frame { flags, kind, seq, sender, body: Bytes::from(body) };
            let wire = f.encode().expect("encodes");
            proptest::prop_assert_eq!(Frame::decode(wire), Ok(f));
        }
    }
}
