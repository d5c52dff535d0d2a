//! `request-size-limit`: per-route limits on the request body (413) and
//! on the request head (431), below the global `settings.max_body_bytes`,
//! `max_header_bytes` and `max_header_count`. A body is refused by its
//! declared `Content-Length` before the upstream is called, and a body
//! without one (chunked, HTTP/2) is cut off with 413 as soon as it streams
//! past the limit.

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, parse_config,
};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "request-size-limit",
    priority: 3400,
    build,
};

/// Config of `request-size-limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Largest body in bytes.
    #[serde(default)]
    max_body_bytes: Option<u64>,
    /// Largest request head (request line and headers) in bytes.
    #[serde(default)]
    max_header_bytes: Option<usize>,
    /// Most header fields.
    #[serde(default)]
    max_header_count: Option<usize>,
}

struct RequestSizeLimit {
    max_body: Option<u64>,
    max_header_bytes: Option<usize>,
    max_header_count: Option<usize>,
}

fn build(v: &serde_yaml_ng::Value, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs: ConfigErrorList = Vec::new();
    if raw.max_body_bytes == Some(0) {
        errs.push(("max_body_bytes".into(), "must be greater than zero".into()));
    }
    if raw.max_header_bytes.is_some_and(|n| n < 64) {
        errs.push(("max_header_bytes".into(), "must be at least 64".into()));
    }
    if raw.max_header_count == Some(0) {
        errs.push((
            "max_header_count".into(),
            "must be greater than zero".into(),
        ));
    }
    if raw.max_body_bytes.is_none()
        && raw.max_header_bytes.is_none()
        && raw.max_header_count.is_none()
    {
        errs.push((
            String::new(),
            "set at least one of `max_body_bytes`, `max_header_bytes`, `max_header_count`".into(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Arc::new(RequestSizeLimit {
        max_body: raw.max_body_bytes,
        max_header_bytes: raw.max_header_bytes,
        max_header_count: raw.max_header_count,
    }))
}

/// The request head's size, counted the same way as the global check:
/// request line plus `name: value\r\n` per field.
fn head_size(req: &RequestHead<'_>) -> usize {
    let line =
        req.method.as_str().len() + req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[async_trait::async_trait]
impl Plugin for RequestSizeLimit {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        if let Some(limit) = self.max_header_count
            && req.headers.len() > limit
        {
            return Err(Early::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers",
                format!("request carries more than {limit} header fields"),
            ));
        }
        if let Some(limit) = self.max_header_bytes
            && head_size(req) > limit
        {
            return Err(Early::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("request headers exceed the limit of {limit} bytes"),
            ));
        }
        if let Some(limit) = self.max_body {
            // The declared length was checked to be a number before
            // routing; a larger body is refused before the upstream is
            // called.
            let declared = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                let mut e = Early::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body exceeds the limit of {limit} bytes"),
                );
                // The unread body would otherwise be drained or desync the
                // connection; close it like the global check does.
                e.insert_header(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return Err(e);
            }
            ctx.body_limit = Some(ctx.body_limit.map_or(limit, |l| l.min(limit)));
        }
        Ok(())
    }
}
