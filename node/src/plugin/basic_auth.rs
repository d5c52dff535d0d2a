//! `basic-auth`: HTTP Basic credentials (RFC 7617) checked against the
//! consumers' argon2 password hashes. Hashing runs on a blocking thread;
//! the `Authorization` header is removed before proxying by default.

use std::sync::Arc;

use base64::Engine;
use http::header::{self, HeaderValue};
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, auth_failure,
    parse_config,
};
use crate::consumer::Consumers;

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "basic-auth",
    priority: 2520,
    build,
};

/// Config of `basic-auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Remove the `Authorization` header before proxying.
    #[serde(default = "default_true")]
    hide_credentials: bool,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    realm: String,
}

fn default_true() -> bool {
    true
}

fn default_realm() -> String {
    "weir".to_string()
}

struct BasicAuth {
    hide: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    if raw.realm.contains(['"', '\\']) {
        return Err(vec![(
            "realm".into(),
            "must not contain `\"` or `\\`".into(),
        )]);
    }
    let challenge =
        HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", raw.realm))
            .map_err(|_| {
                vec![(
                    "realm".to_string(),
                    "is not a valid header value".to_string(),
                )]
            })?;
    Ok(Arc::new(BasicAuth {
        hide: raw.hide_credentials,
        consumers: env.consumers().clone(),
        challenge,
    }))
}

/// `(username, password)` from an `Authorization: Basic …` value.
fn parse_basic(v: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let v = v.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let i = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..i].to_vec()).ok()?;
    Some((user, decoded[i + 1..].to_vec()))
}

#[async_trait::async_trait]
impl Plugin for BasicAuth {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let Some(value) = req.headers.get(header::AUTHORIZATION) else {
            return Err(auth_failure(ctx, DEF.name, "missing", &self.challenge));
        };
        let Some((user, password)) = parse_basic(value) else {
            return Err(auth_failure(ctx, DEF.name, "malformed", &self.challenge));
        };
        let Some(consumer) = self.consumers.by_password(&user, &password).await else {
            return Err(auth_failure(ctx, DEF.name, "invalid", &self.challenge));
        };
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
    fn parses_basic_credentials() {
        let v = HeaderValue::from_static("Basic YWxpY2U6cDpzcw==");
        assert_eq!(parse_basic(&v), Some(("alice".into(), b"p:ss".to_vec())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer x")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!")), None);
        assert_eq!(
            parse_basic(&HeaderValue::from_static("Basic YWxpY2U=")),
            None
        );
    }
}
