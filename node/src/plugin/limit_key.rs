//! Limit keys: which requests share one counter.

use http::HeaderMap;
use http::header::HeaderName;

use crate::plugin::RequestCtx;

/// Longest part of a key taken from a request header, in bytes; longer
/// values are cut, so one key's memory is bounded whatever clients send.
pub const MAX_HEADER_PART: usize = 256;

/// One component of a limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's IP address (the TCP peer).
    ClientIp,
    /// The matched route's id.
    Route,
    /// The route's service id (`-` when the route has none).
    Service,
    /// The authenticated consumer's name (`-` when no auth plugin set one).
    Consumer,
    /// A request header's value (`-` when absent).
    Header(HeaderName),
}

/// Which request attributes make up a limit key, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec(Vec<KeyPart>);

impl KeySpec {
    /// Parses a key list such as `[client_ip, "header:x-api-key"]`.
    /// An empty list means `[client_ip]`.
    pub fn parse(parts: &[String]) -> Result<KeySpec, Vec<(String, String)>> {
        if parts.is_empty() {
            return Ok(KeySpec(vec![KeyPart::ClientIp]));
        }
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let part = match p.as_str() {
                "client_ip" => KeyPart::ClientIp,
                "route" => KeyPart::Route,
                "service" => KeyPart::Service,
                "consumer" => KeyPart::Consumer,
                other => match other.strip_prefix("header:") {
                    Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(h) => KeyPart::Header(h),
                        Err(_) => {
                            errs.push((
                                format!("key[{i}]"),
                                format!("`{h}` is not a valid header name"),
                            ));
                            continue;
                        }
                    },
                    None => {
                        errs.push((
                            format!("key[{i}]"),
                            format!(
                                "unknown key part `{other}`; use client_ip, route, service, consumer or header:<name>"
                            ),
                        ));
                        continue;
                    }
                },
            };
            if out.contains(&part) {
                errs.push((format!("key[{i}]"), format!("`{p}` is listed twice")));
                continue;
            }
            out.push(part);
        }
        if errs.is_empty() {
            Ok(KeySpec(out))
        } else {
            Err(errs)
        }
    }

    /// The key of one request: the parts joined by a separator that cannot
    /// appear inside a part (`\n` is not allowed in header values).
    pub fn key(&self, headers: &HeaderMap, ctx: &RequestCtx) -> String {
        let mut k = String::with_capacity(64);
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                k.push('\n');
            }
            match part {
                KeyPart::ClientIp => {
                    use std::fmt::Write;
                    let _ = write!(k, "{}", ctx.client_ip());
                }
                KeyPart::Route => k.push_str(&ctx.route_id),
                KeyPart::Service => k.push_str(ctx.service_id.as_deref().unwrap_or("-")),
                KeyPart::Consumer => {
                    k.push_str(ctx.consumer.as_ref().map_or("-", |c| &*c.name));
                }
                KeyPart::Header(h) => match headers.get(h) {
                    Some(v) => {
                        let b = v.as_bytes();
                        let b = &b[..b.len().min(MAX_HEADER_PART)];
                        k.push_str(&String::from_utf8_lossy(b));
                    }
                    None => k.push('-'),
                },
            }
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ctx() -> RequestCtx {
        RequestCtx::new(
            "r1".into(),
            None,
            "10.0.0.7:5555".parse().unwrap(),
            HeaderValue::from_static("id"),
        )
    }

    #[test]
    fn parts_join_in_order() {
        let spec =
            KeySpec::parse(&["route".into(), "client_ip".into(), "header:x-k".into()]).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(spec.key(&h, &ctx()), "r1\n10.0.0.7\n-");
        h.insert("x-k", HeaderValue::from_str(&"a".repeat(1000)).unwrap());
        assert_eq!(
            spec.key(&h, &ctx()).len(),
            "r1\n10.0.0.7\n".len() + MAX_HEADER_PART
        );
        assert_eq!(KeySpec::parse(&[]).unwrap().key(&h, &ctx()), "10.0.0.7");
        assert_eq!(
            KeySpec::parse(&["service".into(), "consumer".into()])
                .unwrap()
                .key(&h, &ctx()),
            "-\n-"
        );
    }

    #[test]
    fn bad_parts_are_named() {
        let e = KeySpec::parse(&[
            "ip".into(),
            "header:bad header".into(),
            "route".into(),
            "route".into(),
        ])
        .unwrap_err();
        let fields: Vec<_> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["key[0]", "key[1]", "key[3]"]);
    }
}
