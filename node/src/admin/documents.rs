//! Document CRUD over the replicated store: `GET/POST /v1/{kind}`,
//! `GET/PUT/DELETE /v1/{kind}/{id}`, `GET /v1/config`, `GET /v1/revisions`
//! and `POST /v1/rollback/{revision}`, and the write path the other
//! writers share (propose a batch, map its outcome, wait until applied).
//!
//! Every body is checked where it enters (`docs::check_document`); the
//! store re-validates the whole state when it applies a batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_cluster::raft::RaftKv;
use weir_storage::{Batch, Document, Op, Problem, WriteOutcome};

use super::body::{self, Query, invalid_query, query_bool};
use super::keys::caller;
use super::subscriptions::check_new_subscription;
use super::{AdminCtx, ApiError, ApiResult, outcome_error};
use crate::clock::unix_ms;
use crate::docs;

pub(super) fn store(ctx: &AdminCtx) -> Result<&RaftKv, ApiError> {
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

fn parse_body(kind: &str, id: Option<&str>, body: &Bytes) -> Result<(String, Value), ApiError> {
    let mut v: Value = body::json(body).map_err(|(pointer, reason)| {
        ApiError::invalid(vec![Problem {
            kind: kind.into(),
            id: id.unwrap_or_default().into(),
            pointer,
            reason: format!("not JSON: {reason}"),
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
pub(super) struct WriteQuery {
    /// `applied`: wait until every member applied the write.
    #[serde(default)]
    wait: Option<String>,
    /// Bound for `wait=applied`, ms (default 5000, at most 60000).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Proposes `batch` and maps the outcome (the state machine checks
/// preconditions and validates the result when it applies the entry).
pub(super) async fn write(
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

pub(super) fn write_response(
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

pub(super) async fn put_one(
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
        at_ms: unix_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    let doc = store(&ctx)?.view().get(&kind, &id);
    Ok(write_response(StatusCode::OK, &outcome, extra, doc))
}

pub(super) async fn create(
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
        at_ms: unix_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    let doc = store(&ctx)?.view().get(&kind, &id);
    Ok(write_response(StatusCode::CREATED, &outcome, extra, doc))
}

pub(super) async fn delete_one(
    State(ctx): State<Arc<AdminCtx>>,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
) -> ApiResult {
    check_kind(&kind)?;
    let kv = store(&ctx)?;
    let expect = if_match(&headers)?;
    // An id no document can have names nothing, whatever If-Match says.
    if (kv.view().get(&kind, &id).is_none() && expect.is_none()) || docs::check_id(&id).is_err() {
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
        at_ms: unix_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    Ok(write_response(StatusCode::OK, &outcome, extra, None))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ReadQuery {
    #[serde(default)]
    consistent: Option<bool>,
}

async fn barrier(kv: &RaftKv, consistent: Option<bool>) -> Result<(), ApiError> {
    if consistent == Some(true) {
        kv.read_barrier(Duration::from_secs(5)).await?;
    }
    Ok(())
}

pub(super) async fn get_one(
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

pub(super) async fn list(
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
                        invalid_query(format!(
                            "query parameter `limit`: `{v}` is not a number from 1 to 1000"
                        ))
                    })?;
            }
            "after" => after = Some(v.clone()),
            "consistent" => barrier(kv, Some(query_bool("consistent", v)?)).await?,
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

pub(super) async fn export(
    State(ctx): State<Arc<AdminCtx>>,
    Query(q): Query<ReadQuery>,
) -> ApiResult {
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
pub(super) struct RevisionsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn revisions(
    State(ctx): State<Arc<AdminCtx>>,
    Query(q): Query<RevisionsQuery>,
) -> ApiResult {
    let kv = store(&ctx)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = kv
        .view()
        .history(q.after, limit)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(axum::Json(json!({"items": items, "revision": kv.view().revision()})).into_response())
}

pub(super) async fn rollback(
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
        at_ms: unix_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    Ok(write_response(StatusCode::OK, &outcome, extra, None))
}
