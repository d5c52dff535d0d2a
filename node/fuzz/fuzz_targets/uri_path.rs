//! Fuzzes request path normalisation (`node/src/uri_path.rs`): on any
//! input it must not panic, and a path it accepts must be accepted again
//! unchanged, start with `/`, have no `.` or `..` segment, and keep no
//! encoded slash unless the route keeps them.
//!
//! The module is compiled in by path rather than through `weir-node`: it
//! needs nothing of the crate but the `EscapedSlashes` choice, and a
//! sanitizer build of the whole node (TLS, Raft, OTLP) would cost minutes
//! per run for no extra coverage of this function.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The one item of `weir_node::config` the normaliser reads.
mod config {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum EscapedSlashes {
        Keep,
        Reject,
        Decode,
    }
}

#[path = "../../src/uri_path.rs"]
#[allow(dead_code)]
mod uri_path;

use config::EscapedSlashes;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = match mode % 3 {
        0 => EscapedSlashes::Keep,
        1 => EscapedSlashes::Reject,
        _ => EscapedSlashes::Decode,
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let _ = uri_path::has_escaped_slash(path);
    let Ok(once) = uri_path::normalize(path, mode) else {
        return;
    };
    let twice = uri_path::normalize(&once, mode).expect("a normalised path is accepted again");
    assert_eq!(twice, once, "normalising is idempotent");
    assert!(once.starts_with('/'));
    assert!(once.split('/').all(|s| s != "." && s != ".."), "{once:?}");
    if mode != EscapedSlashes::Keep {
        assert!(!uri_path::has_escaped_slash(&once), "{once:?}");
    }
});
