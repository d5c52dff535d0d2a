//! Admin keys and roles: the `NAME:ROLE:SECRET` keys given to `weir
//! serve`, and the middleware that checks the bearer key of every request
//! (viewer keys read, admin keys also write) and records who made it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{AdminCtx, ApiError};
use crate::docs;

/// A role an admin key grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read and write.
    Admin,
    /// Read only.
    Viewer,
}

/// An admin API key.
#[derive(Clone)]
pub struct ApiKey {
    /// Shown in the history as the author.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The bearer secret.
    pub secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;

    /// `NAME:ROLE:SECRET`, role `admin` or `viewer`, secret at least 16
    /// characters.
    fn from_str(s: &str) -> Result<ApiKey, String> {
        let mut it = s.splitn(3, ':');
        let (Some(name), Some(role), Some(secret)) = (it.next(), it.next(), it.next()) else {
            return Err("an admin key is NAME:ROLE:SECRET".into());
        };
        docs::check_id(name).map_err(|e| format!("admin key name: {e}"))?;
        let role = match role {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            other => return Err(format!("admin key role `{other}`: use `admin` or `viewer`")),
        };
        if secret.len() < 16 {
            return Err(format!(
                "admin key `{name}`: the secret needs at least 16 characters"
            ));
        }
        Ok(ApiKey {
            name: name.to_string(),
            role,
            secret: secret.to_string(),
        })
    }
}

/// Who made the request (the key's name).
#[derive(Clone)]
struct Caller(String);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub(super) async fn auth(
    State(ctx): State<Arc<AdminCtx>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if ctx.keys.is_empty() || path == "/v1/health" || path == "/v1/ready" {
        req.extensions_mut().insert(Caller("anonymous".into()));
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()));
    let Some(key) = token.and_then(|t| {
        ctx.keys
            .iter()
            .find(|k| constant_time_eq(k.secret.as_bytes(), t.as_bytes()))
    }) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an admin key is required (Authorization: Bearer KEY)",
        )
        .into_response();
    };
    let read_only =
        matches!(*req.method(), Method::GET | Method::HEAD) && !path.starts_with("/raft/");
    if !read_only && key.role != Role::Admin {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "key `{}` is a viewer key; this needs an admin key",
                key.name
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller(key.name.clone()));
    next.run(req).await
}

pub(super) fn caller(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<Caller>()
        .map_or_else(|| "anonymous".into(), |c| c.0.clone())
}
