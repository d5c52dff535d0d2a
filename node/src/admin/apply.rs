//! `POST /v1/apply`: the planner behind `weir apply`. It makes the kinds
//! listed in the request match exactly (create, update, delete), checks
//! the whole result before writing, and writes the plan as one batch
//! conditional on the revisions it was planned against.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_storage::{Batch, Op, Problem};

use super::body::{self, Query};
use super::documents::{WriteQuery, store, write, write_response};
use super::keys::caller;
use super::{AdminCtx, ApiError, ApiResult, outcome_error};
use crate::clock::unix_ms;
use crate::docs;

/// `POST /v1/apply`: make the kinds listed in `documents` match exactly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    /// Desired documents by kind; kinds absent here are left alone.
    documents: BTreeMap<String, Vec<Value>>,
    /// Compute the plan only.
    #[serde(default)]
    dry_run: bool,
    /// Create and update only: documents of the listed kinds that are
    /// not in `documents` are kept, not deleted.
    #[serde(default)]
    upsert: bool,
    /// Shown in the history.
    #[serde(default)]
    message: String,
}

/// The request, from JSON or (`Content-Type: application/yaml`) from
/// YAML read within the config loader's bounds.
fn request(headers: &HeaderMap, body: &[u8]) -> Result<ApplyRequest, ApiError> {
    let problem = |pointer: String, reason: String| {
        ApiError::invalid(vec![Problem {
            kind: String::new(),
            id: String::new(),
            pointer,
            reason,
        }])
    };
    let yaml = super::guard::media_type(headers).is_some_and(|m| super::guard::is_yaml(&m));
    let value = if yaml {
        let text = std::str::from_utf8(body)
            .map_err(|_| problem(String::new(), "the YAML body is not UTF-8".into()))?;
        crate::config::parse_value(text).map_err(|e| {
            let p = &e.0[0];
            let at = p
                .location
                .map(|(l, c)| format!(" at {l}:{c}"))
                .unwrap_or_default();
            problem(String::new(), format!("{}{at}", p.reason))
        })?
    } else {
        body::json(body).map_err(|(pointer, reason)| problem(pointer, reason))?
    };
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let pointer = crate::docs::pointer_of(e.path());
        problem(pointer, e.into_inner().to_string())
    })
}

/// One step of an apply plan.
#[derive(Debug, Serialize)]
struct PlanStep {
    action: &'static str,
    kind: String,
    id: String,
}

pub(super) async fn apply(
    State(ctx): State<Arc<AdminCtx>>,
    Query(q): Query<WriteQuery>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kv = store(&ctx)?;
    let req = request(&headers, &body)?;
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
        if !req.upsert
            && managed.contains(kind)
            && !desired.contains_key(&(kind.clone(), id.clone()))
        {
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
        at_ms: unix_ms(),
    };
    // The whole result is checked even for a dry run.
    let preview = kv
        .view()
        .preview(&batch, &docs::standalone_validator())
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
