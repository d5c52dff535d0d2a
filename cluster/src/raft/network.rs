//! openraft's network over HTTP/1.1 + JSON to `/raft/*` on each node's
//! admin listener. Behind openraft's `RaftNetwork` trait, so another
//! transport (the QUIC mesh) can replace it without touching the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
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

/// A client for one peer.
pub struct HttpPeer {
    net: HttpNetwork,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
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
        let url = format!("http://{}/raft/{path}", self.addr);
        let mut rb = self
            .net
            .http
            .post(&url)
            .timeout(option.hard_ttl())
            .header(super::api::TARGET, self.target.to_string())
            .json(req);
        if let Some(k) = &self.net.key {
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
        self.net.liveness.seen(self.target);
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
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
