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
        "node_id": ctx.state.telemetry().node_id(),
        "mode": mode_name(ctx.store.is_some()),
        "membership": membership_name(ctx.cluster.is_some()),
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
        let own = ctx.state.telemetry().node_id().to_string();
        let names = raft_names(ctx.cluster.as_deref(), st.node_id, &own).await;
        let mut cluster = json!(st);
        // The store knows its members by Raft id; each is shown beside the
        // node id (from gossip, or this node's own) when it is known.
        for m in cluster["members"].as_array_mut().into_iter().flatten() {
            if let Some(name) = m["id"].as_u64().and_then(|id| names.get(&id)) {
                m["node_id"] = json!(name);
            }
        }
        doc["cluster"] = cluster;
        let blocking = ctx.stored_problems.get();
        doc["config"]["writes_blocked"] = json!(!blocking.is_empty());
        doc["config"]["stored_problems"] = json!(*blocking);
    }
    axum::Json(doc).into_response()
}

/// What `/v1/status` calls the node's config source: `file` (the config
/// file is the config, reloaded on change) or `store` (the replicated
/// config store, written through the admin API), as in ADR 0015.
pub(crate) fn mode_name(store: bool) -> &'static str {
    if store { "store" } else { "file" }
}

/// What `/v1/status` calls the node's membership: `single` (no gossip: it
/// knows no other node) or `gossip` (a member of a gossip cluster).
pub(crate) fn membership_name(gossip: bool) -> &'static str {
    if gossip { "gossip" } else { "single" }
}

/// Why `/v1/cluster/*` has nothing to say on a node without gossip.
const SINGLE_NODE: &str = "this node is a single node: it has no gossip (no `cluster` config section and no cluster flags)";

/// Node id by Raft id: this node, and every gossip member that publishes
/// a Raft id (an alive incarnation wins over an old one).
async fn raft_names(
    cluster: Option<&crate::cluster::Cluster>,
    own_raft_id: u64,
    own: &str,
) -> std::collections::HashMap<u64, String> {
    use weir_cluster::membership::{KEY_RAFT_ID, MemberState};
    let mut names = std::collections::HashMap::new();
    if let Some(c) = cluster {
        for m in c.membership().members().await {
            let Some(id) = m.keys.get(KEY_RAFT_ID).and_then(|v| v.parse().ok()) else {
                continue;
            };
            if m.state == MemberState::Alive || !names.contains_key(&id) {
                names.insert(id, m.id.clone());
            }
        }
    }
    names.insert(own_raft_id, own.to_string());
    names
}

/// `GET /v1/cluster/members`: the gossip view of the cluster, with each
/// member's role in the config store (`raft_role`: `leader`, `voter`,
/// `learner`, or absent when it is not a member) and the config revision
/// it serves (`revision`), in store mode.
pub(super) async fn cluster_members(State(ctx): State<Arc<AdminCtx>>) -> Response {
    match &ctx.cluster {
        Some(c) => {
            let mut doc = c.members_json().await;
            doc["mode"] = json!(mode_name(ctx.store.is_some()));
            if let Some(kv) = &ctx.store {
                let st = kv.status();
                let own_revision = ctx.applied_revision.load(Ordering::Relaxed);
                // An old incarnation of a restarted node still carries its
                // Raft id; the role belongs to the newest one.
                let mut newest: std::collections::HashMap<String, u64> = Default::default();
                for m in doc["members"].as_array().into_iter().flatten() {
                    if let (Some(id), Some(g)) = (m["id"].as_str(), m["generation"].as_u64()) {
                        let e = newest.entry(id.to_string()).or_default();
                        *e = (*e).max(g);
                    }
                }
                for m in doc["members"].as_array_mut().into_iter().flatten() {
                    let superseded = m["id"]
                        .as_str()
                        .and_then(|id| newest.get(id))
                        .is_some_and(|g| m["generation"].as_u64() < Some(*g));
                    if superseded {
                        continue;
                    }
                    if m["is_self"] == json!(true) {
                        m["raft_id"] = json!(st.node_id);
                        m["revision"] = json!(own_revision);
                    }
                    let Some(id) = m["raft_id"].as_u64() else {
                        continue;
                    };
                    let role = if st.leader == Some(id) {
                        Some("leader")
                    } else {
                        st.members
                            .iter()
                            .find(|x| x.id == id)
                            .map(|x| x.role.as_str())
                    };
                    if let Some(role) = role {
                        m["raft_role"] = json!(role);
                    }
                }
            }
            axum::Json(doc).into_response()
        }
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "cluster_disabled", SINGLE_NODE).into_response()
        }
    }
}

/// `GET /v1/cluster/mesh`: this node's mesh links and counters.
pub(super) async fn cluster_mesh(State(ctx): State<Arc<AdminCtx>>) -> Response {
    match &ctx.cluster {
        Some(c) => axum::Json(c.mesh().json()).into_response(),
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "cluster_disabled", SINGLE_NODE).into_response()
        }
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
