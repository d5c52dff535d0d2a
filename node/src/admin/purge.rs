//! The response-cache endpoints: `GET /v1/cache` (what this node's cache
//! holds) and `POST /v1/cache/purge` (remove entries by key or prefix).
//! Both act on this node only; the cache itself is `weir-cache`, its
//! stores held by the node's `State`.

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use weir_storage::Problem;

use std::sync::Arc;

use axum::extract::State;

use super::{AdminCtx, ApiError};

/// `GET /v1/cache`: what this node's response cache holds and is doing.
pub(super) async fn cache_stats(State(ctx): State<Arc<AdminCtx>>) -> Response {
    let (entries, bytes) = ctx.state.stores().cache().stats();
    let c = ctx.state.stores().cache().collapse();
    axum::Json(json!({
        "entries": entries,
        "bytes": bytes,
        "fetching": c.in_flight(),
        "waiting": c.waiting(),
    }))
    .into_response()
}

/// `POST /v1/cache/purge` with `{"key": "..."}` or `{"prefix": "..."}`:
/// removes entries from this node's response cache.
pub(super) async fn cache_purge(
    State(ctx): State<Arc<AdminCtx>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let problem = |pointer: &str, reason: &str| {
        ApiError::invalid(vec![Problem {
            kind: String::new(),
            id: String::new(),
            pointer: pointer.to_string(),
            reason: reason.to_string(),
        }])
    };
    let v: Value = super::body::json(&body)
        .map_err(|(at, e)| problem(&at, &format!("the body is not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(problem(
            "",
            "the body must be an object with `key` or `prefix`",
        ));
    };
    if let Some(other) = obj.keys().find(|k| *k != "key" && *k != "prefix") {
        return Err(problem(
            &format!("/{other}"),
            "unknown field; expected `key` or `prefix`",
        ));
    }
    let what = match (obj.get("key"), obj.get("prefix")) {
        (Some(_), Some(_)) => {
            return Err(problem(
                "/prefix",
                "give either `key` or `prefix`, not both",
            ));
        }
        (None, None) => return Err(problem("", "needs `key` or `prefix`")),
        (Some(k), None) => match k.as_str() {
            Some(k) if !k.is_empty() => weir_cache::Purge::Key(k.to_string()),
            _ => return Err(problem("/key", "must be a non-empty string")),
        },
        (None, Some(p)) => match p.as_str() {
            Some(p) if !p.is_empty() => weir_cache::Purge::Prefix(p.to_string()),
            _ => return Err(problem("/prefix", "must be a non-empty string")),
        },
    };
    let purged = ctx.state.stores().cache().purge(&what);
    Ok(axum::Json(json!({"purged": purged, "scope": "node"})).into_response())
}
