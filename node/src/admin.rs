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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_cluster::raft::{ClusterError, RaftKv};
use weir_storage::{Batch, Document, Op, Problem, WriteOutcome};

use crate::config::{Config, SubscriptionState};
use crate::docs;
use crate::snapshot::State as Snap;

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
}

/// Who made the request (the key's name).
#[derive(Clone)]
struct Caller(String);

// === errors ===

/// An admin API error: status, code, message and the problems found.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    problems: Vec<Problem>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    fn invalid(problems: Vec<Problem>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: format!("{} problem(s); nothing was stored", problems.len()),
            problems,
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
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        if e.retryable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
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
        ("get", "/v1/status", get(status)),
        ("get", "/metrics", get(metrics)),
        ("get", "/v1/cluster/members", get(cluster_members)),
        ("get", "/v1/cluster/health", get(cluster_health)),
        (
            "get",
            "/v1/openapi.json",
            get(|| async { axum::Json(crate::openapi::document()) }),
        ),
        ("get", "/v1/config", get(export)),
        ("get", "/v1/cache", get(cache_stats)),
        ("post", "/v1/cache/purge", post(cache_purge)),
        (
            "post",
            "/v1/apply",
            post(apply).layer(DefaultBodyLimit::max(64 * 1024 * 1024)),
        ),
        ("get", "/v1/revisions", get(revisions)),
        ("post", "/v1/rollback/{revision}", post(rollback)),
        ("get", "/v1/{kind}", get(list)),
        ("post", "/v1/{kind}", post(create)),
        ("get", "/v1/{kind}/{id}", get(get_one)),
        ("put", "/v1/{kind}/{id}", axum::routing::put(put_one)),
        (
            "delete",
            "/v1/{kind}/{id}",
            axum::routing::delete(delete_one),
        ),
        (
            "post",
            "/v1/subscriptions/{id}/approve",
            post(|c, p, q, e| transition(c, p, q, e, Decision::Approve)),
        ),
        (
            "post",
            "/v1/subscriptions/{id}/reject",
            post(|c, p, q, e| transition(c, p, q, e, Decision::Reject)),
        ),
        (
            "post",
            "/v1/subscriptions/{id}/revoke",
            post(|c, p, q, e| transition(c, p, q, e, Decision::Revoke)),
        ),
    ]
}

/// Every admin endpoint, `(method, path)`, as the router serves them.
pub fn endpoints() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The admin router.
pub fn router(ctx: Arc<AdminCtx>) -> Router {
    install_metrics_refresh(&ctx);
    let mut r = Router::new();
    for (_, path, handler) in table() {
        r = r.route(path, handler);
    }
    let mut r = r
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
        })
        .with_state(ctx.clone());
    if let Some(kv) = &ctx.store {
        r = r.merge(kv.router());
    }
    r.layer(middleware::from_fn_with_state(ctx, auth))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

async fn auth(State(ctx): State<Arc<AdminCtx>>, mut req: Request, next: Next) -> Response {
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

// === response cache ===

/// `GET /v1/cache`: what this node's response cache holds and is doing.
async fn cache_stats(State(ctx): State<Arc<AdminCtx>>) -> Response {
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
async fn cache_purge(State(ctx): State<Arc<AdminCtx>>, body: Bytes) -> Result<Response, ApiError> {
    let problem = |pointer: &str, reason: &str| {
        ApiError::invalid(vec![Problem {
            kind: String::new(),
            id: String::new(),
            pointer: pointer.to_string(),
            reason: reason.to_string(),
        }])
    };
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| problem("", &format!("the body is not JSON: {e}")))?;
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

// === status and metrics ===

async fn status(State(ctx): State<Arc<AdminCtx>>) -> Response {
    let snap = ctx.state.load();
    let mut doc = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "mode": if ctx.store.is_some() { "cluster" } else { "file" },
        "config": {
            "generation": snap.generation,
            "loaded_at": humantime::format_rfc3339_seconds(snap.built_at).to_string(),
            "routes": snap.router.len(),
            "upstreams": snap.upstreams.len(),
        },
        "upstreams": snap.upstreams.values().map(|u| {
            let now = crate::upstream::now_ms();
            json!({
                "id": u.id,
                "targets": u.targets.iter().enumerate().map(|(i, t)| json!({
                    "addr": t.addr,
                    "up": u.is_up(i, now),
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    });
    if let Some(kv) = &ctx.store {
        let st = kv.status();
        doc["config"]["revision"] = json!(ctx.applied_revision.load(Ordering::Relaxed));
        doc["config_stale"] = json!(st.config_stale);
        doc["config_age_ms"] = json!(st.config_age_ms);
        doc["cluster"] = json!(st);
        let blocking = ctx.stored_problems.get();
        doc["config"]["writes_blocked"] = json!(!blocking.is_empty());
        doc["config"]["stored_problems"] = json!(*blocking);
    }
    axum::Json(doc).into_response()
}

/// `GET /v1/cluster/members`: the gossip view of the cluster.
async fn cluster_members(State(ctx): State<Arc<AdminCtx>>) -> Response {
    match &ctx.cluster {
        Some(c) => axum::Json(c.members_json().await).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "cluster_disabled",
            "this node runs alone: no `cluster` config section and no cluster flags",
        )
        .into_response(),
    }
}

/// `GET /v1/cluster/health`: the merged active health view.
async fn cluster_health(State(ctx): State<Arc<AdminCtx>>) -> Response {
    axum::Json(json!({
        "node_id": ctx.cluster.as_ref().map(|c| c.membership().node_id().to_string()),
        "targets": ctx.health.view(),
    }))
    .into_response()
}

/// Brings the read-not-counted series up to date, before a scrape or an
/// OTLP export.
async fn refresh_metrics(ctx: &AdminCtx, m: &weir_observability::metrics::Metrics) {
    ctx.state.telemetry().refresh(&ctx.state.load());
    crate::cluster_metrics::refresh(m, ctx.cluster.as_deref(), &ctx.health, ctx.store.as_ref())
        .await;
}

/// Lets the OTLP metrics push refresh the same series a scrape does. The
/// refresh runs on this (the gateway's) runtime, where the cluster state
/// lives; the export thread only waits for it, bounded by its timeout.
fn install_metrics_refresh(ctx: &Arc<AdminCtx>) {
    let export = ctx.state.telemetry().metrics_export();
    if !export.is_enabled() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Weak: the context owns the telemetry that owns this hook.
    let weak = Arc::downgrade(ctx);
    export.set_refresh(Arc::new(move || {
        let weak = weak.clone();
        let task = runtime.spawn(async move {
            if let Some(ctx) = weak.upgrade() {
                refresh_metrics(&ctx, weir_observability::metrics::global()).await;
            }
        });
        Box::pin(async move {
            let _ = task.await;
        })
    }));
}

async fn metrics(State(ctx): State<Arc<AdminCtx>>, headers: HeaderMap) -> Response {
    use weir_observability::metrics::{Format, global};
    let m = global();
    if !m.enabled() {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "metrics are disabled")
            .into_response();
    }
    refresh_metrics(&ctx, m).await;
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let mut r = m.encode_as(format).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

// === documents ===

fn store(ctx: &AdminCtx) -> Result<&RaftKv, ApiError> {
    ctx.store.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "file_mode",
            "this node serves the file given with --config; start it with --data-dir (or without --config) to manage config through the API",
        )
    })
}

fn check_kind(kind: &str) -> Result<(), ApiError> {
    if docs::is_kind(kind) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_kind",
            format!("no kind `{kind}`; kinds: {}", docs::KINDS.join(", ")),
        ))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn parse_body(kind: &str, id: Option<&str>, body: &Bytes) -> Result<(String, Value), ApiError> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(vec![Problem {
            kind: kind.into(),
            id: id.unwrap_or_default().into(),
            pointer: String::new(),
            reason: format!("not JSON: {e}"),
        }])
    })?;
    let id = match id {
        Some(id) => {
            if let Some(o) = v.as_object_mut() {
                o.entry("id")
                    .or_insert_with(|| Value::String(id.to_string()));
            }
            id.to_string()
        }
        None => match v.get("id").and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => {
                return Err(ApiError::invalid(vec![Problem {
                    kind: kind.into(),
                    id: String::new(),
                    pointer: "/id".into(),
                    reason: "missing or not a string".into(),
                }]));
            }
        },
    };
    let problems: Vec<Problem> = docs::check_document(kind, &id, &v)
        .into_iter()
        .map(|(pointer, reason)| Problem {
            kind: kind.into(),
            id: id.clone(),
            pointer,
            reason,
        })
        .collect();
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    Ok((id.clone(), docs::canonical(kind, v)))
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_if_match",
                "If-Match must be a revision number",
            )
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    /// `applied`: wait until every member applied the write.
    #[serde(default)]
    wait: Option<String>,
    /// Bound for `wait=applied`, ms (default 5000, at most 60000).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Proposes `batch` and maps the outcome (the state machine checks
/// preconditions and validates the result when it applies the entry).
async fn write(
    ctx: &AdminCtx,
    batch: Batch,
    q: &WriteQuery,
) -> Result<(WriteOutcome, Value), ApiError> {
    let kv = store(ctx)?;
    match q.wait.as_deref() {
        None | Some("applied") => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("wait=`{other}`: only `applied` is known"),
            ));
        }
    }
    // No local dry run: this node may lag the leader, and the state
    // machine validates every batch against the latest state anyway.
    let written = kv.write(batch).await?;
    if let Some(e) = outcome_error(&written.outcome) {
        return Err(e.with_stored(&ctx.stored_problems.get()));
    }
    let mut extra = json!({});
    if q.wait.as_deref() == Some("applied") {
        let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(5000).min(60_000));
        let lagging = kv.wait_applied(written.index, timeout).await;
        extra["applied"] = json!({"everywhere": lagging.is_empty(), "lagging": lagging});
    } else {
        // Read-your-writes on the node that took the request.
        kv.wait_local(written.index, Duration::from_secs(5)).await?;
    }
    Ok((written.outcome, extra))
}

fn write_response(
    status: StatusCode,
    outcome: &WriteOutcome,
    mut extra: Value,
    doc: Option<Arc<Document>>,
) -> Response {
    let (name, revision) = match outcome {
        WriteOutcome::Applied { revision, .. } => ("applied", *revision),
        WriteOutcome::Unchanged { revision } => ("unchanged", *revision),
        _ => ("", 0),
    };
    extra["outcome"] = json!(name);
    extra["revision"] = json!(revision);
    let mut resp = match doc {
        Some(d) => {
            extra["document"] = json!(d);
            let etag = d.revision.to_string();
            let mut r = (status, axum::Json(extra)).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        None => (status, axum::Json(extra)).into_response(),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn caller(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<Caller>()
        .map_or_else(|| "anonymous".into(), |c| c.0.clone())
}

async fn put_one(
    State(ctx): State<Arc<AdminCtx>>,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_kind(&kind)?;
    let (id, value) = parse_body(&kind, Some(&id), &body)?;
    let expect = if_match(&headers)?;
    let batch = Batch {
        ops: vec![Op::Put {
            kind: kind.clone(),
            id: id.clone(),
            value,
            expect,
        }],
        author: caller(&ext),
        message: format!("put {kind}/{id}"),
        at_ms: now_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    let doc = store(&ctx)?.view().get(&kind, &id);
    Ok(write_response(StatusCode::OK, &outcome, extra, doc))
}

async fn create(
    State(ctx): State<Arc<AdminCtx>>,
    Path(kind): Path<String>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
    body: Bytes,
) -> ApiResult {
    check_kind(&kind)?;
    let (id, value) = parse_body(&kind, None, &body)?;
    if kind == "subscriptions" {
        check_new_subscription(&id, &body)?;
    }
    let batch = Batch {
        ops: vec![Op::Put {
            kind: kind.clone(),
            id: id.clone(),
            value,
            expect: Some(0),
        }],
        author: caller(&ext),
        message: format!("create {kind}/{id}"),
        at_ms: now_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    let doc = store(&ctx)?.view().get(&kind, &id);
    Ok(write_response(StatusCode::CREATED, &outcome, extra, doc))
}

async fn delete_one(
    State(ctx): State<Arc<AdminCtx>>,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
) -> ApiResult {
    check_kind(&kind)?;
    let kv = store(&ctx)?;
    let expect = if_match(&headers)?;
    if kv.view().get(&kind, &id).is_none() && expect.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {kind}/{id}"),
        ));
    }
    let batch = Batch {
        ops: vec![Op::Delete {
            kind: kind.clone(),
            id: id.clone(),
            expect,
        }],
        author: caller(&ext),
        message: format!("delete {kind}/{id}"),
        at_ms: now_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    Ok(write_response(StatusCode::OK, &outcome, extra, None))
}

// === subscription workflow ===

/// A decision on a subscription.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Approve,
    Reject,
    Revoke,
}

impl Decision {
    fn name(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
            Decision::Revoke => "revoke",
        }
    }

    /// The state it leads to and the one it starts from.
    fn states(self) -> (SubscriptionState, SubscriptionState) {
        use SubscriptionState::{Approved, Rejected, Requested, Revoked};
        match self {
            Decision::Approve => (Approved, Requested),
            Decision::Reject => (Rejected, Requested),
            Decision::Revoke => (Revoked, Approved),
        }
    }
}

fn state_name(s: SubscriptionState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `POST /v1/subscriptions` is the request step: a new subscription
/// starts as `requested` (PUT, the declarative path, may set any state).
fn check_new_subscription(id: &str, body: &Bytes) -> Result<(), ApiError> {
    let raw: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match raw.get("state") {
        None => Ok(()),
        Some(Value::String(s)) if s == "requested" => Ok(()),
        Some(other) => Err(ApiError::invalid(vec![Problem {
            kind: "subscriptions".into(),
            id: id.into(),
            pointer: "/state".into(),
            reason: format!(
                "a new subscription starts as `requested`, not {other}; decide with POST /v1/subscriptions/{id}/approve or /reject"
            ),
        }])),
    }
}

/// `POST /v1/subscriptions/{id}/approve|reject|revoke`: moves a
/// subscription to its next state. Approve and reject take a `requested`
/// one, revoke an `approved` one; asking for the state it is already in
/// is `unchanged`, anything else 409 `illegal_transition`. The write is
/// conditional on the revision read, so a concurrent change is a 409
/// `conflict`, never a lost update.
async fn transition(
    State(ctx): State<Arc<AdminCtx>>,
    Path(id): Path<String>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
    decision: Decision,
) -> ApiResult {
    let kv = store(&ctx)?;
    // Decide on the latest committed state, not a lagging local copy.
    kv.read_barrier(Duration::from_secs(5)).await?;
    let current = kv.view().get("subscriptions", &id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no subscriptions/{id}"),
        )
    })?;
    let mut doc: docs::SubscriptionDoc =
        serde_json::from_value(current.value.clone()).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("stored subscriptions/{id} does not parse: {e}"),
            )
        })?;
    let (to, from) = decision.states();
    if doc.state == to {
        let outcome = WriteOutcome::Unchanged {
            revision: kv.view().revision(),
        };
        return Ok(write_response(
            StatusCode::OK,
            &outcome,
            json!({}),
            Some(current),
        ));
    }
    if doc.state != from {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "illegal_transition",
            format!(
                "subscription `{id}` is `{}`; {} needs a `{}` one",
                state_name(doc.state),
                decision.name(),
                state_name(from)
            ),
        ));
    }
    doc.state = to;
    let value = serde_json::to_value(&doc)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let batch = Batch {
        ops: vec![Op::Put {
            kind: "subscriptions".into(),
            id: id.clone(),
            value,
            expect: Some(current.revision),
        }],
        author: caller(&ext),
        message: format!("{} subscriptions/{id}", decision.name()),
        at_ms: now_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    let doc = kv.view().get("subscriptions", &id);
    Ok(write_response(StatusCode::OK, &outcome, extra, doc))
}

#[derive(Debug, Default, Deserialize)]
struct ReadQuery {
    #[serde(default)]
    consistent: Option<bool>,
}

async fn barrier(kv: &RaftKv, consistent: Option<bool>) -> Result<(), ApiError> {
    if consistent == Some(true) {
        kv.read_barrier(Duration::from_secs(5)).await?;
    }
    Ok(())
}

async fn get_one(
    State(ctx): State<Arc<AdminCtx>>,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> ApiResult {
    check_kind(&kind)?;
    let kv = store(&ctx)?;
    barrier(kv, q.consistent).await?;
    let d = kv.view().get(&kind, &id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {kind}/{id}"),
        )
    })?;
    let mut r = axum::Json(json!(d)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", d.revision)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

async fn list(
    State(ctx): State<Arc<AdminCtx>>,
    Path(kind): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult {
    check_kind(&kind)?;
    let kv = store(&ctx)?;
    let mut limit = 100usize;
    let mut after: Option<String> = None;
    let mut filters = Vec::new();
    for (k, v) in &params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_query",
                            "limit is 1 to 1000",
                        )
                    })?;
            }
            "after" => after = Some(v.clone()),
            "consistent" => barrier(kv, Some(v == "true")).await?,
            field => filters.push((field.to_string(), v.clone())),
        }
    }
    let (all, revision) = kv.view().docs_at();
    let matches = |d: &Document| {
        filters.iter().all(|(f, want)| match d.value.get(f) {
            Some(Value::String(s)) => s == want,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
            Some(Value::Number(n)) => n.to_string() == *want,
            Some(Value::Bool(b)) => b.to_string() == *want,
            _ => false,
        })
    };
    let start = (kind.clone(), after.clone().unwrap_or_default());
    let mut items = Vec::new();
    let mut next = None;
    for ((k, id), d) in all.range(start..) {
        if *k != kind {
            break;
        }
        if after.as_deref() == Some(id.as_str()) || !matches(d) {
            continue;
        }
        if items.len() == limit {
            next = items.last().map(|d: &Arc<Document>| d.id.clone());
            break;
        }
        items.push(d.clone());
    }
    Ok(axum::Json(json!({"items": items, "next": next, "revision": revision})).into_response())
}

async fn export(State(ctx): State<Arc<AdminCtx>>, Query(q): Query<ReadQuery>) -> ApiResult {
    let kv = store(&ctx)?;
    barrier(kv, q.consistent).await?;
    let (all, revision) = kv.view().docs_at();
    let mut out = serde_json::Map::new();
    out.insert("revision".into(), json!(revision));
    for kind in docs::KINDS {
        out.insert(kind.into(), json!([]));
    }
    for ((kind, _), d) in all.iter() {
        if let Some(Value::Array(a)) = out.get_mut(kind) {
            a.push(d.value.clone());
        }
    }
    Ok(axum::Json(Value::Object(out)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn revisions(State(ctx): State<Arc<AdminCtx>>, Query(q): Query<RevisionsQuery>) -> ApiResult {
    let kv = store(&ctx)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = kv
        .view()
        .history(q.after, limit)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(axum::Json(json!({"items": items, "revision": kv.view().revision()})).into_response())
}

async fn rollback(
    State(ctx): State<Arc<AdminCtx>>,
    Path(revision): Path<String>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
) -> ApiResult {
    let revision: u64 = revision.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_revision",
            "a revision is a number",
        )
    })?;
    let batch = Batch {
        ops: vec![Op::RollbackTo { revision }],
        author: caller(&ext),
        message: format!("rollback to {revision}"),
        at_ms: now_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    Ok(write_response(StatusCode::OK, &outcome, extra, None))
}

/// `POST /v1/apply`: make the kinds listed in `documents` match exactly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    /// Desired documents by kind; kinds absent here are left alone.
    documents: BTreeMap<String, Vec<Value>>,
    /// Compute the plan only.
    #[serde(default)]
    dry_run: bool,
    /// Shown in the history.
    #[serde(default)]
    message: String,
}

/// One step of an apply plan.
#[derive(Debug, Serialize)]
struct PlanStep {
    action: &'static str,
    kind: String,
    id: String,
}

async fn apply(
    State(ctx): State<Arc<AdminCtx>>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
    body: Bytes,
) -> ApiResult {
    let kv = store(&ctx)?;
    let req: ApplyRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                let pointer = format!("/{}", e.path()).replace('.', "/");
                ApiError::invalid(vec![Problem {
                    kind: String::new(),
                    id: String::new(),
                    pointer: if pointer == "//" {
                        String::new()
                    } else {
                        pointer
                    },
                    reason: e.into_inner().to_string(),
                }])
            })?;
    let mut problems = Vec::new();
    let mut desired: BTreeMap<(String, String), Value> = BTreeMap::new();
    for (kind, items) in &req.documents {
        if !docs::is_kind(kind) {
            problems.push(Problem {
                kind: kind.clone(),
                id: String::new(),
                pointer: format!("/documents/{kind}"),
                reason: format!("unknown kind; kinds: {}", docs::KINDS.join(", ")),
            });
            continue;
        }
        for (i, v) in items.iter().enumerate() {
            let id = v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            for (pointer, reason) in docs::check_document(kind, &id, v) {
                problems.push(Problem {
                    kind: kind.clone(),
                    id: id.clone(),
                    pointer: format!("/documents/{kind}/{i}{pointer}"),
                    reason,
                });
            }
            if desired
                .insert((kind.clone(), id.clone()), docs::canonical(kind, v.clone()))
                .is_some()
            {
                problems.push(Problem {
                    kind: kind.clone(),
                    id: id.clone(),
                    pointer: format!("/documents/{kind}/{i}/id"),
                    reason: "duplicate id".into(),
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    // Plan against the latest committed state, not a lagging local copy.
    kv.read_barrier(Duration::from_secs(5)).await?;
    let managed: BTreeSet<&String> = req.documents.keys().collect();
    let current = kv.view().docs();
    let mut plan = Vec::new();
    let mut ops = Vec::new();
    for ((kind, id), d) in current.iter() {
        if managed.contains(kind) && !desired.contains_key(&(kind.clone(), id.clone())) {
            plan.push(PlanStep {
                action: "delete",
                kind: kind.clone(),
                id: id.clone(),
            });
            ops.push(Op::Delete {
                kind: kind.clone(),
                id: id.clone(),
                expect: Some(d.revision),
            });
        }
    }
    for ((kind, id), v) in desired {
        let cur = current.get(&(kind.clone(), id.clone()));
        let action = match cur {
            None => "create",
            Some(d) if d.value == v => continue,
            Some(_) => "update",
        };
        plan.push(PlanStep {
            action,
            kind: kind.clone(),
            id: id.clone(),
        });
        ops.push(Op::Put {
            kind,
            id,
            value: v,
            expect: Some(cur.map_or(0, |d| d.revision)),
        });
    }
    let batch = Batch {
        ops,
        author: caller(&ext),
        message: if req.message.is_empty() {
            "apply".into()
        } else {
            req.message
        },
        at_ms: now_ms(),
    };
    // The whole result is checked even for a dry run.
    let preview = kv
        .view()
        .preview(&batch, &docs::validator())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if let Some(e) = outcome_error(&preview) {
        return Err(e.with_stored(&ctx.stored_problems.get()));
    }
    if req.dry_run || plan.is_empty() {
        return Ok(axum::Json(json!({
            "plan": plan,
            "dry_run": req.dry_run,
            "outcome": "unchanged",
            "revision": kv.view().revision(),
        }))
        .into_response());
    }
    let (outcome, mut extra) = write(&ctx, batch, &q).await?;
    extra["plan"] = json!(plan);
    extra["dry_run"] = json!(false);
    Ok(write_response(StatusCode::OK, &outcome, extra, None))
}

/// Rebuilds the route snapshot whenever the store's revision moves, from
/// the documents and `base` (settings, observability). Runs until the
/// store goes away.
pub async fn follow_store(ctx: Arc<AdminCtx>, base: Arc<Config>) {
    let Some(kv) = ctx.store.clone() else { return };
    let mut rx = kv.view().subscribe();
    loop {
        let (docs, revision) = kv.view().docs_at();
        if revision != ctx.applied_revision.load(Ordering::Relaxed) {
            let st = ctx.state.clone();
            let base = base.clone();
            let built = tokio::task::spawn_blocking(move || {
                let (cfg, problems) = docs::config_from_docs(&base, &docs);
                if !problems.is_empty() {
                    return Err(format!("{problems:?}"));
                }
                st.apply(&cfg).map_err(|e| e.to_string())
            })
            .await;
            match built {
                Ok(Ok(generation)) => {
                    ctx.applied_revision.store(revision, Ordering::Relaxed);
                    tracing::info!(
                        revision,
                        generation,
                        "route snapshot rebuilt from the store"
                    );
                }
                Ok(Err(e)) => {
                    tracing::error!(revision, error = %e, "stored config does not compile; keeping the running snapshot")
                }
                Err(e) => tracing::error!(error = %e, "snapshot rebuild task failed"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
