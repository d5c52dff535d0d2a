//! Fuzzes the mesh frame decoder (`cluster/mesh/src/frame.rs`), the first
//! thing every byte from a peer meets: on any input it must not panic or
//! allocate from a length field, and a frame it accepts must encode back
//! to exactly the bytes it came from.
//!
//! The module is compiled in by path rather than through `weir-mesh`: it
//! needs only `bytes` and `thiserror`, and a sanitizer build of the mesh
//! (QUIC, TLS) would cost minutes per run for no extra coverage of it.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "../../src/frame.rs"]
#[allow(dead_code)]
mod frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = frame::Frame::decode(Bytes::copy_from_slice(data)) {
        assert!(data.len() <= frame::MAX_FRAME);
        let again = f.encode().expect("a decoded frame encodes");
        assert_eq!(&again[..], data, "decode then encode is the identity");
    }
});
