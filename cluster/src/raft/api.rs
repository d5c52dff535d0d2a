//! `/raft/*` endpoints and the client side of forwarding: writes, joins and
//! read barriers go to the leader from whichever node got them.

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use weir_storage::{Batch, NodeId, TypeConfig};

use super::{ClusterError, RaftKv, Written};

/// Marks a request that was already forwarded once, so it is never
/// forwarded again (no loops while leadership moves).
const FORWARDED: &str = "x-weir-forwarded";

/// Names the node a Raft RPC is meant for. A node refuses RPCs meant for
/// another id, so a member address that now belongs to someone else (a
/// node restarted elsewhere, a port reused) reads as unreachable instead
/// of letting a stranger vote or take entries (openraft's "update node"
/// warning).
pub(crate) const TARGET: &str = "x-weir-raft-target";

/// How long a join that reports a new address waits for the leader to
/// apply it before answering "retry".
const ADDR_UPDATE_WAIT: Duration = Duration::from_secs(5);

/// A member that joined through `join` re-reports itself when it has not
/// heard from a leader for this long (it may have been removed).
const REJOIN_AFTER: Duration = Duration::from_secs(10);

/// Raft messages can carry large config batches and snapshot chunks.
const RAFT_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// How long a write keeps looking for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// A join request: add this node as a learner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinRequest {
    node_id: NodeId,
    addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexReply {
    index: u64,
    revision: u64,
}

/// `GET /raft/applied` query: with `min_index` or `min_revision`, the
/// answer waits (at most `wait_ms`, capped at 10 s) until this node has
/// applied that far, so callers wait for a change instead of polling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppliedQuery {
    min_index: Option<u64>,
    min_revision: Option<u64>,
    wait_ms: Option<u64>,
}

/// Longest wait a `/raft/applied` request may ask for.
const MAX_APPLIED_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
struct ErrorReply {
    error: String,
    retryable: bool,
    /// Set when the forwarding node must not try again itself (the write
    /// may have been applied) but pass the refusal on with this hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

pub(crate) fn router(kv: RaftKv) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/write", post(forwarded_write))
        .route("/raft/join", post(join))
        .route("/raft/read-index", post(read_index))
        .route("/raft/applied", get(applied))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT))
        .with_state(kv)
}

fn error_response(e: &ClusterError) -> Response {
    let status = if e.retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        status,
        Json(ErrorReply {
            error: e.to_string(),
            retryable: e.retryable(),
            retry_after_ms: e.retry_after().map(|d| d.as_millis() as u64),
        }),
    )
        .into_response()
}

/// The refusal of an RPC addressed to another node id (`None`: it is for
/// this node, or names nobody).
fn misdirected(kv: &RaftKv, headers: &HeaderMap) -> Option<Response> {
    let target = headers.get(TARGET)?;
    let meant = target.to_str().ok().and_then(|t| t.parse::<NodeId>().ok());
    if meant == Some(kv.inner.id) {
        return None;
    }
    let error = format!(
        "this is raft node {}, not {}: the sender's membership has an outdated address",
        kv.inner.id,
        String::from_utf8_lossy(target.as_bytes())
    );
    Some(
        (
            StatusCode::MISDIRECTED_REQUEST,
            Json(ErrorReply {
                error,
                retryable: false,
                retry_after_ms: None,
            }),
        )
            .into_response(),
    )
}

async fn append(
    State(kv): State<RaftKv>,
    headers: HeaderMap,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = misdirected(&kv, &headers) {
        return r;
    }
    let res = kv.inner.raft.append_entries(req).await;
    if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
        *kv.inner
            .last_leader_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
    Json(res).into_response()
}

async fn vote(
    State(kv): State<RaftKv>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    if let Some(r) = misdirected(&kv, &headers) {
        return r;
    }
    let res: Result<VoteResponse<NodeId>, RaftError<NodeId>> = kv.inner.raft.vote(req).await;
    Json(res).into_response()
}

async fn snapshot(
    State(kv): State<RaftKv>,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = misdirected(&kv, &headers) {
        return r;
    }
    let res: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> =
        kv.inner.raft.install_snapshot(req).await;
    Json(res).into_response()
}

async fn forwarded_write(
    State(kv): State<RaftKv>,
    headers: HeaderMap,
    Json(batch): Json<Batch>,
) -> Response {
    let forwarded = headers.contains_key(FORWARDED);
    match write(&kv, batch, forwarded).await {
        Ok(w) => Json(w).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn join(
    State(kv): State<RaftKv>,
    headers: HeaderMap,
    Json(req): Json<JoinRequest>,
) -> Response {
    let forwarded = headers.contains_key(FORWARDED);
    match add_learner(&kv, req.node_id, req.addr, forwarded).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(&e),
    }
}

async fn read_index(State(kv): State<RaftKv>) -> Response {
    match kv.inner.raft.ensure_linearizable().await {
        Ok(l) => Json(IndexReply {
            index: l.map_or(0, |l| l.index),
            revision: kv.inner.view.revision(),
        })
        .into_response(),
        Err(e) => error_response(&check_leader_error(e)),
    }
}

async fn applied(
    State(kv): State<RaftKv>,
    axum::extract::Query(q): axum::extract::Query<AppliedQuery>,
) -> Json<IndexReply> {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_APPLIED_WAIT);
    if !wait.is_zero() {
        let view = &kv.inner.view;
        let mut rx = view.subscribe();
        let mut metrics = kv.inner.raft.metrics();
        let done = |view: &weir_storage::ConfigView| {
            q.min_index.is_none_or(|i| view.applied_index() >= i)
                && q.min_revision.is_none_or(|r| view.revision() >= r)
        };
        // Both watches: the revision moves with config changes, the
        // metrics with every applied entry (blank and membership ones too).
        let _ = tokio::time::timeout(wait, async {
            while !done(view) {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    r = metrics.changed() => if r.is_err() { return },
                }
            }
        })
        .await;
    }
    Json(IndexReply {
        index: kv.inner.view.applied_index(),
        revision: kv.inner.view.revision(),
    })
}

fn check_leader_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> ClusterError {
    match e {
        RaftError::APIError(e) => ClusterError::NoLeader(e.to_string()),
        RaftError::Fatal(f) => ClusterError::Raft(f.to_string()),
    }
}

fn leader_addr(kv: &RaftKv) -> Option<String> {
    let m = kv.inner.raft.metrics().borrow().clone();
    let leader = m.current_leader?;
    if leader == kv.inner.id {
        return None;
    }
    m.membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
}

/// Sends `body` to the leader's `path`. `Ok(None)`: nobody to send to
/// yet, or the request never left (safe to retry).
async fn to_leader<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    kv: &RaftKv,
    path: &str,
    body: &Req,
) -> Result<Option<Resp>, ClusterError> {
    to_leader_via(kv, &kv.inner.http, path, body).await
}

/// [`to_leader`] on the given client.
async fn to_leader_via<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    kv: &RaftKv,
    http: &reqwest::Client,
    path: &str,
    body: &Req,
) -> Result<Option<Resp>, ClusterError> {
    let Some(addr) = leader_addr(kv) else {
        return Ok(None);
    };
    let mut rb = http
        .post(format!("http://{addr}{path}"))
        .header(FORWARDED, "1")
        .timeout(LEADER_WAIT)
        .json(body);
    if let Some(k) = &kv.inner.settings.key {
        rb = rb.bearer_auth(k);
    }
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(ClusterError::Timeout(format!("leader at {addr}: {e}"))),
    };
    let status = resp.status();
    if status.is_success() {
        if status == reqwest::StatusCode::NO_CONTENT {
            return serde_json::from_str("null")
                .map(Some)
                .map_err(|e| ClusterError::Raft(e.to_string()));
        }
        return resp
            .json()
            .await
            .map(Some)
            .map_err(|e| ClusterError::Raft(format!("leader at {addr}: bad reply: {e}")));
    }
    let reply: Option<ErrorReply> = resp.json().await.ok();
    match reply {
        Some(ErrorReply {
            error,
            retry_after_ms: Some(ms),
            ..
        }) => Err(ClusterError::Unavailable {
            reason: error,
            retry_after: Duration::from_millis(ms),
        }),
        Some(r) if r.retryable => Ok(None),
        Some(r) => Err(ClusterError::Raft(r.error)),
        None => Err(ClusterError::Raft(format!(
            "leader at {addr}: HTTP {status}"
        ))),
    }
}

/// Proposes `batch` on the leader: here, or forwarded once (unless it
/// already was). While no leader takes it, it waits for one, at most the
/// timing's `write_wait`, then fails `Unavailable` with a retry hint; it
/// also fails `Unavailable` when the leader handling it is lost (it may
/// or may not be applied then). It never waits without a bound.
pub(crate) async fn write(
    kv: &RaftKv,
    batch: Batch,
    forwarded: bool,
) -> Result<Written, ClusterError> {
    let timing = kv.inner.settings.timing;
    let deadline = Instant::now() + timing.write_wait;
    let mut metrics = kv.inner.raft.metrics();
    loop {
        if let Some(w) = leader_write(kv, batch.clone()).await? {
            return Ok(w);
        }
        if !forwarded && let Some(w) = forward_write(kv, &batch).await? {
            return Ok(w);
        }
        if forwarded {
            // The forwarding node looks for the leader again.
            return Err(ClusterError::NoLeader("this node is not the leader".into()));
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Unavailable {
                reason: format!(
                    "no leader took the write within {} ms (an election is under way, or this node cannot reach a quorum); nothing was written",
                    timing.write_wait.as_millis()
                ),
                retry_after: timing.retry_after(),
            });
        }
        // A new leader shows in the metrics; look again then, or shortly.
        let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
    }
}

/// `client_write` on this node. `Ok(None)`: it is not the leader. Gives
/// up when this leader loses its quorum (a partition that leaves it
/// behind), instead of waiting for a commit that may never come.
async fn leader_write(kv: &RaftKv, batch: Batch) -> Result<Option<Written>, ClusterError> {
    let write = kv.inner.raft.client_write(batch);
    let res = tokio::select! {
        r = write => r,
        why = quorum_lost(kv) => {
            return Err(ClusterError::Unavailable {
                reason: format!("{why}; the write may or may not be applied"),
                retry_after: kv.inner.settings.timing.retry_after(),
            });
        }
    };
    match res {
        Ok(r) => Ok(Some(Written {
            outcome: r.data,
            index: r.log_id.index,
        })),
        Err(RaftError::Fatal(f)) => Err(ClusterError::Raft(f.to_string())),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(ClusterError::Raft(e.to_string()))
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
    }
}

/// Resolves when this node, as leader, has had answers from no quorum of
/// voters (itself included) for longer than the write wait: the others
/// have elected someone else by then, or the commit cannot happen. The
/// bound is the write wait, not the lease, so that a leader that is only
/// short of CPU (compiling a large write) does not give up on a write its
/// followers are taking. Answers are counted as the network sees them,
/// not from openraft's metrics, which are only refreshed when something
/// else changes.
async fn quorum_lost(kv: &RaftKv) -> &'static str {
    let timing = kv.inner.settings.timing;
    let lease = timing.write_wait;
    let since = Instant::now();
    loop {
        tokio::time::sleep(timing.heartbeat).await;
        let m = kv.inner.raft.metrics().borrow().clone();
        if m.state != openraft::ServerState::Leader || since.elapsed() <= lease {
            continue;
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let heard = voters
            .iter()
            .filter(|&&v| {
                v == kv.inner.id
                    || kv
                        .inner
                        .liveness
                        .last_seen(v)
                        .is_some_and(|t| t.elapsed() <= lease)
            })
            .count();
        if heard * 2 <= voters.len() {
            return "the leader lost contact with a quorum while committing the write";
        }
    }
}

/// Forwards the write to the leader this node knows. `Ok(None)`: no
/// leader known, or the request never reached it (safe to retry). While
/// the leader handles it, this node watches its own view: when the leader
/// changes or goes silent for longer than the write wait, the write fails
/// `Unavailable` (it may or may not be applied).
async fn forward_write(kv: &RaftKv, batch: &Batch) -> Result<Option<Written>, ClusterError> {
    let Some(leader) = kv.inner.raft.metrics().borrow().current_leader else {
        return Ok(None);
    };
    // A leader silent for longer than its lease is being replaced: wait
    // for the next one rather than send it a write.
    let lease = kv.inner.settings.timing.election_timeout_max;
    if leader == kv.inner.id || leader_silent(kv, lease) {
        return Ok(None);
    }
    tokio::select! {
        biased;
        r = to_leader_via::<_, Written>(kv, &kv.inner.forward_http, "/raft/write", batch) => match r {
            // The request broke after it left: it may have arrived.
            Err(ClusterError::Timeout(why)) => Err(ClusterError::Unavailable {
                reason: format!("{why}; the write may or may not be applied"),
                retry_after: kv.inner.settings.timing.retry_after(),
            }),
            r => r,
        },
        why = leader_gone(kv, leader) => Err(ClusterError::Unavailable {
            reason: format!("{why}; the write may or may not be applied"),
            retry_after: kv.inner.settings.timing.retry_after(),
        }),
    }
}

/// True when this node has heard from no leader for longer than `limit`.
fn leader_silent(kv: &RaftKv, limit: Duration) -> bool {
    kv.inner
        .last_leader_contact
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|t| t.elapsed() > limit)
}

/// Resolves when this node stops following `leader`: another leader (or
/// none) is known, or nothing came from it for longer than the write
/// wait (a leader busy with a large write can be late with heartbeats).
async fn leader_gone(kv: &RaftKv, leader: NodeId) -> &'static str {
    let timing = kv.inner.settings.timing;
    let mut rx = kv.inner.raft.metrics();
    loop {
        if rx.borrow_and_update().current_leader != Some(leader) {
            return "the leader changed while it handled the write";
        }
        if leader_silent(kv, timing.write_wait) {
            return "the leader went silent while it handled the write";
        }
        let _ = tokio::time::timeout(timing.heartbeat, rx.changed()).await;
    }
}

pub(crate) async fn add_learner(
    kv: &RaftKv,
    node_id: NodeId,
    addr: String,
    forwarded: bool,
) -> Result<(), ClusterError> {
    if addr.is_empty() || addr.len() > 255 {
        return Err(ClusterError::Raft("addr must be a host:port".into()));
    }
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let m = kv.inner.raft.metrics().borrow().clone();
        if m.current_leader == Some(kv.inner.id) {
            match m.membership_config.membership().get_node(&node_id) {
                Some(n) if n.addr == addr => return Ok(()),
                Some(_) => return update_addr(kv, node_id, addr).await,
                None => {}
            }
            return match kv
                .inner
                .raft
                .add_learner(node_id, BasicNode { addr }, false)
                .await
            {
                Ok(_) => {
                    tracing::info!(raft_id = node_id, "added a learner");
                    Ok(())
                }
                Err(e) => Err(ClusterError::NoLeader(e.to_string())),
            };
        }
        let req = JoinRequest {
            node_id,
            addr: addr.clone(),
        };
        if !forwarded && to_leader::<_, ()>(kv, "/raft/join", &req).await?.is_some() {
            return Ok(());
        }
        if forwarded || Instant::now() >= deadline {
            return Err(ClusterError::NoLeader(
                "no leader to add the learner".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A member reports a new address: the policy task (the only one that
/// changes the membership) applies it; this waits a little for that.
async fn update_addr(kv: &RaftKv, node_id: NodeId, addr: String) -> Result<(), ClusterError> {
    tracing::info!(raft_id = node_id, addr = %addr, "a member reports a new raft address");
    kv.inner
        .reported_addrs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node_id, addr.clone());
    let mut rx = kv.inner.raft.metrics();
    let done = async {
        loop {
            let updated = rx
                .borrow()
                .membership_config
                .membership()
                .get_node(&node_id)
                .is_some_and(|n| n.addr == addr);
            if updated || rx.changed().await.is_err() {
                return updated;
            }
        }
    };
    match tokio::time::timeout(ADDR_UPDATE_WAIT, done).await {
        Ok(true) => Ok(()),
        _ => Err(ClusterError::NoLeader(format!(
            "the address update of node {node_id} is not applied yet"
        ))),
    }
}

/// Asks `via` to add this node (or take its current address) until a
/// leader accepts, then keeps watching: a node that hears from no leader
/// for a while asks again, since a leader may have removed it while it
/// was away.
pub(crate) async fn join_loop(inner: std::sync::Weak<super::Inner>, via: String) {
    let mut accepted = false;
    // After a first success, a failed re-join (a leaderless moment) is
    // routine: logged at debug, not every half second at warn.
    let mut ever = false;
    loop {
        if accepted {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let Some(inner) = inner.upgrade() else { return };
        if accepted {
            let leading = inner.raft.metrics().borrow().state == openraft::ServerState::Leader;
            let heard = *inner
                .last_leader_contact
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if leading || heard.is_some_and(|t| t.elapsed() < REJOIN_AFTER) {
                continue;
            }
            accepted = false;
        }
        let rb = join_request(&inner, &via);
        drop(inner);
        match rb.send().await {
            Ok(r) if r.status().is_success() => {
                if !ever {
                    tracing::info!(via = %via, "join accepted");
                }
                accepted = true;
                ever = true;
                continue;
            }
            Ok(r) if ever => {
                tracing::debug!(via = %via, status = %r.status(), "re-join refused; retrying")
            }
            Err(e) if ever => tracing::debug!(via = %via, error = %e, "re-join failed; retrying"),
            Ok(r) => tracing::warn!(via = %via, status = %r.status(), "join refused; retrying"),
            Err(e) => tracing::warn!(via = %via, error = %e, "join failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// This node's join request (its id and advertised address) to `via`.
fn join_request(inner: &super::Inner, via: &str) -> reqwest::RequestBuilder {
    let req = JoinRequest {
        node_id: inner.id,
        addr: inner.settings.advertise.clone(),
    };
    let rb = inner
        .http
        .post(format!("http://{via}/raft/join"))
        .timeout(LEADER_WAIT)
        .json(&req);
    match &inner.settings.key {
        Some(k) => rb.bearer_auth(k),
        None => rb,
    }
}

/// A member that came back on a new address without `join` (nor, maybe,
/// gossip) tells the others, through each member it knows in turn, until
/// a leader has taken the address: the leader can no longer reach it, so
/// it must speak first.
pub(crate) async fn report_addr_loop(inner: std::sync::Weak<super::Inner>, vias: Vec<String>) {
    for via in vias.iter().cycle() {
        let Some(inner) = inner.upgrade() else { return };
        let current = inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&inner.id)
            .map(|n| n.addr.clone());
        if current.as_deref() != Some(inner.settings.advertise.as_str()) {
            let rb = join_request(&inner, via);
            drop(inner);
            match rb.send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(via = %via, "the leader took this node's new address");
                    return;
                }
                Ok(r) => {
                    tracing::debug!(via = %via, status = %r.status(), "address report refused; trying the next member")
                }
                Err(e) => {
                    tracing::debug!(via = %via, error = %e, "address report failed; trying the next member")
                }
            }
        } else {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn read_barrier(kv: &RaftKv, timeout: Duration) -> Result<(), ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        match kv.inner.raft.ensure_linearizable().await {
            Ok(_) => return Ok(()),
            Err(RaftError::Fatal(f)) => return Err(ClusterError::Raft(f.to_string())),
            Err(RaftError::APIError(_)) => {}
        }
        if let Some(r) = to_leader::<_, IndexReply>(kv, "/raft/read-index", &()).await? {
            let left = deadline.saturating_duration_since(Instant::now());
            return kv.wait_local(r.index, left).await;
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::NoLeader(
                "no leader confirmed the read".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn wait_applied(kv: &RaftKv, index: u64, timeout: Duration) -> Vec<NodeId> {
    let deadline = Instant::now() + timeout;
    let members: Vec<(NodeId, String)> = {
        let m = kv.inner.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    };
    // One waiting request per member, all at once: each answers when its
    // node has applied `index` (or its wait ends), so nobody polls.
    let mut tasks = tokio::task::JoinSet::new();
    for (id, addr) in members {
        let kv = kv.clone();
        tasks.spawn(async move {
            if id == kv.inner.id {
                let left = deadline.saturating_duration_since(Instant::now());
                return (id, kv.wait_local(index, left).await.is_ok());
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut rb = kv
                    .inner
                    .http
                    .get(format!(
                        "http://{addr}/raft/applied?min_index={index}&wait_ms={}",
                        left.as_millis()
                    ))
                    .timeout(left + Duration::from_millis(500));
                if let Some(k) = &kv.inner.settings.key {
                    rb = rb.bearer_auth(k);
                }
                let done = match rb.send().await {
                    Ok(r) => r.json::<IndexReply>().await.is_ok_and(|r| r.index >= index),
                    Err(_) => false,
                };
                if done || Instant::now() >= deadline {
                    return (id, done);
                }
                // Unreachable or an early answer: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let mut lagging = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok((id, false)) = r {
            lagging.push(id);
        }
    }
    lagging.sort_unstable();
    lagging
}
