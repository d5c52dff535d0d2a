//! `hmac-auth`: requests signed with a shared secret (the HTTP Signatures
//! draft's `Signature` scheme with HMAC), with a date header that must be
//! within a clock-skew window so captured requests cannot be replayed
//! later.
//!
//! `Authorization: Signature keyId="k",algorithm="hmac-sha256",
//! headers="@request-target date",signature="<base64>"` where the signed
//! string is one `name: value` line per listed header, joined by `\n`, and
//! `@request-target` is `<method lowercase> <path?query>`.
//!
//! With `validate_request_body`, the body is read whole (bounded by the
//! route's body limits and `max_body_bytes`) and must match a signed
//! `Digest: SHA-256=<base64>` header (RFC 3230), so a captured signature
//! cannot carry another body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use hmac::Mac;
use http::header::{self, HeaderName, HeaderValue};
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, auth_failure,
    parse_config,
};
use crate::consumer::Consumers;

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "hmac-auth",
    priority: 2530,
    build,
};

const TARGET: &str = "@request-target";
const DIGEST: &str = "digest";

/// Config of `hmac-auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// How far the date header may be from the gateway's clock.
    #[serde(default = "default_skew", with = "crate::config::duration")]
    clock_skew: Duration,
    /// Accepted algorithms: `hmac-sha256`, `hmac-sha512`.
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    /// Header carrying the request date (HTTP-date).
    #[serde(default = "default_date")]
    date_header: String,
    /// What every signature must cover besides the date header; may
    /// include `@request-target`.
    #[serde(default = "default_signed")]
    signed_headers: Vec<String>,
    /// Remove `Authorization` before proxying.
    #[serde(default = "default_true")]
    hide_credentials: bool,
    /// Check the body against a `Digest` header (which the signature must
    /// then cover) before proxying.
    #[serde(default)]
    validate_request_body: bool,
    /// Most body bytes read for the digest check (the route's and the
    /// global body limits apply too).
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    /// How long the client may take to send the body for the check.
    #[serde(default = "default_body_timeout", with = "crate::config::duration")]
    body_timeout: Duration,
}

fn default_max_body() -> u64 {
    1024 * 1024
}

fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_skew() -> Duration {
    Duration::from_secs(300)
}

fn default_algorithms() -> Vec<String> {
    vec!["hmac-sha256".into(), "hmac-sha512".into()]
}

fn default_date() -> String {
    "date".into()
}

fn default_signed() -> Vec<String> {
    vec![TARGET.into()]
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Alg {
    Sha256,
    Sha512,
}

struct HmacAuth {
    skew: Duration,
    algorithms: Vec<Alg>,
    date_header: HeaderName,
    required: Vec<String>,
    hide: bool,
    consumers: Arc<Consumers>,
    /// `Some((max bytes, timeout))` when the body digest is checked.
    body: Option<(u64, Duration)>,
}

static CHALLENGE: HeaderValue =
    HeaderValue::from_static("Signature realm=\"weir\",headers=\"@request-target date\"");

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    let mut algorithms = Vec::new();
    for (i, a) in raw.algorithms.iter().enumerate() {
        match a.as_str() {
            "hmac-sha256" => algorithms.push(Alg::Sha256),
            "hmac-sha512" => algorithms.push(Alg::Sha512),
            _ => errs.push((
                format!("algorithms[{i}]"),
                format!("`{a}` is not `hmac-sha256` or `hmac-sha512`"),
            )),
        }
    }
    if raw.algorithms.is_empty() {
        errs.push(("algorithms".into(), "must not be empty".into()));
    }
    let date_header = HeaderName::from_bytes(raw.date_header.as_bytes());
    if date_header.is_err() {
        errs.push((
            "date_header".into(),
            format!("`{}` is not a valid header name", raw.date_header),
        ));
    }
    let mut required = Vec::new();
    for (i, h) in raw.signed_headers.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        if h != TARGET && HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push((
                format!("signed_headers[{i}]"),
                format!("`{h}` is not a header name or `{TARGET}`"),
            ));
        }
        required.push(h);
    }
    if raw.max_body_bytes == 0 {
        errs.push(("max_body_bytes".into(), "must be greater than zero".into()));
    }
    if raw.body_timeout.is_zero() {
        errs.push(("body_timeout".into(), "must be greater than zero".into()));
    }
    if raw.validate_request_body && !required.iter().any(|h| h == DIGEST) {
        // An unsigned digest could be swapped along with the body.
        required.push(DIGEST.to_string());
    }
    if raw.clock_skew.is_zero() || raw.clock_skew > Duration::from_secs(3600) {
        errs.push(("clock_skew".into(), "must be between 1s and 1h".into()));
    }
    let Ok(date_header) = date_header else {
        return Err(errs);
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    required.push(date_header.as_str().to_string());
    Ok(Arc::new(HmacAuth {
        skew: raw.clock_skew,
        algorithms,
        date_header,
        required,
        hide: raw.hide_credentials,
        consumers: env.consumers().clone(),
        body: raw
            .validate_request_body
            .then_some((raw.max_body_bytes, raw.body_timeout)),
    }))
}

/// The parameters of a `Signature` authorization value.
fn parse_params(v: &str) -> Option<HashMap<&str, &str>> {
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("signature") {
        return None;
    }
    let mut out = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        out.insert(k.trim(), v);
    }
    Some(out)
}

fn sign(alg: Alg, secret: &[u8], data: &[u8], sig: &[u8]) -> bool {
    // `verify_slice` compares in constant time.
    match alg {
        Alg::Sha256 => hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
            .map(|mut m| {
                m.update(data);
                m.verify_slice(sig).is_ok()
            })
            .unwrap_or(false),
        Alg::Sha512 => hmac::Hmac::<sha2::Sha512>::new_from_slice(secret)
            .map(|mut m| {
                m.update(data);
                m.verify_slice(sig).is_ok()
            })
            .unwrap_or(false),
    }
}

impl HmacAuth {
    fn check(&self, req: &RequestHead<'_>) -> Result<Arc<crate::consumer::Consumer>, &'static str> {
        let value = req
            .headers
            .get(header::AUTHORIZATION)
            .ok_or("missing")?
            .to_str()
            .map_err(|_| "malformed")?;
        let params = parse_params(value).ok_or("malformed")?;
        let key_id = params.get("keyId").ok_or("malformed")?;
        let alg = match params.get("algorithm").copied() {
            Some("hmac-sha256") => Alg::Sha256,
            Some("hmac-sha512") => Alg::Sha512,
            _ => return Err("algorithm"),
        };
        if !self.algorithms.contains(&alg) {
            return Err("algorithm");
        }
        let signed: Vec<String> = params
            .get("headers")
            .ok_or("malformed")?
            .split_ascii_whitespace()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if self.required.iter().any(|r| !signed.contains(r)) {
            return Err("unsigned_header");
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(params.get("signature").ok_or("malformed")?)
            .map_err(|_| "malformed")?;

        let date = req
            .headers
            .get(&self.date_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .ok_or("malformed")?;
        let now = SystemTime::now();
        let off = now
            .duration_since(date)
            .or_else(|_| date.duration_since(now))
            .unwrap_or(Duration::MAX);
        if off > self.skew {
            return Err("clock_skew");
        }

        let mut data = String::new();
        for (i, h) in signed.iter().enumerate() {
            if i > 0 {
                data.push('\n');
            }
            if h == TARGET {
                let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
                data.push_str(&format!(
                    "{TARGET}: {} {pq}",
                    req.method.as_str().to_ascii_lowercase()
                ));
            } else {
                let v = req
                    .headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .ok_or("malformed")?;
                data.push_str(&format!("{h}: {}", v.trim()));
            }
        }
        let entry = self.consumers.by_hmac_key(key_id).ok_or("invalid")?;
        if sign(alg, &entry.secret, data.as_bytes(), &sig) {
            Ok(entry.consumer.clone())
        } else {
            Err("invalid")
        }
    }
}

/// The digests of a `Digest` header (RFC 3230: `alg=<base64>`, comma
/// separated; algorithm names are case-insensitive). Entries of other
/// algorithms are skipped; `None` when no SHA-256/SHA-512 entry is usable.
fn parse_digests(values: http::header::GetAll<'_, HeaderValue>) -> Option<Vec<(Alg, Vec<u8>)>> {
    let mut out = Vec::new();
    for v in values {
        for item in v.to_str().ok()?.split(',') {
            let (alg, b64) = item.trim().split_once('=')?;
            let alg = if alg.eq_ignore_ascii_case("sha-256") {
                Alg::Sha256
            } else if alg.eq_ignore_ascii_case("sha-512") {
                Alg::Sha512
            } else {
                continue;
            };
            let d = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            out.push((alg, d));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Whether every usable digest matches `body`.
fn digests_match(digests: &[(Alg, Vec<u8>)], body: &[u8]) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    digests.iter().all(|(alg, want)| {
        let have = match alg {
            Alg::Sha256 => sha2::Sha256::digest(body).to_vec(),
            Alg::Sha512 => sha2::Sha512::digest(body).to_vec(),
        };
        bool::from(have.ct_eq(want))
    })
}

#[async_trait::async_trait]
impl Plugin for HmacAuth {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let consumer = match self.check(req) {
            Ok(c) => c,
            Err(reason) => return Err(auth_failure(ctx, DEF.name, reason, &CHALLENGE)),
        };
        if let Some((cap, timeout)) = self.body {
            // The signature covers the digest; the digest must cover the
            // body. Checked before the body is read.
            let Some(digests) = parse_digests(req.headers.get_all(DIGEST)) else {
                return Err(auth_failure(ctx, DEF.name, "body_digest", &CHALLENGE));
            };
            let body = req.read_body(ctx, cap, timeout).await?;
            if !digests_match(&digests, &body) {
                return Err(auth_failure(ctx, DEF.name, "body_digest", &CHALLENGE));
            }
        }
        ctx.consumer = Some(consumer);
        if self.hide {
            req.headers.remove(header::AUTHORIZATION);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signature_params() {
        let p = parse_params(
            r#"Signature keyId="k1",algorithm="hmac-sha256",headers="date",signature="c2ln""#,
        )
        .unwrap();
        assert_eq!(p["keyId"], "k1");
        assert_eq!(p["signature"], "c2ln");
        assert!(parse_params("Basic abc").is_none());
        assert!(parse_params("Signature keyId=k1").is_none());
    }

    #[test]
    fn digest_header_is_parsed_and_checked() {
        use sha2::Digest;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let body = b"{\"a\":1}";
        let sha256 = b64(&sha2::Sha256::digest(body));
        let sha512 = b64(&sha2::Sha512::digest(body));
        let mut h = http::HeaderMap::new();
        h.insert(
            DIGEST,
            HeaderValue::from_str(&format!("MD5=abc, sha-256={sha256},SHA-512={sha512}")).unwrap(),
        );
        let d = parse_digests(h.get_all(DIGEST)).unwrap();
        assert_eq!(d.len(), 2);
        assert!(digests_match(&d, body));
        assert!(!digests_match(&d, b"{\"a\":2}"));
        h.insert(DIGEST, HeaderValue::from_static("MD5=abc"));
        assert!(parse_digests(h.get_all(DIGEST)).is_none());
        h.insert(DIGEST, HeaderValue::from_static("SHA-256=!!"));
        assert!(parse_digests(h.get_all(DIGEST)).is_none());
        assert!(parse_digests(http::HeaderMap::new().get_all(DIGEST)).is_none());
    }
}
