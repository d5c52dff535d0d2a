//! openraft's network over HTTP/1.1 + JSON to `/raft/*` on each node's
//! admin listener. Behind openraft's `RaftNetwork` trait, so another
//! transport (the QUIC mesh) can replace it without touching the store.
//!
//! openraft 0.9 gives every AppendEntries call the heartbeat interval as
//! its deadline and drops the call when it passes. An entry that takes
//! longer to send, decode and sync (an `apply` of thousands of routes)
//! would then be resent forever. So an AppendEntries that carries entries
//! runs in its own task, past the deadline (up to [`APPEND_DEADLINE`]);
//! openraft's retry of the same request waits for that task instead of
//! sending it again, and a retry that carries more entries after the same
//! point learns that the follower took the first ones
//! (`PartialSuccess`). Heartbeats (no entries) never wait behind it, so
//! the follower keeps hearing from the leader meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_storage::{NodeId, TypeConfig};

/// When each peer last answered an RPC (the leader's view of who is
/// alive, used by the voter policy).
#[derive(Clone, Default)]
pub struct PeerLiveness(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl PeerLiveness {
    fn seen(&self, id: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
    }

    /// When `id` last answered, if ever.
    pub fn last_seen(&self, id: NodeId) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }
}

/// Builds one client per peer.
#[derive(Clone)]
pub struct HttpNetwork {
    pub(crate) http: reqwest::Client,
    pub(crate) key: Option<String>,
    pub(crate) liveness: PeerLiveness,
}

/// How long an AppendEntries with entries may run past openraft's
/// deadline before it counts as failed.
pub(crate) const APPEND_DEADLINE: Duration = Duration::from_secs(30);

type AppendResult =
    Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>>;

/// An AppendEntries with entries that runs in its own task: what it
/// carries (to recognise openraft's retry of it) and the task.
struct InFlight {
    vote: Vote<NodeId>,
    prev: Option<LogId<NodeId>>,
    last: Option<LogId<NodeId>>,
    task: tokio::task::JoinHandle<AppendResult>,
}

/// A client for one peer.
pub struct HttpPeer {
    net: HttpNetwork,
    target: NodeId,
    addr: String,
    /// The AppendEntries with entries sent last, until openraft has its
    /// answer.
    in_flight: Option<InFlight>,
}

impl Drop for HttpPeer {
    fn drop(&mut self) {
        // The replication stream ended (new term, member removed): nobody
        // wants the answer any more.
        if let Some(f) = self.in_flight.take() {
            f.task.abort();
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
            in_flight: None,
        }
    }
}

impl HttpPeer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        call(
            &self.net,
            self.target,
            &self.addr,
            path,
            req,
            option.hard_ttl(),
        )
        .await
    }

    /// An AppendEntries that carries entries (see the module doc).
    async fn append_with_entries(&mut self, rpc: AppendEntriesRequest<TypeConfig>) -> AppendResult {
        let last = rpc.entries.last().map(|e| e.log_id);
        if let Some(f) = self.in_flight.as_mut() {
            tracing::debug!(
                target = self.target,
                "an AppendEntries outlived openraft's deadline; waiting for its answer"
            );
            // Cancelled here by openraft's deadline, the call goes on and
            // the next attempt waits again.
            let res = match (&mut f.task).await {
                Ok(r) => r,
                Err(e) => Err(task_failed(e)),
            };
            let Some(f) = self.in_flight.take() else {
                return res;
            };
            if f.vote == rpc.vote && f.prev == rpc.prev_log_id {
                if f.last == last {
                    return res;
                }
                // The follower took everything up to `f.last`, which this
                // request carries too: report that much, and openraft
                // sends the rest.
                if matches!(res, Ok(AppendEntriesResponse::Success))
                    && rpc.entries.iter().any(|e| Some(e.log_id) == f.last)
                {
                    return Ok(AppendEntriesResponse::PartialSuccess(f.last));
                }
            }
            // An answer to an older request: send this one.
        }
        let (net, target, addr) = (self.net.clone(), self.target, self.addr.clone());
        let vote = rpc.vote;
        let prev = rpc.prev_log_id;
        let task = tokio::spawn(async move {
            call(&net, target, &addr, "append", &rpc, APPEND_DEADLINE).await
        });
        let f = self.in_flight.insert(InFlight {
            vote,
            prev,
            last,
            task,
        });
        let res = match (&mut f.task).await {
            Ok(r) => r,
            Err(e) => Err(task_failed(e)),
        };
        self.in_flight = None;
        res
    }
}

/// The error for an AppendEntries task that panicked or was aborted.
fn task_failed(e: tokio::task::JoinError) -> RPCError<NodeId, BasicNode, RaftError<NodeId>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

/// One RPC to `target` at `addr`, bounded by `ttl`.
async fn call<Req, Resp, E>(
    net: &HttpNetwork,
    target: NodeId,
    addr: &str,
    path: &str,
    req: &Req,
    ttl: Duration,
) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
where
    Req: Serialize,
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    {
        let url = format!("http://{addr}/raft/{path}");
        let mut rb = net
            .http
            .post(&url)
            .timeout(ttl)
            .header(super::api::TARGET, target.to_string())
            .json(req);
        if let Some(k) = &net.key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let e = std::io::Error::other(format!("{url}: HTTP {status}"));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let body: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        net.liveness.seen(target);
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if rpc.entries.is_empty() {
            // A heartbeat: never waits behind an entry in flight.
            return self.call("append", &rpc, &option).await;
        }
        self.append_with_entries(rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
