//! The Raft-replicated config store: an ordered, versioned map of JSON
//! documents keyed by `(kind, id)`, with a cluster-wide revision and a
//! change stream. It does not know what the documents mean; the caller
//! hands in a validator.
//!
//! - A node started without `join` and with an empty data dir bootstraps a
//!   single-voter cluster.
//! - A node started with `join` asks that address to add it as a learner
//!   ([`RaftKv::add_learner`]). A node found through gossip needs no
//!   `join`: the node layer reports live peers ([`RaftKv::set_discovered`])
//!   and the leader adds them as learners itself. A node that expects to
//!   be found that way starts with `bootstrap: false` and waits; with
//!   `bootstrap_expect` it helps form a new cluster (see `bootstrap`).
//! - The leader keeps `voters` voters spread over regions, and replaces a
//!   voter silent for longer than `voter_down_timeout` with a live
//!   learner, one membership change at a time (see `policy`); it follows
//!   members to new addresses and removes learners that stay dead for
//!   `remove_dead_learner_after`.
//! - Writes on any node are forwarded to the leader; reads are local.
//! - Raft RPC is HTTP/1.1 + JSON on `/raft/*` (see [`RaftKv::router`]).

mod api;
pub mod bootstrap;
mod events;
mod network;
pub mod policy;
pub mod timing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Raft, ServerState};
use serde::{Deserialize, Serialize};
use weir_storage::{
    Batch, ConfigView, NodeId, Store, StoreError, TypeConfig, Validator, WriteOutcome,
};

pub use network::PeerLiveness;
pub use timing::{RaftTiming, TimingError, TimingProfile};

/// How a node takes part in the config cluster.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// This node's id; by default read from (or created in)
    /// `<data_dir>/node-id`.
    pub node_id: Option<NodeId>,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// `host:port` where peers reach this node's `/raft/*` endpoints.
    pub advertise: String,
    /// Address of a member to join through.
    pub join: Option<String>,
    /// With no `join` and an empty data dir: start a single-voter cluster
    /// (`true`), or wait to be added by a leader that found this node
    /// through gossip (`false`).
    pub bootstrap: bool,
    /// With no `join` and an empty data dir: wait until gossip shows this
    /// many nodes with empty stores and the same setting, then let exactly
    /// one of them initialise the cluster (see `bootstrap`). Overrides
    /// `bootstrap`.
    pub bootstrap_expect: Option<usize>,
    /// This node's region, for spreading voters.
    pub region: String,
    /// How many voters the leader keeps (fewer when fewer nodes exist).
    pub voters: usize,
    /// A voter silent this long is replaced by a live learner.
    pub voter_down_timeout: Duration,
    /// A learner silent this long (and not alive in gossip) is removed
    /// from the membership.
    pub remove_dead_learner_after: Duration,
    /// Without contact with a leader for this long, the config is stale.
    pub stale_after: Duration,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    /// Bearer key sent with Raft RPCs and forwarded writes.
    pub key: Option<String>,
    /// Heartbeat, election timeouts and how long a write waits for a
    /// leader (see `timing`).
    pub timing: RaftTiming,
}

impl RaftSettings {
    /// Defaults for a node with the given data dir and address.
    pub fn new(data_dir: PathBuf, advertise: String) -> RaftSettings {
        RaftSettings {
            node_id: None,
            data_dir,
            advertise,
            join: None,
            bootstrap: true,
            bootstrap_expect: None,
            region: String::new(),
            voters: 3,
            voter_down_timeout: Duration::from_secs(30),
            remove_dead_learner_after: Duration::from_secs(600),
            stale_after: Duration::from_secs(3),
            snapshot_every: 1000,
            key: None,
            timing: RaftTiming::default(),
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No leader is known right now (election, partition): retry later.
    #[error("no leader is reachable right now: {0}")]
    NoLeader(String),
    /// The operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// No leader took the write within the write wait (an election, a
    /// partition), or the leader lost its quorum while committing it:
    /// retry after `retry_after`.
    #[error("{reason}")]
    Unavailable {
        /// What happened, for the client.
        reason: String,
        /// When a retry may succeed (about one failover).
        retry_after: Duration,
    },
    /// Raft itself failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The node id file is unusable.
    #[error("{0}")]
    Setup(String),
}

impl ClusterError {
    /// True when retrying later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader(_) | ClusterError::Timeout(_) | ClusterError::Unavailable { .. }
        )
    }

    /// How long to wait before retrying, when the error says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClusterError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A write that Raft committed and applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Written {
    /// What the state machine did.
    pub outcome: WriteOutcome,
    /// Raft log index of the entry.
    pub index: u64,
}

/// A member as seen from this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Raft address.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// What `/v1/status` shows about the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's Raft id: `raft_id` in JSON, beside the node id the
    /// node layer reports, never under that name.
    #[serde(rename = "raft_id")]
    pub node_id: NodeId,
    /// `leader`, `follower`, `learner`, `candidate` or `shutdown`.
    pub role: String,
    /// Current leader, if known.
    pub leader: Option<NodeId>,
    /// Raft term.
    pub term: u64,
    /// Members.
    pub members: Vec<Member>,
    /// Revision of the applied config.
    pub revision: u64,
    /// Last applied log index.
    pub applied_index: u64,
    /// True when this node has not heard from a leader (or, as leader,
    /// from a quorum) for longer than `stale_after`.
    pub config_stale: bool,
    /// Milliseconds since that contact (absent: never).
    pub config_age_ms: Option<u64>,
    /// While an empty node waits to form a new cluster
    /// (`bootstrap_expect`): what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
}

/// A peer the node layer found (through gossip): its Raft id, the address
/// of its `/raft/*` endpoints, its region, and what it says for forming a
/// new cluster (`bootstrap`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Raft node id.
    pub id: NodeId,
    /// `host:port` of its `/raft/*` endpoints.
    pub addr: String,
    /// Region label (empty: unknown).
    pub region: String,
    /// Its store is part of a cluster (`Some(true)`), empty
    /// (`Some(false)`), or it does not say (`None`, read as "part of one").
    pub in_cluster: Option<bool>,
    /// Its `bootstrap_expect`, if set.
    pub expect: Option<usize>,
    /// The node it votes to initialise a new cluster.
    pub boot_vote: Option<NodeId>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) view: ConfigView,
    pub(crate) http: reqwest::Client,
    /// For forwarded writes: a new connection each, so a dead leader shows
    /// as a refused connection (the write never left: safe to retry), not
    /// as a broken pooled one (it may have arrived).
    pub(crate) forward_http: reqwest::Client,
    pub(crate) settings: RaftSettings,
    pub(crate) liveness: PeerLiveness,
    pub(crate) last_leader_contact: Mutex<Option<Instant>>,
    pub(crate) discovered: Mutex<BTreeMap<NodeId, Peer>>,
    /// Raft addresses that members reported through `/raft/join` (a node
    /// restarted on a new address); the policy task applies them.
    pub(crate) reported_addrs: Mutex<BTreeMap<NodeId, String>>,
    /// This node's bootstrap vote (see `bootstrap`).
    pub(crate) boot_vote: Mutex<Option<NodeId>>,
    /// What bootstrapping waits for, while it does.
    pub(crate) boot_waiting: Mutex<Option<String>>,
}

/// True when this node's store belongs to a cluster (it has a membership).
pub(crate) fn in_cluster(inner: &Inner) -> bool {
    inner
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .next()
        .is_some()
}

impl Inner {
    pub(crate) fn discovered(&self) -> BTreeMap<NodeId, Peer> {
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn reported_addrs(&self) -> BTreeMap<NodeId, String> {
        self.reported_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running member of the config cluster. Cheap to clone.
#[derive(Clone)]
pub struct RaftKv {
    pub(crate) inner: Arc<Inner>,
}

fn node_id_for(settings: &RaftSettings) -> Result<NodeId, ClusterError> {
    if let Some(id) = settings.node_id {
        return Ok(id);
    }
    let path = settings.data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            ClusterError::Setup(format!(
                "{}: not a node id (a decimal integer)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Never 0 (it reads as "unset"), and below 2^53 so JSON clients
            // that use doubles keep it exact.
            let id = fastrand::u64(1..1 << 53);
            std::fs::create_dir_all(&settings.data_dir)
                .and_then(|()| std::fs::write(&path, format!("{id}\n")))
                .map_err(|e| ClusterError::Setup(format!("{}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) => Err(ClusterError::Setup(format!("{}: {e}", path.display()))),
    }
}

impl RaftKv {
    /// Opens the store in `settings.data_dir` and starts Raft.
    pub async fn start(
        settings: RaftSettings,
        validator: Validator,
    ) -> Result<RaftKv, ClusterError> {
        let store = Store::open(&settings.data_dir)?;
        let id = node_id_for(&settings)?;
        let sm = store.state_machine(validator)?;
        let view = sm.view();
        let timing = settings.timing;
        timing.validate().map_err(|errs| {
            let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
            ClusterError::Setup(format!("raft timing: {}", msgs.join("; ")))
        })?;
        let mut config = openraft::Config {
            cluster_name: "weir".into(),
            install_snapshot_timeout: 5000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every / 2,
            ..Default::default()
        };
        // openraft 0.9 gives every AppendEntries call the heartbeat
        // interval as its deadline; the network (`network`) lets a large
        // entry (an `apply` of thousands of routes) finish past it, so the
        // heartbeat can be short enough for a fast failover.
        timing.apply(&mut config);
        let config = config
            .validate()
            .map_err(|e| ClusterError::Setup(format!("raft config: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClusterError::Setup(format!("http client: {e}")))?;
        let forward_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| ClusterError::Setup(format!("http client: {e}")))?;
        let liveness = PeerLiveness::default();
        let net = network::HttpNetwork {
            http: http.clone(),
            key: settings.key.clone(),
            liveness: liveness.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), net, store.log_store(), sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let kv = RaftKv {
            inner: Arc::new(Inner {
                id,
                raft,
                view,
                http,
                forward_http,
                settings,
                liveness,
                last_leader_contact: Mutex::new(None),
                discovered: Mutex::new(BTreeMap::new()),
                reported_addrs: Mutex::new(BTreeMap::new()),
                boot_vote: Mutex::new(None),
                boot_waiting: Mutex::new(None),
            }),
        };
        let initialized = kv
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        match (&kv.inner.settings.join, initialized) {
            (None, false) if let Some(expect) = kv.inner.settings.bootstrap_expect => {
                tracing::info!(
                    raft_id = id,
                    expect,
                    "waiting for {expect} nodes with empty stores to bootstrap the config cluster"
                );
                tokio::spawn(bootstrap::run(Arc::downgrade(&kv.inner), expect));
            }
            (None, false) if !kv.inner.settings.bootstrap => {
                tracing::info!(
                    raft_id = id,
                    "waiting for a leader to find this node through gossip and add it as a learner"
                );
            }
            (None, false) => {
                let mut members = BTreeMap::new();
                members.insert(
                    id,
                    BasicNode {
                        addr: kv.inner.settings.advertise.clone(),
                    },
                );
                kv.inner
                    .raft
                    .initialize(members)
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))?;
                tracing::info!(raft_id = id, "bootstrapped a single-voter config cluster");
            }
            (Some(join), false) => {
                tracing::info!(raft_id = id, via = %join, "joining the config cluster as a learner");
                tokio::spawn(api::join_loop(Arc::downgrade(&kv.inner), join.clone()));
            }
            (Some(join), true) => {
                // A member that comes back through `join` reports its
                // (possibly new) address, and is added again if a leader
                // removed it while it was away.
                tracing::info!(raft_id = id, via = %join, "config store opened; reporting this node's address to the leader");
                tokio::spawn(api::join_loop(Arc::downgrade(&kv.inner), join.clone()));
            }
            (None, true) => {
                tracing::info!(raft_id = id, "config store opened");
                let m = kv.inner.raft.metrics().borrow().clone();
                let mem = m.membership_config.membership();
                let moved = mem
                    .get_node(&id)
                    .is_some_and(|n| n.addr != kv.inner.settings.advertise);
                let others: Vec<String> = mem
                    .nodes()
                    .filter(|(n, _)| **n != id)
                    .map(|(_, n)| n.addr.clone())
                    .collect();
                if moved && !others.is_empty() {
                    tracing::info!(raft_id = id, addr = %kv.inner.settings.advertise, "this node has a new address; reporting it to the leader");
                    tokio::spawn(api::report_addr_loop(Arc::downgrade(&kv.inner), others));
                }
            }
        }
        tokio::spawn(policy::run(Arc::downgrade(&kv.inner)));
        tokio::spawn(events::run(kv.inner.raft.metrics(), id));
        Ok(kv)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Where peers reach this node's `/raft/*` endpoints.
    pub fn advertise(&self) -> &str {
        &self.inner.settings.advertise
    }

    /// Read handle on the applied config (and its change stream).
    pub fn view(&self) -> &ConfigView {
        &self.inner.view
    }

    /// The openraft handle (metrics, tests).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Proposes `batch`; on a follower it goes to the leader. Returns once
    /// the leader has applied it.
    pub async fn write(&self, batch: Batch) -> Result<Written, ClusterError> {
        api::write(self, batch, false).await
    }

    /// Adds `node_id` at `addr` as a learner (forwarded to the leader).
    /// The voter policy promotes it when voters are missing.
    pub async fn add_learner(&self, node_id: NodeId, addr: String) -> Result<(), ClusterError> {
        api::add_learner(self, node_id, addr, false).await
    }

    /// Replaces the set of live peers found through gossip. The leader adds
    /// those that are not members as learners and uses their regions to
    /// spread voters; this node itself is ignored.
    pub fn set_discovered(&self, peers: Vec<Peer>) {
        let map = peers
            .into_iter()
            .filter(|p| p.id != self.inner.id)
            .map(|p| (p.id, p))
            .collect();
        *self
            .inner
            .discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// True when this node's store belongs to a cluster; false while it is
    /// empty and waits to be added or to bootstrap one.
    pub fn in_cluster(&self) -> bool {
        in_cluster(&self.inner)
    }

    /// The node this one votes to initialise a new cluster
    /// (`bootstrap_expect`), if any.
    pub fn boot_vote(&self) -> Option<NodeId> {
        *self
            .inner
            .boot_vote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until this node has applied everything the leader had
    /// committed when the call started (a linearizable read barrier).
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), ClusterError> {
        api::read_barrier(self, timeout).await
    }

    /// Waits (at most `timeout`) until every member has applied `index`.
    /// Returns the members that had not.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Vec<NodeId> {
        api::wait_applied(self, index, timeout).await
    }

    /// Waits until this node has applied log `index`.
    pub async fn wait_local(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        let mut rx = self.inner.raft.metrics();
        let done = async {
            loop {
                if rx.borrow().last_applied.map_or(0, |l| l.index) >= index {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, done)
            .await
            .map_err(|_| ClusterError::Timeout(format!("log index {index} not applied here")))
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = mem.voter_ids().collect();
        let members = mem
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
            })
            .collect();
        let stale_after = self.inner.settings.stale_after;
        let age = match m.state {
            ServerState::Leader if voters.len() == 1 && voters.contains(&self.inner.id) => {
                Some(Duration::ZERO)
            }
            ServerState::Leader => m.millis_since_quorum_ack.map(Duration::from_millis),
            _ => self
                .inner
                .last_leader_contact
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|t| t.elapsed()),
        };
        ClusterStatus {
            node_id: self.inner.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Learner => "learner",
                ServerState::Candidate => "candidate",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            leader: m.current_leader,
            term: m.current_term,
            members,
            revision: self.inner.view.revision(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            config_stale: age.is_none_or(|a| a > stale_after),
            config_age_ms: age.map(|a| a.as_millis() as u64),
            bootstrap: self
                .inner
                .boot_waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|_| !in_cluster(&self.inner)),
        }
    }

    /// Axum routes for `/raft/*` (Raft RPC, forwarded writes, join,
    /// read index, applied index). The caller adds authentication.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
    }
}
