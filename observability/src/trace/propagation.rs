//! W3C Trace Context (`traceparent`, `tracestate`) in and out of a
//! [`HeaderMap`], without the propagator's allocations on the way in.
//!
//! Rules follow the W3C recommendation: version `ff` is invalid; version
//! `00` is exactly 55 characters; a later version may append fields after
//! a `-`; ids are lowercase hex and not all zeros; only the sampled flag is
//! kept. A request with more than one `traceparent` is treated as having
//! none. A `tracestate` that does not parse is dropped, the parent kept.

use std::str::FromStr;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The `traceparent` header.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The remote parent carried by `headers`, if any and valid.
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let (trace_id, span_id, flags) = parse_traceparent(first.as_bytes())?;
    let state = tracestate(headers);
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

fn tracestate(headers: &HeaderMap) -> TraceState {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let Some(first) = values.next() else {
        return TraceState::NONE;
    };
    // Several tracestate headers form one list (RFC 9110 field lines).
    let joined;
    let raw = match values.next() {
        None => first.to_str().ok(),
        Some(second) => {
            let mut s = String::from(first.to_str().unwrap_or_default());
            for v in std::iter::once(second).chain(values) {
                s.push(',');
                s.push_str(v.to_str().unwrap_or_default());
            }
            joined = s;
            Some(joined.as_str())
        }
    };
    let Some(raw) = raw else {
        return TraceState::NONE;
    };
    // Empty members (`a=1,,b=2`, spaces) are allowed by the grammar.
    let cleaned: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    if cleaned.is_empty() || cleaned.len() > 32 {
        return TraceState::NONE;
    }
    TraceState::from_str(&cleaned.join(",")).unwrap_or(TraceState::NONE)
}

/// Parses a `traceparent` value into ids and flags.
pub fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let v = v.trim_ascii();
    if v.len() < 55 {
        return None;
    }
    let version = hex_u8(&v[0..2])?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    match version {
        0 if v.len() != 55 => return None,
        // A later version may add fields, after a dash.
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = u128::from_str_radix(lower_hex(&v[3..35])?, 16).ok()?;
    let span_id = u64::from_str_radix(lower_hex(&v[36..52])?, 16).ok()?;
    let flags = hex_u8(&v[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

fn lower_hex(b: &[u8]) -> Option<&str> {
    b.iter()
        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        .then(|| std::str::from_utf8(b).ok())
        .flatten()
}

fn hex_u8(b: &[u8]) -> Option<u8> {
    u8::from_str_radix(lower_hex(b)?, 16).ok()
}

/// Writes `traceparent` for `cx` (replacing what the client sent) and
/// `tracestate` when there is one; a client's `tracestate` that did not
/// survive extraction is removed rather than forwarded with a new parent.
pub fn inject(cx: &SpanContext, headers: &mut HeaderMap) {
    if !cx.is_valid() {
        return;
    }
    headers.insert(TRACEPARENT, traceparent_value(cx));
    let state = cx.trace_state();
    let header = if *state == TraceState::NONE {
        String::new()
    } else {
        state.header()
    };
    match HeaderValue::try_from(header) {
        Ok(v) if !v.is_empty() => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

/// `00-<trace id>-<span id>-<flags>`.
pub fn traceparent_value(cx: &SpanContext) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    for (i, b) in cx.trace_id().to_bytes().iter().enumerate() {
        buf[3 + 2 * i] = HEX[usize::from(b >> 4)];
        buf[4 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    buf[35] = b'-';
    for (i, b) in cx.span_id().to_bytes().iter().enumerate() {
        buf[36 + 2 * i] = HEX[usize::from(b >> 4)];
        buf[37 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    buf[52] = b'-';
    buf[53] = b'0';
    buf[54] = if cx.is_sampled() { b'1' } else { b'0' };
    HeaderValue::from_bytes(&buf).expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn extracts_a_valid_parent() {
        let cx = extract(&headers(&[("traceparent", TP), ("tracestate", "a=1, b=2")])).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(cx.trace_state().header(), "a=1,b=2");
    }

    #[test]
    fn rejects_invalid_parents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse_traceparent(later.as_bytes()).is_some());
        // Two traceparents: which one is meant is unknown.
        assert!(extract(&headers(&[("traceparent", TP), ("traceparent", TP)])).is_none());
    }

    #[test]
    fn keeps_only_the_sampled_flag() {
        let (_, _, flags) =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap();
        assert_eq!(flags, TraceFlags::SAMPLED);
        let (_, _, flags) =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02").unwrap();
        assert_eq!(flags, TraceFlags::default());
    }

    #[test]
    fn a_broken_tracestate_keeps_the_parent() {
        let cx = extract(&headers(&[
            ("traceparent", TP),
            ("tracestate", "no equals sign"),
        ]))
        .unwrap();
        assert_eq!(*cx.trace_state(), TraceState::NONE);
        let cx = extract(&headers(&[
            ("traceparent", TP),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]))
        .unwrap();
        assert_eq!(cx.trace_state().header(), "a=1,b=2");
    }

    #[test]
    fn inject_replaces_the_clients_headers() {
        let cx = extract(&headers(&[("traceparent", TP)])).unwrap();
        let mut out = headers(&[("traceparent", "junk"), ("tracestate", "stale=1")]);
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], TP);
        assert!(out.get("tracestate").is_none());
        let cx = extract(&headers(&[("traceparent", TP), ("tracestate", "k=v")])).unwrap();
        inject(&cx, &mut out);
        assert_eq!(out["tracestate"], "k=v");
    }

    proptest::proptest! {
        /// Whatever we inject, we extract again, and so does the SDK's own
        /// propagator.
        #[test]
        fn round_trips(trace in 1u128.., span in 1u64.., sampled: bool) {
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let cx = SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, false, TraceState::NONE);
            let mut h = HeaderMap::new();
            inject(&cx, &mut h);
            let back = extract(&h).unwrap();
            proptest::prop_assert_eq!(back.trace_id(), cx.trace_id());
            proptest::prop_assert_eq!(back.span_id(), cx.span_id());
            proptest::prop_assert_eq!(back.is_sampled(), sampled);

            let carrier: std::collections::HashMap<String, String> = h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let sdk = TraceContextPropagator::new().extract(&carrier);
            proptest::prop_assert_eq!(sdk.span().span_context().trace_id(), cx.trace_id());
            proptest::prop_assert_eq!(sdk.span().span_context().span_id(), cx.span_id());
        }

        #[test]
        fn never_panics(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = parse_traceparent(&raw);
        }

        /// On version-00 headers with the flags the SDK's propagator knows,
        /// we agree with it. (It refuses flags above `02`; the W3C text says
        /// unknown flags are ignored, so `03` is sampled here.)
        #[test]
        fn agrees_with_the_sdk(raw in "00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-2]") {
            let ours = parse_traceparent(raw.as_bytes());
            let carrier = std::collections::HashMap::from([("traceparent".to_string(), raw.clone())]);
            let sdk = TraceContextPropagator::new().extract(&carrier);
            let sdk = sdk.span().span_context().clone();
            proptest::prop_assert_eq!(ours.is_some(), sdk.is_valid());
            if let Some((t, s, f)) = ours {
                proptest::prop_assert_eq!((t, s, f), (sdk.trace_id(), sdk.span_id(), sdk.trace_flags()));
            }
        }
    }
}
