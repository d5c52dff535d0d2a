//! What a node reports about itself: `GET /v1/status` (mode, snapshot,
//! targets, store), `GET /v1/cluster/members`, `GET /v1/cluster/mesh`,
//! `GET /v1/cluster/health` and `GET /metrics`, with the refresh of the read-on-demand metric
//! series that a scrape and an OTLP push share.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AdminCtx, ApiError};

pub(super) async fn status(State(ctx): State<Arc<AdminCtx>>) -> Response {
    let snap = ctx.state.load();
    let mut doc = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "mode": if ctx.store.is_some() { "cluster" } else { "file" },
        "config": {
            "generation": snap.generation(),
            "loaded_at": humantime::format_rfc3339_seconds(snap.built_at).to_string(),
            "routes": snap.router.len(),
            "upstreams": snap.upstreams.len(),
        },
        "upstreams": snap.upstreams.values().map(|u| {
            let now = crate::clock::mono_ms();
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
pub(super) async fn cluster_members(State(ctx): State<Arc<AdminCtx>>) -> Response {
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

/// `GET /v1/cluster/mesh`: this node's mesh links and counters.
pub(super) async fn cluster_mesh(State(ctx): State<Arc<AdminCtx>>) -> Response {
    match &ctx.cluster {
        Some(c) => axum::Json(c.mesh().json()).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "cluster_disabled",
            "this node runs alone: no `cluster` config section and no cluster flags",
        )
        .into_response(),
    }
}

/// `GET /v1/cluster/health`: the merged active health view.
pub(super) async fn cluster_health(State(ctx): State<Arc<AdminCtx>>) -> Response {
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
    ctx.state.stores().cluster_limits().publish_metrics(m);
    ctx.state.stores().redis().publish_metrics(m);
    crate::cluster_metrics::refresh(m, ctx.cluster.as_deref(), &ctx.health, ctx.store.as_ref())
        .await;
}

/// Lets the OTLP metrics push refresh the same series a scrape does. The
/// refresh runs on this (the gateway's) runtime, where the cluster state
/// lives; the export thread only waits for it, bounded by its timeout.
pub(super) fn install_metrics_refresh(ctx: &Arc<AdminCtx>) {
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

pub(super) async fn metrics(State(ctx): State<Arc<AdminCtx>>, headers: HeaderMap) -> Response {
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
