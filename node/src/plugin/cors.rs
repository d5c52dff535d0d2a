//! `cors`: Cross-Origin Resource Sharing. Preflight requests (`OPTIONS`
//! with `Origin` and `Access-Control-Request-Method`) are answered by the
//! gateway and never reach the upstream; actual requests from an allowed
//! origin get the `Access-Control-Allow-*` headers on their answer.
//!
//! Origins are matched exactly, by wildcard (`https://*.example.com`: one or
//! more DNS labels in place of `*`) or by regex (the whole origin must
//! match). `*` with credentials is refused at load, as browsers ignore it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use regex::RegexSet;
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, ResponseHead,
    parse_config,
};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "cors",
    priority: 4000,
    build,
};

/// Config of `cors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Allowed origins: exact (`https://app.example.com`), wildcard
    /// (`https://*.example.com`) or `*` for any.
    #[serde(default)]
    allow_origins: Vec<String>,
    /// Regexes an origin may match instead (anchored to the whole origin).
    #[serde(default)]
    allow_origins_regex: Vec<String>,
    /// Methods a preflight may ask for; `*` for any.
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    /// Request headers a preflight may ask for; `*` for any.
    #[serde(default)]
    allow_headers: Vec<String>,
    /// Response headers the browser may show to the script.
    #[serde(default)]
    expose_headers: Vec<String>,
    /// Whether cookies and credentials may be sent.
    #[serde(default)]
    allow_credentials: bool,
    /// How long the browser may cache a preflight answer.
    #[serde(default, with = "crate::config::duration")]
    max_age: Option<Duration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// Which origins may pass.
struct Origins {
    any: bool,
    exact: HashSet<String>,
    /// Wildcards and regexes, compiled together.
    patterns: RegexSet,
}

impl Origins {
    fn allows(&self, origin: &str) -> bool {
        self.any || self.exact.contains(origin) || self.patterns.is_match(origin)
    }
}

/// Methods or headers a preflight may ask for.
enum Allowed<T> {
    Any,
    Listed(Vec<T>, HeaderValue),
}

struct Cors {
    origins: Origins,
    methods: Allowed<Method>,
    headers: Allowed<HeaderName>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// Marks an actual (non-preflight) request from an allowed origin, for the
/// response phase.
#[derive(Clone)]
struct AllowedOrigin(HeaderValue);

/// `https://*.example.com` → a regex where `*` is one or more DNS labels.
fn wildcard_regex(pattern: &str) -> String {
    let parts: Vec<String> = pattern.split('*').map(regex::escape).collect();
    format!("^{}$", parts.join("[a-z0-9-]+(?:\\.[a-z0-9-]+)*"))
}

fn comma_list(items: &[String]) -> Option<HeaderValue> {
    HeaderValue::from_str(&items.join(", ")).ok()
}

fn build(v: &serde_yaml_ng::Value, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs: ConfigErrorList = Vec::new();

    let mut any = false;
    let mut exact = HashSet::new();
    let mut patterns = Vec::new();
    for (i, o) in raw.allow_origins.iter().enumerate() {
        let field = format!("allow_origins[{i}]");
        let lower = o.trim().to_ascii_lowercase();
        if lower == "*" {
            any = true;
        } else if !lower.contains("://") || HeaderValue::from_str(&lower).is_err() {
            errs.push((
                field,
                format!("`{o}` is not an origin like `https://example.com`"),
            ));
        } else if lower.ends_with('/') {
            errs.push((
                field,
                format!("`{o}`: an origin has no path or trailing `/`"),
            ));
        } else if lower.contains('*') {
            patterns.push(wildcard_regex(&lower));
        } else {
            exact.insert(lower);
        }
    }
    for (i, r) in raw.allow_origins_regex.iter().enumerate() {
        let anchored = format!("^(?:{r})$");
        match regex::Regex::new(&anchored) {
            Ok(_) => patterns.push(anchored),
            Err(e) => errs.push((
                format!("allow_origins_regex[{i}]"),
                format!("bad regex: {e}"),
            )),
        }
    }
    if !any && exact.is_empty() && patterns.is_empty() && errs.is_empty() {
        errs.push((
            "allow_origins".into(),
            "list at least one origin (or `*`) in `allow_origins` or `allow_origins_regex`".into(),
        ));
    }
    let patterns = match RegexSet::new(&patterns) {
        Ok(set) => set,
        Err(e) => {
            errs.push(("allow_origins_regex".into(), format!("bad regex: {e}")));
            RegexSet::empty()
        }
    };

    let methods = if raw.allow_methods.iter().any(|m| m == "*") {
        Allowed::Any
    } else {
        let mut list = Vec::new();
        for (i, m) in raw.allow_methods.iter().enumerate() {
            match Method::from_bytes(m.as_bytes()) {
                Ok(m) => list.push(m),
                Err(_) => errs.push((
                    format!("allow_methods[{i}]"),
                    format!("`{m}` is not a method"),
                )),
            }
        }
        let names: Vec<String> = list.iter().map(|m| m.as_str().to_string()).collect();
        Allowed::Listed(
            list,
            comma_list(&names).unwrap_or(HeaderValue::from_static("")),
        )
    };
    let headers = if raw.allow_headers.iter().any(|h| h == "*") {
        Allowed::Any
    } else {
        let mut list = Vec::new();
        for (i, h) in raw.allow_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => list.push(h),
                Err(_) => errs.push((
                    format!("allow_headers[{i}]"),
                    format!("`{h}` is not a valid header name"),
                )),
            }
        }
        let names: Vec<String> = list.iter().map(|h| h.as_str().to_string()).collect();
        Allowed::Listed(
            list,
            comma_list(&names).unwrap_or(HeaderValue::from_static("")),
        )
    };
    for (i, h) in raw.expose_headers.iter().enumerate() {
        if h != "*" && HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push((
                format!("expose_headers[{i}]"),
                format!("`{h}` is not a valid header name"),
            ));
        }
    }
    if raw.allow_credentials {
        for (field, star) in [
            ("allow_origins", any),
            ("allow_methods", matches!(methods, Allowed::Any)),
            ("allow_headers", matches!(headers, Allowed::Any)),
            (
                "expose_headers",
                raw.expose_headers.iter().any(|h| h == "*"),
            ),
        ] {
            if star {
                errs.push((
                    field.into(),
                    "`*` cannot be used with `allow_credentials: true` (browsers refuse it); list the values".into(),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let expose = if raw.expose_headers.is_empty() {
        None
    } else {
        comma_list(&raw.expose_headers)
    };
    Ok(Arc::new(Cors {
        origins: Origins {
            any,
            exact,
            patterns,
        },
        methods,
        headers,
        expose,
        credentials: raw.allow_credentials,
        max_age: raw.max_age.map(|d| HeaderValue::from(d.as_secs())),
    }))
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for an allowed origin: `*`
    /// when any origin may pass without credentials, else the origin
    /// itself.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.origins.any && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Whether the answer depends on `Origin`, so caches must key on it.
    fn varies(&self) -> bool {
        !self.origins.any || self.credentials
    }

    fn preflight(&self, origin: &HeaderValue, req: &RequestHead<'_>) -> Early {
        let forbidden = |what: &'static str| {
            Early::forbidden(
                "cors_forbidden",
                format!("CORS preflight refused: {what} not allowed"),
            )
        };
        let Some(asked) = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        else {
            return forbidden("method");
        };
        let methods = match &self.methods {
            Allowed::Any => {
                HeaderValue::from_str(asked.as_str()).unwrap_or(HeaderValue::from_static("GET"))
            }
            Allowed::Listed(list, value) => {
                if !list.contains(&asked) {
                    return forbidden("method");
                }
                value.clone()
            }
        };
        let asked_headers = req.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        let allow_headers = match &self.headers {
            Allowed::Any => asked_headers.cloned(),
            Allowed::Listed(list, value) => {
                if let Some(asked) = asked_headers {
                    let Ok(asked) = asked.to_str() else {
                        return forbidden("header");
                    };
                    let ok = asked
                        .split(',')
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .all(|h| list.iter().any(|l| l.as_str().eq_ignore_ascii_case(h)));
                    if !ok {
                        return forbidden("header");
                    }
                }
                (!list.is_empty()).then(|| value.clone())
            }
        };
        let mut r = Response::new(Bytes::new());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        if let Some(v) = allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        Early::Response(r)
    }
}

#[async_trait::async_trait]
impl Plugin for Cors {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let Some(origin) = req.headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let allowed = origin
            .to_str()
            .is_ok_and(|o| self.origins.allows(&o.to_ascii_lowercase()));
        let is_preflight = *req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if is_preflight {
            if !allowed {
                return Err(Early::forbidden(
                    "cors_forbidden",
                    "CORS preflight refused: origin not allowed",
                ));
            }
            let origin = origin.clone();
            return Err(self.preflight(&origin, req));
        }
        if allowed {
            let v = self.allow_origin_value(origin);
            ctx.ext.insert(AllowedOrigin(v));
        }
        Ok(())
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        if self.varies() {
            resp.headers
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(AllowedOrigin(origin)) = ctx.ext.remove::<AllowedOrigin>() else {
            return;
        };
        // The upstream's own CORS answer is replaced, not doubled.
        resp.headers
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            resp.headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose {
            resp.headers
                .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_one_or_more_labels_only() {
        let re = regex::Regex::new(&wildcard_regex("https://*.example.com")).unwrap();
        assert!(re.is_match("https://a.example.com"));
        assert!(re.is_match("https://a.b.example.com"));
        assert!(!re.is_match("https://example.com"));
        assert!(!re.is_match("https://evil.com/.example.com"));
        assert!(!re.is_match("https://a.example.com.evil.com"));
        assert!(!re.is_match("http://a.example.com"));
    }
}
