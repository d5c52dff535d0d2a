//! Fuzzes the RFC 9111 rules (`weir_cache::policy`) with header values
//! from both sides: the request's `Cache-Control` and `Pragma`, the
//! response's `Cache-Control`, `Age`, `Date`, `Expires` and `Vary`, and
//! any times. Nothing may panic (a release build aborts on a panic), and
//! every value read from a header stays within the delta-seconds cap.

#![no_main]

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use weir_cache::policy::{self, MAX_DELTA_SECONDS, Overrides};

/// Splits the input into header values at 0xff bytes.
fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == 0xff).collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (times, rest) = data.split_at(8);
    let t = |i: usize| u64::from(u16::from_le_bytes([times[i], times[i + 1]]));
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let req_t = base + Duration::from_secs(t(0));
    let resp_t = req_t + Duration::from_secs(t(2) % 100);
    let now = resp_t + Duration::from_secs(t(4) * t(6));
    let names: [HeaderName; 7] = [
        header::CACHE_CONTROL,
        header::PRAGMA,
        header::CACHE_CONTROL,
        header::AGE,
        header::DATE,
        header::EXPIRES,
        header::VARY,
    ];
    let mut req = HeaderMap::new();
    let mut resp = HeaderMap::new();
    for (i, v) in fields(rest).into_iter().enumerate().take(names.len()) {
        let Ok(v) = HeaderValue::from_bytes(v) else {
            continue;
        };
        let into = if i < 2 { &mut req } else { &mut resp };
        into.append(names[i].clone(), v);
    }
    let d = policy::directives(&resp);
    for v in [
        d.max_age,
        d.s_maxage,
        d.stale_while_revalidate,
        d.stale_if_error,
        d.min_fresh,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v <= MAX_DELTA_SECONDS);
    }
    let status = StatusCode::from_u16(200 + (t(0) % 400) as u16).unwrap_or(StatusCode::OK);
    let rules = Overrides {
        ttl: Duration::from_secs(t(2)),
        force_ttl: None,
    };
    let _ = policy::vary_names(&resp);
    let rq = policy::request_rules(&req);
    if let Ok(f) = policy::storable(&Method::GET, &req, status, &resp, req_t, resp_t, &rules) {
        let _ = policy::usable(&f, &rq, now);
        let _ = policy::stale_if_error(&f, now);
        let _ = f.is_fresh(now);
        let _ = f.staleness(now);
        let _ = f.age(now);
    }
});
