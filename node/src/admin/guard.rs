//! What every admin request passes before a handler sees it, and what
//! every admin error looks like after (ADR 0040):
//!
//! - `Host` (or the HTTP/2 authority) must be the admin listener's own
//!   address, `localhost` on its port when it listens on loopback, the
//!   node's Raft advertise address, or a name in `settings.admin_hosts`:
//!   a DNS-rebinding page names its own host and is refused;
//! - a cross-origin `Origin` (or `Sec-Fetch-Site: cross-site|same-site`)
//!   is refused, so a browser page cannot make the keyless loopback API
//!   write for it;
//! - a write whose body has a type must say `application/json`
//!   (`/v1/apply` also takes YAML): the types a browser may send without a
//!   CORS preflight (`text/plain`, forms) are refused;
//! - an error answer that is not JSON yet (axum's and hyper's own: 405,
//!   413, a body that is not UTF-8) is rewritten into the API's JSON
//!   error shape.
//!
//! The Raft RPC endpoints (`/raft/*`) are addressed by peers under
//! whatever name `--join` or `--advertise` gave them, so they skip the
//! `Host` check; no browser can reach them either, because they refuse
//! any request with an `Origin` or `Sec-Fetch-Site` header (peers send
//! neither, browsers send `Origin` on every POST). Authentication
//! (`keys.rs`) runs after this.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AdminCtx, ApiError};

/// Largest body of an admin write other than `/v1/apply`.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Largest `/v1/apply` body (the whole config, as JSON or YAML).
pub const APPLY_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The names and addresses a request may address the admin listener by.
#[derive(Debug, Clone)]
pub struct Hosts {
    /// Where the admin listener is bound.
    listen: SocketAddr,
    /// Further names, lower-cased, each with its port (`None`: any port).
    names: Vec<(String, Option<u16>)>,
}

impl Hosts {
    /// The listener bound at `listen`, also reached as each of `names`
    /// (`host` or `host:port`: `settings.admin_hosts`, the Raft advertise
    /// address).
    pub fn new<'a>(listen: SocketAddr, names: impl IntoIterator<Item = &'a str>) -> Hosts {
        let names = names
            .into_iter()
            .filter_map(|n| split_authority(n.trim()))
            .map(|(h, p)| (h.to_ascii_lowercase(), p))
            .collect();
        Hosts { listen, names }
    }

    /// Whether `host` (an authority, `name[:port]`) addresses this
    /// listener; `default_port` stands in for an absent port.
    pub fn allows(&self, authority: &str, default_port: u16) -> bool {
        let Some((host, port)) = split_authority(authority) else {
            return false;
        };
        let port = port.unwrap_or(default_port);
        let host = host.to_ascii_lowercase();
        if self
            .names
            .iter()
            .any(|(n, p)| *n == host && p.is_none_or(|p| p == port))
        {
            return true;
        }
        if port != self.listen.port() {
            return false;
        }
        let bound = self.listen.ip();
        match host.parse::<IpAddr>() {
            // On 0.0.0.0 a client reaches the listener on any of the
            // machine's addresses; an address literal cannot come from a
            // rebinding page, whose Host is its own name.
            Ok(_) if bound.is_unspecified() => true,
            Ok(ip) if bound.is_loopback() => ip.is_loopback(),
            Ok(ip) => ip == bound,
            Err(_) => host == "localhost" && (bound.is_loopback() || bound.is_unspecified()),
        }
    }
}

/// `host[:port]` (IPv6 in brackets) as its host and port.
fn split_authority(s: &str) -> Option<(&str, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some((h, _)) if h.contains(':') => Some((s, None)),
        Some((h, p)) if !h.is_empty() => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// Paths any caller may ask under any name: probes and scrapers address
/// nodes by whatever name their platform gives them, and these answer
/// nothing about the config.
fn open_path(path: &str) -> bool {
    matches!(path, "/v1/health" | "/v1/ready" | "/metrics")
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The origin, host and content-type checks.
pub(super) async fn check(State(ctx): State<Arc<AdminCtx>>, req: Request, next: Next) -> Response {
    match refusal(&ctx.hosts, &req) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    }
}

fn refusal(hosts: &Hosts, req: &Request) -> Option<ApiError> {
    let path = req.uri().path();
    let headers = req.headers();
    let raft = path.starts_with("/raft/");
    if raft {
        if headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site") {
            return Some(forbidden(
                "forbidden_origin",
                "the Raft endpoints take requests from cluster peers only, not from browsers",
            ));
        }
    } else if !open_path(path)
        && let Some(authority) = request_authority(req)
        && !hosts.allows(&authority, 80)
    {
        return Some(forbidden(
            "forbidden_host",
            format!(
                "Host `{authority}` is not this admin listener's address; add the name to settings.admin_hosts to reach it by that name"
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        if !origin_allowed(hosts, &origin) {
            return Some(forbidden(
                "forbidden_origin",
                format!(
                    "Origin `{origin}` is not this admin listener: cross-origin requests are refused"
                ),
            ));
        }
    }
    if is_write(req.method()) {
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.as_bytes(), b"same-origin" | b"none")
        {
            return Some(forbidden(
                "forbidden_origin",
                format!(
                    "Sec-Fetch-Site `{}`: cross-site writes are refused",
                    String::from_utf8_lossy(site.as_bytes())
                ),
            ));
        }
        if let Some(e) = content_type_refusal(path, headers) {
            return Some(e);
        }
    }
    None
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// The authority the request names: `Host`, else the URI's (HTTP/2).
fn request_authority(req: &Request) -> Option<String> {
    if let Some(h) = req.headers().get(header::HOST) {
        return Some(String::from_utf8_lossy(h.as_bytes()).into_owned());
    }
    req.uri().authority().map(|a| a.as_str().to_string())
}

fn origin_allowed(hosts: &Hosts, origin: &str) -> bool {
    let (authority, port) = if let Some(a) = origin.strip_prefix("http://") {
        (a, 80)
    } else if let Some(a) = origin.strip_prefix("https://") {
        (a, 443)
    } else {
        // `null` (a sandboxed frame, a file, a redirect) and the rest.
        return false;
    };
    !authority.contains('/') && hosts.allows(authority, port)
}

/// Media types a write body may have at `path`.
fn accepted_types(path: &str) -> &'static str {
    if path == "/v1/apply" {
        "application/json or application/yaml"
    } else {
        "application/json"
    }
}

/// The media type of a request body: the part before any parameters,
/// lower-cased.
pub(super) fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?;
    let s = String::from_utf8_lossy(v.as_bytes());
    Some(
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Whether `media` is JSON (`application/json`, `application/*+json`).
pub(super) fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Whether `media` is one of the YAML types `/v1/apply` takes.
pub(super) fn is_yaml(media: &str) -> bool {
    matches!(
        media,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml"
    )
}

fn content_type_refusal(path: &str, headers: &HeaderMap) -> Option<ApiError> {
    let ok = match media_type(headers) {
        // No type at all is read as JSON: scripts and older clients send
        // none. A page can send a body without a type too (a `Blob`), but
        // then the browser adds `Origin`, which the origin check refuses.
        None => true,
        Some(m) => is_json(&m) || (path == "/v1/apply" && is_yaml(&m)),
    };
    if ok {
        return None;
    }
    let got = media_type(headers).unwrap_or_else(|| "no Content-Type".into());
    Some(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "a write needs Content-Type: {}, not `{got}`",
            accepted_types(path)
        ),
    ))
}

// === every error as JSON ===

/// Rewrites an error answer that is not JSON (axum's and hyper's
/// rejections: 405, 413, bodies that do not decode) into the API's error
/// shape, so a client parses one format whatever refused its request.
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = if path == "/v1/apply" {
                APPLY_BODY_LIMIT
            } else {
                BODY_LIMIT
            };
            (
                "body_too_large",
                format!(
                    "the request body is larger than {} MiB, the limit for {path}",
                    limit / (1024 * 1024)
                ),
            )
        }
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("{path} does not take this method"),
        ),
        s => (
            code_of(s),
            if text.is_empty() {
                s.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            },
        ),
    };
    let mut out = ApiError::new(status, code, message).into_response();
    // Keep what the rejection said besides its body (`Allow` on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn code_of(s: StatusCode) -> &'static str {
    match s.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        408 => "timeout",
        411 => "length_required",
        415 => "unsupported_media_type",
        422 => "invalid",
        431 => "headers_too_large",
        500..=599 => "internal",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listener_takes_its_address_and_localhost() {
        let h = Hosts::new("127.0.0.1:9180".parse().unwrap(), ["admin.internal"]);
        assert!(h.allows("127.0.0.1:9180", 80));
        assert!(h.allows("LOCALHOST:9180", 80));
        assert!(h.allows("[::1]:9180", 80));
        assert!(h.allows("admin.internal", 80));
        assert!(h.allows("admin.internal:443", 80));
        assert!(!h.allows("evil.example:9180", 80));
        assert!(!h.allows("127.0.0.1:9181", 80));
        assert!(!h.allows("localhost", 80));
        assert!(!h.allows("10.0.0.1:9180", 80));
        assert!(!h.allows("", 80));
    }

    #[test]
    fn a_wildcard_listener_takes_any_address_literal_but_no_foreign_name() {
        let h = Hosts::new("0.0.0.0:9180".parse().unwrap(), ["node-1.weir:9180"]);
        assert!(h.allows("10.1.2.3:9180", 80));
        assert!(h.allows("node-1.weir:9180", 80));
        assert!(!h.allows("node-1.weir:9999", 80));
        assert!(!h.allows("rebind.evil.example:9180", 80));
    }

    #[test]
    fn origins_compare_scheme_default_ports() {
        let h = Hosts::new("127.0.0.1:80".parse().unwrap(), []);
        assert!(origin_allowed(&h, "http://127.0.0.1"));
        assert!(origin_allowed(&h, "http://localhost:80"));
        assert!(!origin_allowed(&h, "https://127.0.0.1"));
        assert!(!origin_allowed(&h, "null"));
        assert!(!origin_allowed(&h, "http://evil.example"));
    }
}
