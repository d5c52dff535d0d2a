//! Header handling on the way through: hop-by-hop removal (RFC 9110
//! §7.6.1), forwarding headers (`X-Forwarded-*`, RFC 7239 `Forwarded`),
//! `Via`, and the request id.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes hop-by-hop headers: `Connection` and every field it names, plus
/// the fields that are hop-by-hop by definition. `keep_upgrade` leaves
/// `Upgrade` and `Connection: upgrade` in place for a protocol switch.
/// `keep_te_trailers` keeps `TE: trailers`, which HTTP/2 (gRPC) relies on.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // Most messages carry none of these, or only `Connection: keep-alive`:
    // one pass over the names finds which are there, so absent ones cost
    // no lookup.
    let (mut connection, mut fixed, mut te, mut upgrade) = (false, false, false, false);
    for name in h.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::TE {
            te = true;
        } else if name == header::UPGRADE {
            upgrade = true;
        } else if name == header::TRANSFER_ENCODING
            || name == header::TRAILER
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
        {
            fixed = true;
        }
    }
    if connection {
        // Fields named in `Connection` are hop-by-hop too (RFC 9110
        // §7.6.1). The values are cheap reference-counted clones; the
        // names are looked up without being allocated.
        let mut values = h.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        h.remove(header::CONNECTION);
        for v in first.iter().chain(&rest) {
            let Ok(v) = v.to_str() else { continue };
            for token in v.split(',').map(str::trim) {
                if keep_upgrade && token.eq_ignore_ascii_case("upgrade") {
                    continue;
                }
                h.remove(token);
            }
        }
    }
    if fixed {
        h.remove(KEEP_ALIVE);
        h.remove(PROXY_CONNECTION);
        h.remove(header::TRANSFER_ENCODING);
        h.remove(header::TRAILER);
    }
    if te {
        let trailers_only = keep_te_trailers
            && h.get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !trailers_only {
            h.remove(header::TE);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        h.remove(header::UPGRADE);
    }
}

/// True when the request asks to switch protocols (e.g. WebSocket).
pub fn is_upgrade_request(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// True when `Upgrade` offers `h2c` (RFC 7540 §3.2), which a gateway must
/// never pass on: the upstream would switch its connection to HTTP/2 and
/// read requests the route table never saw.
pub fn is_h2c_upgrade(h: &HeaderMap) -> bool {
    h.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
    })
}

/// Removes what is left of an h2c upgrade offer after the hop-by-hop
/// fields: `Upgrade` and `HTTP2-Settings`, whether or not `Connection`
/// named them.
pub fn strip_h2c(h: &mut HeaderMap) {
    h.remove(header::UPGRADE);
    h.remove(HTTP2_SETTINGS);
}

/// A header value built from pieces in one allocation of exactly its size
/// (a `Bytes` made from a full `Vec` needs no second allocation).
fn value_of(parts: &[&[u8]]) -> Option<HeaderValue> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

/// A client address as forwarding headers write it, formatted once per
/// connection: an IPv4-mapped IPv6 peer (dual-stack listener) is written as
/// IPv4.
#[derive(Clone, Copy)]
pub struct ClientIp {
    ip: IpAddr,
    buf: [u8; 48],
    len: u8,
}

impl std::fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientIp").field(&self.ip).finish()
    }
}

impl ClientIp {
    /// Formats `ip`.
    pub fn new(ip: IpAddr) -> Self {
        use std::io::Write;
        let original = ip;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut buf = [0u8; 48];
        let mut w = &mut buf[..];
        // The longest IPv6 text is 45 bytes; this cannot fail.
        let _ = write!(w, "{ip}");
        let len = (48 - w.len()) as u8;
        ClientIp {
            ip: original,
            buf,
            len,
        }
    }

    /// The address as the peer connected from.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    fn text(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`
/// (set) and an RFC 7239 `Forwarded` element (appended).
pub fn add_forwarding(
    h: &mut HeaderMap,
    client: &ClientIp,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let ip = client.text();
    // X-Forwarded-For: keep what earlier proxies said and append ourselves,
    // the convention every proxy downstream of us expects.
    // Each appended header is looked up once, through its entry.
    match h.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut e) => {
            let v = match e.get().to_str() {
                Ok(prev) if !prev.trim().is_empty() => value_of(&[prev.as_bytes(), b", ", ip]),
                _ => value_of(&[ip]),
            };
            if let Some(v) = v {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            if let Some(v) = value_of(&[ip]) {
                e.insert(v);
            }
        }
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    // The element: `for=IP;proto=P[;host=H]`. RFC 7239: IPv6 addresses are
    // bracketed and quoted; a host that is not a token is quoted. It is
    // sized exactly first, so that it becomes the value without a copy.
    let v6 = client.ip.is_ipv6();
    let host = host.and_then(|v| v.to_str().ok()).map(|host| {
        let token = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        let escapes = if token {
            0
        } else {
            2 + host.bytes().filter(|b| matches!(b, b'\\' | b'"')).count()
        };
        (host, token, escapes)
    });
    let len = 4
        + ip.len()
        + if v6 { 4 } else { 0 }
        + 7
        + proto.len()
        + host.map_or(0, |(h, _, escapes)| 6 + h.len() + escapes);
    let mut elem: Vec<u8> = Vec::with_capacity(len);
    elem.extend_from_slice(b"for=");
    if v6 {
        elem.extend_from_slice(b"\"[");
        elem.extend_from_slice(ip);
        elem.extend_from_slice(b"]\"");
    } else {
        elem.extend_from_slice(ip);
    }
    elem.extend_from_slice(b";proto=");
    elem.extend_from_slice(proto.as_bytes());
    if let Some((host, token, _)) = host {
        elem.extend_from_slice(b";host=");
        if token {
            elem.extend_from_slice(host.as_bytes());
        } else {
            elem.push(b'"');
            for b in host.bytes() {
                if b == b'\\' || b == b'"' {
                    elem.push(b'\\');
                }
                elem.push(b);
            }
            elem.push(b'"');
        }
    }
    debug_assert_eq!(elem.len(), len);
    match h.entry(FORWARDED) {
        Entry::Occupied(mut e) => {
            let v = match e.get().to_str() {
                Ok(prev) if !prev.trim().is_empty() => value_of(&[prev.as_bytes(), b", ", &elem]),
                _ => HeaderValue::from_maybe_shared(bytes::Bytes::from(elem)).ok(),
            };
            if let Some(v) = v {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(elem)) {
                e.insert(v);
            }
        }
    }
}

/// Appends our `Via` element to any existing ones.
pub fn add_via(h: &mut HeaderMap, via: &HeaderValue) {
    match h.entry(header::VIA) {
        Entry::Occupied(mut e) => {
            if let Some(v) = value_of(&[e.get().as_bytes(), b", ", via.as_bytes()]) {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            e.insert(via.clone());
        }
    }
}

/// The client's request id when it is a sane token, otherwise a new one.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    id.simple().encode_lower(&mut buf);
    // One allocation that holds the text and its reference count, so the
    // copies that go upstream and back to the client share it.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false, false);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(KEEP_ALIVE).is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn forwarding_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        let host = HeaderValue::from_static("api.example.com:8080");
        add_forwarding(
            &mut h,
            &ClientIp::new("::1".parse().unwrap()),
            "http",
            Some(&host),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, ::1");
        assert_eq!(
            h[&FORWARDED],
            "for=\"[::1]\";proto=http;host=\"api.example.com:8080\""
        );
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com:8080");
    }

    #[test]
    fn connection_tokens_in_several_values_and_upgrades() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.append(header::CONNECTION, HeaderValue::from_static(" X-A ,x-b"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("Trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h, true, true);
        assert!(h.get("x-a").is_none() && h.get("x-b").is_none());
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::TE], "Trailers", "TE: trailers is kept for HTTP/2");
        assert!(h.get(header::TRANSFER_ENCODING).is_none());

        // Without upgrade: Upgrade goes, a TE other than trailers goes.
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false, true);
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn h2c_upgrade_offers_are_found_and_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("foo, H2C"));
        h.insert(HTTP2_SETTINGS, HeaderValue::from_static("AAMAAABkAAQAAP__"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        assert!(is_h2c_upgrade(&h));
        strip_hop_by_hop(&mut h, false, false);
        strip_h2c(&mut h);
        assert!(h.is_empty(), "{h:?}");
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_h2c_upgrade(&h));
    }

    #[test]
    fn forwarding_first_hop_and_quoting() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("api.example.com");
        add_forwarding(
            &mut h,
            &ClientIp::new("192.0.2.7".parse().unwrap()),
            "https",
            Some(&host),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(
            h[&FORWARDED],
            "for=192.0.2.7;proto=https;host=api.example.com"
        );

        // A host that is not a token is quoted, with `\` and `"` escaped; an
        // IPv4-mapped peer is written as IPv4.
        let mut h = HeaderMap::new();
        h.insert(FORWARDED, HeaderValue::from_static("for=198.51.100.1"));
        let host = HeaderValue::from_static("a\\b\"c:80");
        add_forwarding(
            &mut h,
            &ClientIp::new("::ffff:192.0.2.7".parse().unwrap()),
            "http",
            Some(&host),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(
            h[&FORWARDED],
            "for=198.51.100.1, for=\"[192.0.2.7]\";proto=http;host=\"a\\\\b\\\"c:80\""
        );

        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &ClientIp::new("2001:db8::1".parse().unwrap()),
            "http",
            None,
        );
        assert_eq!(h[&FORWARDED], "for=\"[2001:db8::1]\";proto=http");
        assert!(h.get(&X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn via_is_set_or_appended() {
        let via = HeaderValue::from_static("1.1 weir");
        let mut h = HeaderMap::new();
        add_via(&mut h, &via);
        assert_eq!(h[header::VIA], "1.1 weir");
        add_via(&mut h, &via);
        assert_eq!(h[header::VIA], "1.1 weir, 1.1 weir");
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).len(), 32);
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }
}
