//! `key-auth`: an API key from a header or a query argument identifies the
//! consumer. Keys are stored as SHA-256 digests (see `consumer.rs`); by
//! default the key is removed before the request goes upstream.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, UpstreamRequest,
    auth_failure, parse_config,
};
use crate::consumer::Consumers;

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "key-auth",
    priority: 2500,
    build,
};

/// Config of `key-auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Header carrying the key.
    #[serde(default = "default_name")]
    header: String,
    /// Query argument carrying the key, when the header is absent; empty
    /// disables keys in the query.
    #[serde(default = "default_name")]
    query: String,
    /// Remove the key (header and query argument) before proxying.
    #[serde(default = "default_true")]
    hide_credentials: bool,
}

fn default_name() -> String {
    "apikey".to_string()
}

fn default_true() -> bool {
    true
}

struct KeyAuth {
    header: HeaderName,
    query: Option<String>,
    hide: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    let header = HeaderName::from_bytes(raw.header.as_bytes()).map_err(|_| {
        vec![(
            "header".to_string(),
            format!("`{}` is not a valid header name", raw.header),
        )]
    })?;
    if raw.query.contains(['&', '=', '#']) {
        errs.push((
            "query".to_string(),
            "must not contain `&`, `=` or `#`".to_string(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let challenge = HeaderValue::from_str(&format!("ApiKey realm=\"weir\", header=\"{header}\""))
        .map_err(|_| {
        vec![(
            "header".to_string(),
            "is not usable in a challenge".to_string(),
        )]
    })?;
    Ok(Arc::new(KeyAuth {
        header,
        query: (!raw.query.is_empty()).then_some(raw.query),
        hide: raw.hide_credentials,
        consumers: env.consumers().clone(),
        challenge,
    }))
}

/// The value of query argument `name`, percent-decoded.
fn query_arg(query: &str, name: &str) -> Option<Vec<u8>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned().into_bytes())
}

/// `query` without the arguments named `name`; other arguments keep their
/// exact encoding.
pub(crate) fn strip_query_arg(query: &str, name: &str) -> Option<String> {
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let raw_name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let is_it = form_urlencoded::parse(raw_name.as_bytes())
                .next()
                .is_some_and(|(k, _)| k == name);
            removed |= is_it;
            !is_it
        })
        .collect();
    removed.then(|| kept.join("&"))
}

#[async_trait::async_trait]
impl Plugin for KeyAuth {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let key = match req.headers.get(&self.header) {
            Some(v) => Some(v.as_bytes().to_vec()),
            None => self
                .query
                .as_deref()
                .and_then(|q| req.uri.query().and_then(|query| query_arg(query, q))),
        };
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(auth_failure(ctx, DEF.name, "missing", &self.challenge));
        };
        let Some(consumer) = self.consumers.by_key(&key) else {
            return Err(auth_failure(ctx, DEF.name, "invalid", &self.challenge));
        };
        ctx.consumer = Some(consumer.clone());
        if self.hide {
            req.headers.remove(&self.header);
        }
        Ok(())
    }

    fn upstream_request(&self, req: &mut UpstreamRequest<'_>, _ctx: &mut RequestCtx) {
        if !self.hide {
            return;
        }
        let Some(name) = &self.query else { return };
        let Some(query) = req.path_and_query.query() else {
            return;
        };
        if let Some(rest) = strip_query_arg(query, name) {
            let path = req.path_and_query.path();
            let pq = if rest.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{rest}")
            };
            if let Ok(pq) = pq.parse() {
                *req.path_and_query = pq;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_the_named_argument() {
        assert_eq!(
            strip_query_arg("a=1&apikey=s&b=%20", "apikey").as_deref(),
            Some("a=1&b=%20")
        );
        assert_eq!(strip_query_arg("apikey=s", "apikey").as_deref(), Some(""));
        assert_eq!(
            strip_query_arg("api%6Bey=s&x", "apikey").as_deref(),
            Some("x")
        );
        assert_eq!(strip_query_arg("a=1", "apikey"), None);
        assert_eq!(
            query_arg("a=1&apikey=s%2Bt", "apikey").as_deref(),
            Some(&b"s+t"[..])
        );
    }
}
