//! The admin listener: health, readiness, status and metrics, and — when
//! the node runs with the replicated store — the config REST API
//! (`/v1/{kind}`, `/v1/revisions`, `/v1/rollback/{revision}`,
//! `/v1/apply`, `/v1/config`), its OpenAPI document and the Raft RPC
//! endpoints (`/raft/*`).
//!
//! Every body is validated where it enters: unknown fields, wrong types and
//! broken references come back as 400 with one JSON pointer and reason per
//! problem, and nothing is stored. The store re-validates each batch when
//! it applies it, so concurrent writes cannot combine into a bad config.
//!
//! - `keys.rs`: admin keys, roles and the auth middleware;
//! - `status.rs`: status, cluster members, mesh and health, metrics;
//! - `purge.rs`: the response cache's stats and purge;
//! - `documents.rs`: document CRUD, export, history, rollback, and the
//!   write path the others share;
//! - `subscriptions.rs`: the subscription workflow;
//! - `apply.rs`: the `weir apply` planner;
//! - `guard.rs`: the host, origin and content-type checks every request
//!   passes, and the JSON form of every error;
//! - `body.rs`: request bodies and query strings as the handlers read
//!   them (duplicate keys refused, the parameter named in each error).
//!
//! This file holds what they share (the context, the error type) and the
//! endpoint table the router and the OpenAPI document are built from.
//! The store follower, which turns stored documents into the running
//! snapshot, is `start::follow`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use weir_cluster::raft::{ClusterError, RaftKv};
use weir_storage::{Problem, WriteOutcome};

use crate::snapshot::State as Snap;

mod apply;
mod body;
mod documents;
mod guard;
mod keys;
mod purge;
mod status;
pub(crate) use status::mode_name;
mod subscriptions;

pub use guard::Hosts;
pub use keys::{ApiKey, Role};
use subscriptions::Decision;

/// What the admin handlers share.
pub struct AdminCtx {
    /// The published route snapshot.
    pub state: Arc<Snap>,
    /// The replicated store (absent in file mode).
    pub store: Option<RaftKv>,
    /// Admin keys (empty: no authentication, loopback only).
    pub keys: Vec<ApiKey>,
    /// Revision the running snapshot was built from.
    pub applied_revision: AtomicU64,
    /// Gossip membership, when clustering is on.
    pub cluster: crate::cluster::SharedCluster,
    /// Active health checks and the merged view.
    pub health: Arc<crate::health::HealthChecker>,
    /// Stored documents that are not valid (they block every write).
    pub stored_problems: crate::stored::StoredProblems,
    /// The names requests may address the admin listener by.
    pub hosts: Hosts,
}

// === errors ===

/// An admin API error: status, code, message and the problems found.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    problems: Vec<Problem>,
    /// `Retry-After`, when a retry later may succeed (no leader yet).
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
            retry_after: None,
        }
    }

    fn invalid(problems: Vec<Problem>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: format!("{} problem(s); nothing was stored", problems.len()),
            problems,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "status": self.status.as_u16(),
                "code": self.code,
                "message": self.message,
                "problems": self.problems,
            }
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(d) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
        resp
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        if e.retryable() {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
            err.retry_after = e.retry_after();
            err
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

impl ApiError {
    /// A refused write whose problems lie (also) in documents the store
    /// already held invalid: say which ones block writes and how to fix
    /// them (`stored`: the stored documents' own problems).
    fn with_stored(mut self, stored: &[Problem]) -> ApiError {
        let blocking = crate::stored::documents(stored);
        if self.code == "invalid"
            && self
                .problems
                .iter()
                .any(|p| blocking.contains(&(p.kind.clone(), p.id.clone())))
        {
            self.message = format!("{}; {}", self.message, crate::stored::fix_hint(stored));
        }
        self
    }
}

fn outcome_error(o: &WriteOutcome) -> Option<ApiError> {
    match o {
        WriteOutcome::Rejected { problems } => Some(ApiError::invalid(problems.clone())),
        WriteOutcome::Conflict {
            kind,
            id,
            expected,
            current,
        } => Some(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{kind}/{id} is at revision {current}, not {expected}"),
        )),
        _ => None,
    }
}

type ApiResult = Result<Response, ApiError>;

// === router ===

type Handler = axum::routing::MethodRouter<Arc<AdminCtx>>;

/// Every admin endpoint: `(method, path, handler)`. The router is built
/// from this list and the OpenAPI document from [`endpoints`], so the two
/// cannot differ (the Raft RPC endpoints under `/raft/` are internal and
/// documented in `docs/raft.md` instead).
fn table() -> Vec<(&'static str, &'static str, Handler)> {
    vec![
        (
            "get",
            "/v1/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        ),
        (
            "get",
            "/v1/ready",
            get(|| async { axum::Json(json!({"status": "ready"})) }),
        ),
        ("get", "/v1/status", get(status::status)),
        ("get", "/metrics", get(status::metrics)),
        ("get", "/v1/cluster/members", get(status::cluster_members)),
        ("get", "/v1/cluster/mesh", get(status::cluster_mesh)),
        ("get", "/v1/cluster/health", get(status::cluster_health)),
        (
            "get",
            "/v1/openapi.json",
            get(|| async { axum::Json(crate::openapi::document()) }),
        ),
        ("get", "/v1/config", get(documents::export)),
        ("get", "/v1/cache", get(purge::cache_stats)),
        ("post", "/v1/cache/purge", post(purge::cache_purge)),
        (
            "post",
            "/v1/apply",
            post(apply::apply).layer(DefaultBodyLimit::max(guard::APPLY_BODY_LIMIT)),
        ),
        ("get", "/v1/revisions", get(documents::revisions)),
        ("post", "/v1/rollback/{revision}", post(documents::rollback)),
        ("get", "/v1/{kind}", get(documents::list)),
        ("post", "/v1/{kind}", post(documents::create)),
        ("get", "/v1/{kind}/{id}", get(documents::get_one)),
        (
            "put",
            "/v1/{kind}/{id}",
            axum::routing::put(documents::put_one),
        ),
        (
            "delete",
            "/v1/{kind}/{id}",
            axum::routing::delete(documents::delete_one),
        ),
        (
            "post",
            "/v1/subscriptions/{id}/approve",
            post(|c, p, q, e| subscriptions::transition(c, p, q, e, Decision::Approve)),
        ),
        (
            "post",
            "/v1/subscriptions/{id}/reject",
            post(|c, p, q, e| subscriptions::transition(c, p, q, e, Decision::Reject)),
        ),
        (
            "post",
            "/v1/subscriptions/{id}/revoke",
            post(|c, p, q, e| subscriptions::transition(c, p, q, e, Decision::Revoke)),
        ),
    ]
}

/// Every admin endpoint, `(method, path)`, as the router serves them.
pub fn endpoints() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The admin router.
pub fn router(ctx: Arc<AdminCtx>) -> Router {
    status::install_metrics_refresh(&ctx);
    let mut r = Router::new();
    for (_, path, handler) in table() {
        r = r.route(path, handler);
    }
    let mut r = r
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
        })
        .layer(DefaultBodyLimit::max(guard::BODY_LIMIT))
        .with_state(ctx.clone());
    if let Some(kv) = &ctx.store {
        r = r.merge(kv.router());
    }
    r.layer(middleware::from_fn_with_state(ctx.clone(), keys::auth))
        .layer(middleware::from_fn_with_state(ctx, guard::check))
        .layer(middleware::from_fn(guard::json_errors))
}
