//! Header handling on the way through: hop-by-hop removal (RFC 9110
//! §7.6.1), forwarding headers (`X-Forwarded-*`, RFC 7239 `Forwarded`),
//! `Via`, and the request id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: `Connection` and every field it names, plus
/// the fields that are hop-by-hop by definition. `keep_upgrade` leaves
/// `Upgrade` and `Connection: upgrade` in place for a protocol switch.
/// `keep_te_trailers` keeps `TE: trailers`, which HTTP/2 (gRPC) relies on.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // Fields named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            h.remove(&name);
        }
        h.remove(header::CONNECTION);
    }
    h.remove(KEEP_ALIVE);
    h.remove(PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::TRAILER);
    if keep_te_trailers {
        let trailers_only = h
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !trailers_only {
            h.remove(header::TE);
        }
    } else {
        h.remove(header::TE);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
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

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`
/// (set) and an RFC 7239 `Forwarded` element (appended).
pub fn add_forwarding(
    h: &mut HeaderMap,
    client_ip: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut ip_buf = itoa_ip(client_ip);
    // X-Forwarded-For: keep what earlier proxies said and append ourselves,
    // the convention every proxy downstream of us expects.
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip_buf}"),
        _ => ip_buf.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    // RFC 7239: IPv6 addresses are bracketed and quoted.
    if client_ip.is_ipv6() {
        ip_buf = format!("\"[{ip_buf}]\"");
    }
    let mut elem = format!("for={ip_buf};proto={proto}");
    if let Some(host) = host.and_then(|v| v.to_str().ok()) {
        elem.push_str(";host=");
        if host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            elem.push_str(host);
        } else {
            elem.push('"');
            elem.push_str(&host.replace('\\', "\\\\").replace('"', "\\\""));
            elem.push('"');
        }
    }
    let fwd = match h.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {elem}"),
        _ => elem,
    };
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        h.insert(FORWARDED, v);
    }
}

fn itoa_ip(ip: IpAddr) -> String {
    // An IPv4-mapped IPv6 peer (dual-stack listener) is reported as IPv4.
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Appends our `Via` element to any existing ones.
pub fn add_via(h: &mut HeaderMap, via: &HeaderValue) {
    match h.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            if let Ok(v) =
                HeaderValue::from_str(&format!("{prev}, {}", via.to_str().unwrap_or_default()))
            {
                h.insert(header::VIA, v);
            }
        }
        None => {
            h.insert(header::VIA, via.clone());
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
    HeaderValue::from_str(id.simple().encode_lower(&mut buf)).expect("hex is a valid header value")
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
        add_forwarding(&mut h, "::1".parse().unwrap(), "http", Some(&host));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, ::1");
        assert_eq!(
            h[&FORWARDED],
            "for=\"[::1]\";proto=http;host=\"api.example.com:8080\""
        );
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com:8080");
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
