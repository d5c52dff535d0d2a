//! `response-rewrite`: change the status, headers or body of the answer the
//! client gets, whoever made it (the upstream, another plugin, the gateway).
//! A fixed `body` replaces the upstream's on its way back (mocks); the
//! upstream is still called.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{BuildEnv, ConfigErrorList, Plugin, PluginDef, RequestCtx, ResponseHead, parse_config};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "response-rewrite",
    priority: 899,
    build,
};

/// Config of `response-rewrite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Status sent to the client instead of the upstream's.
    #[serde(default)]
    status: Option<u16>,
    /// Header changes.
    #[serde(default)]
    headers: HeaderOps,
    /// A fixed body that replaces the upstream's.
    #[serde(default)]
    body: Option<String>,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderOps {
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers set, replacing any value.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Headers appended, keeping existing values.
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
}

/// Compiled header edits.
#[derive(Default)]
pub(crate) struct CompiledHeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Checks names and values; `at` is the field prefix for errors.
    pub(crate) fn compile(&self, at: &str, errs: &mut ConfigErrorList) -> CompiledHeaderOps {
        let name = |n: &str, field: String, errs: &mut ConfigErrorList| match HeaderName::from_bytes(
            n.as_bytes(),
        ) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push((field, format!("`{n}` is not a valid header name")));
                None
            }
        };
        let mut out = CompiledHeaderOps::default();
        for (i, n) in self.remove.iter().enumerate() {
            if let Some(h) = name(n, format!("{at}.remove[{i}]"), errs) {
                out.remove.push(h);
            }
        }
        for (map, dst, key) in [
            (&self.set, &mut out.set, "set"),
            (&self.add, &mut out.add, "add"),
        ] {
            for (n, v) in map {
                let field = format!("{at}.{key}.{n}");
                let Some(h) = name(n, field.clone(), errs) else {
                    continue;
                };
                match HeaderValue::from_str(v) {
                    Ok(v) => dst.push((h, v)),
                    Err(_) => errs.push((field, "is not a valid header value".into())),
                }
            }
        }
        out
    }
}

impl CompiledHeaderOps {
    /// Applies the edits.
    pub(crate) fn apply(&self, h: &mut http::HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

struct ResponseRewrite {
    status: Option<StatusCode>,
    headers: CompiledHeaderOps,
    body: Option<Bytes>,
}

fn build(v: &serde_yaml_ng::Value, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    let status = match raw.status {
        None => None,
        Some(s) => match StatusCode::from_u16(s) {
            Ok(code) if (200..=599).contains(&s) => Some(code),
            _ => {
                errs.push((
                    "status".into(),
                    format!("{s} is not a status between 200 and 599"),
                ));
                None
            }
        },
    };
    let headers = raw.headers.compile("headers", &mut errs);
    if raw.status.is_none()
        && raw.body.is_none()
        && raw.headers.remove.is_empty()
        && raw.headers.set.is_empty()
        && raw.headers.add.is_empty()
    {
        errs.push((
            String::new(),
            "set at least one of `status`, `headers`, `body`".into(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Arc::new(ResponseRewrite {
        status,
        headers,
        body: raw.body.map(Bytes::from),
    }))
}

impl Plugin for ResponseRewrite {
    fn response_headers(&self, resp: &mut ResponseHead<'_>, _ctx: &mut RequestCtx) {
        if let Some(s) = self.status {
            *resp.status = s;
        }
        self.headers.apply(resp.headers);
        if let Some(b) = &self.body {
            *resp.replace_body = Some(b.clone());
        }
    }
}
