//! The subscription workflow: `POST /v1/subscriptions` starts a
//! subscription as `requested`, and `POST /v1/subscriptions/{id}/approve`,
//! `/reject` and `/revoke` move it on, each a conditional write of the
//! revision read.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use weir_storage::{Batch, Op, Problem, WriteOutcome};

use super::body::Query;
use super::documents::{WriteQuery, store, write, write_response};
use super::keys::caller;
use super::{AdminCtx, ApiError, ApiResult};
use crate::clock::unix_ms;
use crate::config::SubscriptionState;
use crate::docs;

/// A decision on a subscription.
#[derive(Debug, Clone, Copy)]
pub(super) enum Decision {
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
pub(super) fn check_new_subscription(id: &str, body: &Bytes) -> Result<(), ApiError> {
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
pub(super) async fn transition(
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
        at_ms: unix_ms(),
    };
    let (outcome, extra) = write(&ctx, batch, &q).await?;
    let doc = kv.view().get("subscriptions", &id);
    Ok(write_response(StatusCode::OK, &outcome, extra, doc))
}
