//! `proxy-rewrite`: change the request sent upstream: the path (strip a
//! prefix, or a regex with captures), the `Host`, the method, request
//! headers and query arguments. The client's request itself (and route
//! matching) is unaffected.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use regex::Regex;
use serde::Deserialize;

use super::response_rewrite::{CompiledHeaderOps, HeaderOps};
use super::{
    BuildEnv, ConfigErrorList, Plugin, PluginDef, RequestCtx, UpstreamRequest, parse_config,
};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "proxy-rewrite",
    priority: 1008,
    build,
};

/// Config of `proxy-rewrite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// A leading path prefix removed (on a segment boundary).
    #[serde(default)]
    strip_prefix: Option<String>,
    /// `[regex, replacement]`: the path is replaced when the regex matches;
    /// `$1`, `${name}` in the replacement insert captures.
    #[serde(default)]
    regex_uri: Option<(String, String)>,
    /// `Host` sent upstream.
    #[serde(default)]
    host: Option<String>,
    /// Method sent upstream.
    #[serde(default)]
    method: Option<String>,
    /// Request header edits (remove, set, add).
    #[serde(default)]
    headers: HeaderOps,
    /// Query argument edits (remove, set, add).
    #[serde(default)]
    query: QueryOps,
}

/// Query argument edits, applied in the order remove, set, add.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryOps {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
}

struct ProxyRewrite {
    strip_prefix: Option<String>,
    regex_uri: Option<(Regex, String)>,
    host: Option<HeaderValue>,
    method: Option<Method>,
    headers: CompiledHeaderOps,
    has_query_ops: bool,
    /// Names whose arguments are dropped (removed or set).
    query_drop: Vec<String>,
    /// `name=value` pairs appended, already encoded.
    query_append: String,
}

fn build(v: &serde_yaml_ng::Value, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    Ok(Arc::new(compile(v)?))
}

fn compile(v: &serde_yaml_ng::Value) -> Result<ProxyRewrite, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs: ConfigErrorList = Vec::new();

    let strip_prefix = match raw.strip_prefix {
        Some(p) if !p.starts_with('/') || p.contains(['?', '#']) => {
            errs.push((
                "strip_prefix".into(),
                format!("`{p}` must be a path starting with `/`"),
            ));
            None
        }
        Some(p) => Some(p.trim_end_matches('/').to_string()).filter(|p| !p.is_empty()),
        None => None,
    };
    let regex_uri = match raw.regex_uri {
        None => None,
        Some((re, to)) => {
            if to.contains(['?', '#']) || !to.bytes().all(|b| b.is_ascii_graphic()) {
                errs.push((
                    "regex_uri[1]".into(),
                    "the replacement must be a path: visible ASCII without `?` or `#`".into(),
                ));
            }
            match Regex::new(&re) {
                Ok(re) => Some((re, to)),
                Err(e) => {
                    errs.push(("regex_uri[0]".into(), format!("bad regex: {e}")));
                    None
                }
            }
        }
    };
    let host = raw
        .host
        .and_then(|h| match h.parse::<http::uri::Authority>() {
            Ok(_) => HeaderValue::from_str(&h).ok(),
            Err(_) => {
                errs.push(("host".into(), format!("`{h}` is not a host[:port]")));
                None
            }
        });
    let method = raw
        .method
        .and_then(|m| match Method::from_bytes(m.as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                errs.push(("method".into(), format!("`{m}` is not a method")));
                None
            }
        });
    let headers = raw.headers.compile("headers", &mut errs);
    for (i, n) in raw.query.remove.iter().enumerate() {
        if n.is_empty() {
            errs.push((format!("query.remove[{i}]"), "is empty".into()));
        }
    }
    for (key, map) in [("set", &raw.query.set), ("add", &raw.query.add)] {
        for n in map.keys() {
            if n.is_empty() {
                errs.push((format!("query.{key}"), "has an empty argument name".into()));
            }
        }
    }
    let has_query_ops =
        !raw.query.remove.is_empty() || !raw.query.set.is_empty() || !raw.query.add.is_empty();
    let has_header_ops = !raw.headers.remove.is_empty()
        || !raw.headers.set.is_empty()
        || !raw.headers.add.is_empty();
    if strip_prefix.is_none()
        && regex_uri.is_none()
        && host.is_none()
        && method.is_none()
        && !has_query_ops
        && !has_header_ops
        && errs.is_empty()
    {
        errs.push((
            String::new(),
            "set at least one of `strip_prefix`, `regex_uri`, `host`, `method`, `headers`, `query`"
                .into(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut query_drop: Vec<String> = raw.query.remove;
    query_drop.extend(raw.query.set.keys().cloned());
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (n, v) in raw.query.set.iter().chain(raw.query.add.iter()) {
        ser.append_pair(n, v);
    }
    Ok(ProxyRewrite {
        strip_prefix,
        regex_uri,
        host,
        method,
        headers,
        has_query_ops,
        query_drop,
        query_append: ser.finish(),
    })
}

impl ProxyRewrite {
    /// The new path, or `None` when it stays as it is.
    fn rewrite_path(&self, path: &str) -> Option<String> {
        let mut out: Option<String> = None;
        if let Some(prefix) = &self.strip_prefix
            && let Some(rest) = path.strip_prefix(prefix.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            out = Some(if rest.is_empty() {
                "/".into()
            } else {
                rest.into()
            });
        }
        if let Some((re, to)) = &self.regex_uri {
            let cur = out.as_deref().unwrap_or(path);
            if re.is_match(cur) {
                out = Some(re.replace(cur, to.as_str()).into_owned());
            }
        }
        out.map(|p| {
            if p.starts_with('/') {
                p
            } else {
                format!("/{p}")
            }
        })
    }

    /// The new query (without `?`; empty for none).
    fn rewrite_query(&self, query: Option<&str>) -> String {
        let mut out = String::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
            let name = form_urlencoded::parse(raw_name.as_bytes())
                .next()
                .map(|(n, _)| n.into_owned())
                .unwrap_or_default();
            if self.query_drop.contains(&name) {
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(pair);
        }
        if !self.query_append.is_empty() {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&self.query_append);
        }
        out
    }
}

impl Plugin for ProxyRewrite {
    fn upstream_request(&self, req: &mut UpstreamRequest<'_>, _ctx: &mut RequestCtx) {
        let new_path = self.rewrite_path(req.path_and_query.path());
        if new_path.is_some() || self.has_query_ops {
            let path = new_path.as_deref().unwrap_or(req.path_and_query.path());
            let query = if self.has_query_ops {
                self.rewrite_query(req.path_and_query.query())
            } else {
                req.path_and_query.query().unwrap_or("").to_string()
            };
            let pq = if query.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{query}")
            };
            // The path comes from a valid one and a replacement checked at
            // load; should it still not parse, the request goes out
            // unchanged and the reason is logged.
            match pq.parse::<PathAndQuery>() {
                Ok(pq) => *req.path_and_query = pq,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy-rewrite made an invalid request target; left unchanged")
                }
            }
        }
        if let Some(m) = &self.method {
            *req.method = m.clone();
        }
        if let Some(h) = &self.host {
            *req.host = Some(h.clone());
        }
        self.headers.apply(req.headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(yaml: &str) -> ProxyRewrite {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        match compile(&v) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("{regex_uri: ['(', '/x?y'], method: 'B AD', strip_prefix: x}")
                .unwrap();
        let e = compile(&v).err().unwrap();
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["strip_prefix", "regex_uri[1]", "regex_uri[0]", "method"]
        );
    }

    #[test]
    fn strip_prefix_respects_segments() {
        let p = plugin("{strip_prefix: /api/}");
        assert_eq!(p.rewrite_path("/api/users").as_deref(), Some("/users"));
        assert_eq!(p.rewrite_path("/api").as_deref(), Some("/"));
        assert_eq!(p.rewrite_path("/apiary"), None);
    }

    #[test]
    fn regex_with_captures() {
        let p = plugin("{regex_uri: ['^/v1/(\\w+)/(?P<id>\\d+)$', '/${id}/$1']}");
        assert_eq!(p.rewrite_path("/v1/users/42").as_deref(), Some("/42/users"));
        assert_eq!(p.rewrite_path("/v2/users/42"), None);
    }

    #[test]
    fn query_edits_keep_untouched_arguments_verbatim() {
        let p = plugin("{query: {remove: [token], set: {page: '2'}, add: {tag: 'a b'}}}");
        assert_eq!(
            p.rewrite_query(Some("q=x%20y&token=s&page=1&%74oken=t")),
            "q=x%20y&page=2&tag=a+b"
        );
        assert_eq!(p.rewrite_query(None), "page=2&tag=a+b");
    }
}
