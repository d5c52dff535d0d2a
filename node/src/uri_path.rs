//! Request path normalisation: the one step that turns the path a client
//! sent into the path that is routed and forwarded, so that the route table
//! and the upstream never read two different paths.
//!
//! [`normalize`] decodes percent-encoded unreserved characters (RFC 3986
//! §2.3, `%2e` included), applies a route's choice for encoded slashes and
//! backslashes ([`EscapedSlashes`]), and refuses what could be read as a
//! dot segment by anyone on the way: `.` and `..` in any spelling, behind a
//! `;` parameter (`..;`), between encoded slashes (`..%2F`, `..%5C`),
//! before an encoded NUL, space or tab a server drops (`..%00`), or
//! through percent-encoded bytes that are not UTF-8 (the overlong `%c0%ae`).
//! Other percent-encodings are kept exactly as sent, case included.
//! Dot segments are refused rather than resolved: clients resolve them
//! before sending (RFC 3986 §5.2), so a request that still carries one is
//! a probe, and refusing keeps the documented 400 for plain `..`. See
//! `docs/adr/0039-path-normalisation-and-http-strictness.md`.
//!
//! It owns the path only: the query string, the host and the route lookup
//! are the proxy's and the router's.

use std::borrow::Cow;

use crate::config::EscapedSlashes;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the request target must be an absolute path")]
    NotAbsolute,
    /// A `%` without two hex digits after it.
    #[error("the path has a `%` that is not followed by two hex digits")]
    BadPercent,
    /// The percent-encoded bytes do not decode to UTF-8 (overlong forms
    /// such as `%c0%ae` among them).
    #[error("the path's percent-encoded bytes are not valid UTF-8")]
    NotUtf8,
    /// A `.` or `..` segment, plain or percent-encoded.
    #[error("the path must not contain `.` or `..` segments")]
    DotSegment,
    /// A `.` or `..` hidden behind `;` parameters, between encoded
    /// slashes or backslashes, or before an encoded NUL, space or tab.
    #[error(
        "the path hides a `.` or `..` segment behind `;`, an encoded slash or a dropped trailing byte"
    )]
    HiddenDotSegment,
    /// `%2F`, `%5C` or `\` on a route set to `escaped_slashes: reject`.
    #[error("the route does not accept encoded slashes or backslashes in the path")]
    EscapedSlash,
}

/// The normalised form of `path` under `slashes`, borrowed when nothing
/// changes. The result is a fixed point (normalising it again returns it
/// unchanged) and has no `.` or `..` segment.
pub fn normalize(path: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let out = if path.bytes().any(|b| b == b'%' || b == b'\\') {
        let rewritten = rewrite(path, slashes)?;
        if rewritten == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(rewritten)
        }
    } else {
        Cow::Borrowed(path)
    };
    check_segments(&out)?;
    Ok(out)
}

/// Whether a normalised path still holds an encoded slash or backslash
/// (only `keep` leaves them).
pub fn has_escaped_slash(path: &str) -> bool {
    let b = path.as_bytes();
    b.contains(&b'\\') || (0..b.len()).any(|i| escaped_separator_at(b, i))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved characters and handles escaped slashes; checks that
/// every `%` starts a valid triple and that what they encode is UTF-8.
fn rewrite(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    // Bytes are copied as runs between the spots that change, so the
    // UTF-8 characters of the input are never split.
    let mut run = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadPercent);
                };
                let v = (h << 4) | l;
                let replace = if is_unreserved(v) {
                    Some(v as char)
                } else if v == b'/' || v == b'\\' {
                    match slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Decode => Some('/'),
                        EscapedSlashes::Keep => None,
                    }
                } else {
                    None
                };
                if let Some(c) = replace {
                    out.push_str(&path[run..i]);
                    out.push(c);
                    run = i + 3;
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Decode => {
                        out.push_str(&path[run..i]);
                        out.push('/');
                        run = i + 1;
                    }
                    EscapedSlashes::Keep => {}
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    out.push_str(&path[run..]);
    if percent_encoding::percent_decode_str(&out)
        .decode_utf8()
        .is_err()
    {
        return Err(PathError::NotUtf8);
    }
    Ok(out)
}

/// Whether `b[i..]` starts with `%2F` or `%5C` (either case).
fn escaped_separator_at(b: &[u8], i: usize) -> bool {
    b[i] == b'%'
        && matches!(
            (b.get(i + 1), b.get(i + 2).map(u8::to_ascii_uppercase)),
            (Some(b'2'), Some(b'F')) | (Some(b'5'), Some(b'C'))
        )
}

/// A segment with its `;` parameters cut off (`%3B` counts as `;`).
fn without_params(seg: &str) -> &str {
    let b = seg.as_bytes();
    for i in 0..b.len() {
        if b[i] == b';'
            || (b[i] == b'%'
                && b.get(i + 1) == Some(&b'3')
                && matches!(b.get(i + 2), Some(b'b' | b'B')))
        {
            return &seg[..i];
        }
    }
    seg
}

fn is_dot(s: &str) -> bool {
    s == "." || s == ".."
}

/// Whether an upstream could read `piece` as a dot segment: after its
/// parameters are cut and the encoded NUL, space and tab that C and
/// Windows servers drop from a segment's end are trimmed, only dots are
/// left (`..;x`, `..%00`, `.%20`, and `...`, which Windows trims to `..`
/// or less).
fn reads_as_dots(piece: &str) -> bool {
    let mut core = without_params(piece);
    while let Some(rest) = ["%00", "%20", "%09"]
        .iter()
        .find_map(|t| core.strip_suffix(t))
    {
        core = rest;
    }
    !core.is_empty() && core.bytes().all(|b| b == b'.')
}

/// Refuses dot segments, and the `..` an upstream could find behind a
/// parameter, an escaped separator or a trailing byte it drops.
fn check_segments(path: &str) -> Result<(), PathError> {
    for seg in path.split('/') {
        if !seg.contains('.') {
            continue;
        }
        if is_dot(seg) {
            return Err(PathError::DotSegment);
        }
        let b = seg.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i <= b.len() {
            let (end, skip) = if i == b.len() {
                (true, 0)
            } else if b[i] == b'\\' {
                (true, 1)
            } else if escaped_separator_at(b, i) {
                (true, 3)
            } else {
                (false, 1)
            };
            if end {
                if reads_as_dots(&seg[start..i]) {
                    return Err(PathError::HiddenDotSegment);
                }
                start = i + skip;
            }
            i += skip.max(1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use EscapedSlashes::{Decode, Keep, Reject};
    use proptest::prelude::*;

    fn ok(path: &str, slashes: EscapedSlashes) -> String {
        normalize(path, slashes)
            .unwrap_or_else(|e| panic!("{path:?} refused: {e}"))
            .into_owned()
    }

    fn err(path: &str, slashes: EscapedSlashes) -> PathError {
        normalize(path, slashes).expect_err(path)
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/a/b",
            "/a/b/",
            "/a.b/c..d/.e",
            "/users/a%2Fb",
            "/caf%c3%a9",
            "/compare/main...dev",
            "/a/.x%20/..y;z",
            "/%20../x",
        ] {
            assert!(matches!(normalize(p, Keep), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn unreserved_characters_are_decoded_and_the_rest_kept_as_sent() {
        assert_eq!(ok("/%41%7a%2D%2e%5F%7E%30", Keep), "/Az-._~0");
        assert_eq!(ok("/a%2ejs", Keep), "/a.js");
        // Reserved and non-ASCII encodings keep their spelling and case.
        assert_eq!(ok("/caf%c3%a9?", Keep), "/caf%c3%a9?");
        assert_eq!(ok("/a%20b%3Fc%25", Keep), "/a%20b%3Fc%25");
        // `%25` is not decoded, so nothing is decoded twice.
        assert_eq!(ok("/%252e%252e/x", Keep), "/%252e%252e/x");
    }

    #[test]
    fn dot_segments_in_every_spelling_are_refused() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/..",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public/%2e./admin",
            "/public/%2e/admin",
        ] {
            assert_eq!(err(p, Keep), PathError::DotSegment, "{p}");
        }
        for p in [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public/.;/admin",
            "/public/..%3b/admin",
            "/public/%2E%2E%2Fadmin",
            "/public/..%2fadmin",
            "/public/..%5cadmin",
            "/public/..%5Cadmin",
            "/public/..\\admin",
            "/public/x%2F..%2Fadmin",
            "/public/x%2F..",
            "/public/..%00/admin",
            "/public/..%20/admin",
            "/public/.%09/admin",
            "/public/..%00%20",
            "/public/.../admin",
            "/public/..%2e/admin",
        ] {
            assert_eq!(err(p, Keep), PathError::HiddenDotSegment, "{p}");
        }
        // Decoded slashes reveal a plain dot segment.
        assert_eq!(err("/public/%2E%2E%2Fadmin", Decode), PathError::DotSegment);
        assert_eq!(err("/public/..\\admin", Decode), PathError::DotSegment);
    }

    #[test]
    fn overlong_and_broken_encodings_are_refused() {
        assert_eq!(err("/public/%c0%ae%c0%ae/admin", Keep), PathError::NotUtf8);
        assert_eq!(err("/public/%e0%80%ae/admin", Keep), PathError::NotUtf8);
        assert_eq!(err("/a/%ff", Keep), PathError::NotUtf8);
        for p in ["/a%", "/a%2", "/a%zz", "/a%2g/b", "/%%41"] {
            assert_eq!(err(p, Keep), PathError::BadPercent, "{p}");
        }
        assert_eq!(err("a/b", Keep), PathError::NotAbsolute);
        assert_eq!(err("", Keep), PathError::NotAbsolute);
    }

    #[test]
    fn escaped_slashes_follow_the_route_choice() {
        assert_eq!(ok("/users/a%2Fb", Keep), "/users/a%2Fb");
        assert_eq!(ok("/users/a%5cb\\c", Keep), "/users/a%5cb\\c");
        assert!(has_escaped_slash("/users/a%2fb"));
        assert!(has_escaped_slash("/users/a\\b"));
        assert!(!has_escaped_slash("/users/a%2Eb%25"));
        assert_eq!(ok("/users/a%2Fb%5Cc\\d", Decode), "/users/a/b/c/d");
        for p in ["/users/a%2Fb", "/a%5cb", "/a\\b"] {
            assert_eq!(err(p, Reject), PathError::EscapedSlash, "{p}");
        }
        assert_eq!(ok("/users/ab", Reject), "/users/ab");
    }

    fn is_hex(b: u8) -> bool {
        b.is_ascii_hexdigit()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any input: no panic; an accepted path is a fixed point without
        /// dot segments, starts with `/`, and only `keep` leaves escaped
        /// slashes in it.
        #[test]
        fn normalising_is_idempotent_and_leaves_no_dot_segment(
            path in "/([a-zA-Z0-9./;\\\\~_-]|%[0-9a-fA-FcCeE.]{0,2}|%2[eEfF]|%5[cC]|%3[bB]|%c0%ae|\u{e9}){0,24}",
            mode in prop::sample::select(&[Keep, Reject, Decode][..]),
        ) {
            if let Ok(once) = normalize(&path, mode) {
                let twice = normalize(&once, mode).expect("a normalised path is accepted again");
                prop_assert_eq!(&*twice, &*once);
                prop_assert!(once.starts_with('/'));
                prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{}", once);
                if mode != Keep {
                    prop_assert!(!has_escaped_slash(&once), "{}", once);
                }
                // Every `%` left starts a full triple.
                let b = once.as_bytes();
                for (i, _) in b.iter().enumerate().filter(|(_, c)| **c == b'%') {
                    prop_assert!(b.len() > i + 2 && is_hex(b[i + 1]) && is_hex(b[i + 2]));
                }
            }
        }

        /// Arbitrary text never panics.
        #[test]
        fn arbitrary_input_never_panics(path in any::<String>()) {
            for mode in [Keep, Reject, Decode] {
                let _ = normalize(&path, mode);
                let _ = has_escaped_slash(&path);
            }
        }
    }
}
