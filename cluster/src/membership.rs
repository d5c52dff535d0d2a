//! Cluster membership: who is in the cluster, where they are and how to
//! reach them, kept by chitchat's scuttlebutt gossip over the
//! [sealed transport](crate::gossip). What carries the sealed datagrams is
//! [`MembershipConfig::transport`]: UDP unless the caller passes another
//! (tests put [faults](crate::faults) there).
//!
//! Each node publishes a few keys about itself ([`NodeInfo`]); chitchat
//! identifies it by `(node id, generation, gossip address)`, and the
//! generation is the start time in milliseconds, so a restarted node is a
//! new member and its old incarnation ages out as dead.
//!
//! Failure detection is chitchat's phi-accrual detector. In chitchat's
//! variant phi is `time since last heartbeat / mean heartbeat interval`,
//! with the mean smoothed by five samples of `initial_interval`, so a node
//! is declared dead after about `phi_threshold × mean interval` of silence.
//! Heartbeats travel with gossip, so the mean interval is about the gossip
//! interval in small clusters and grows slowly (with the number of gossip
//! hops) in large ones; the detector adapts. With the defaults
//! ([`GossipTiming::default`]: 500 ms rounds, threshold 8, prior 1 s) a
//! killed node is declared dead after 4–6 s, and a node must be silent for
//! eight mean intervals before it is suspected at all, which a busy but
//! live node does not come near.
//!
//! A node that stops on purpose sets `status: leaving` and gossips it to
//! every live peer before it closes its socket ([`Membership::leave`]). The
//! peers' liveness predicate drops a leaving node from the live set as soon
//! as that key arrives, without waiting for the detector.
//!
//! This module knows nothing about HTTP: the node publishes its addresses
//! here and reads them back.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState};
use serde::Serialize;
use tokio::sync::watch;

use crate::gossip::{
    GossipKey, GossipStats, GossipStatsSnapshot, GossipTransport, KeyError, SealedTransport,
};

/// Key: the node's region.
pub const KEY_REGION: &str = "region";
/// Key: the node's zone.
pub const KEY_ZONE: &str = "zone";
/// Key: where the node's proxy listens, as peers should reach it.
pub const KEY_PROXY_ADDR: &str = "proxy_addr";
/// Key: where the node's admin API listens.
pub const KEY_ADMIN_ADDR: &str = "admin_addr";
/// Key: the node's mesh address, when it has one.
pub const KEY_MESH_ADDR: &str = "mesh_addr";
/// Key: the fingerprint (hex SHA-256 of the key) of the node's mesh
/// certificate, which peers pin (ADR 0032). Published only with a secret,
/// so only holders of the secret can publish one.
pub const KEY_MESH_IDENTITY: &str = "mesh_identity";
/// Key: the software version.
pub const KEY_VERSION: &str = "version";
/// Key: start time, milliseconds since the Unix epoch.
pub const KEY_STARTED_AT: &str = "started_at_ms";
/// Key: the node's Raft id (decimal), published in store mode.
pub const KEY_RAFT_ID: &str = "raft_id";
/// Key: the config revision the node's running snapshot was built from
/// (decimal), published in store mode.
pub const KEY_CONFIG_REVISION: &str = "config_revision";
/// Key: where the node's Raft endpoints are reached (`host:port`).
pub const KEY_RAFT_ADDR: &str = "raft_addr";
/// Key: `member` when the node's config store belongs to a Raft cluster,
/// `empty` while it waits to be added or to bootstrap one.
pub const KEY_RAFT_STATE: &str = "raft_state";
/// Key: the node's `bootstrap_expect` (decimal), when set.
pub const KEY_RAFT_EXPECT: &str = "raft_expect";
/// Key: the Raft id this node votes to bootstrap a new cluster.
pub const KEY_RAFT_BOOT: &str = "raft_boot";
/// Key: `alive`, or `leaving` once the node has begun to stop.
pub const KEY_STATUS: &str = "status";

const STATUS_ALIVE: &str = "alive";
const STATUS_LEAVING: &str = "leaving";

/// Timing of gossip and failure detection. See the module docs for how
/// the numbers combine.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipTiming {
    /// How often a node gossips (with up to three peers per round) and
    /// bumps its heartbeat.
    pub gossip_interval: Duration,
    /// Silence, in mean heartbeat intervals, after which a peer is dead.
    pub phi_threshold: f64,
    /// Prior for the mean heartbeat interval while few samples exist.
    pub initial_interval: Duration,
    /// Heartbeat intervals longer than this are not sampled (they are
    /// outages, not the normal rhythm).
    pub max_interval: Duration,
    /// How long a dead member is still listed before it is forgotten.
    pub dead_node_grace: Duration,
}

impl Default for GossipTiming {
    fn default() -> Self {
        GossipTiming {
            gossip_interval: Duration::from_millis(500),
            phi_threshold: 8.0,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(10),
            dead_node_grace: Duration::from_secs(3600),
        }
    }
}

/// What a node publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Region label, e.g. `eu-west`.
    pub region: String,
    /// Zone label inside the region.
    pub zone: String,
    /// Proxy address as peers reach it.
    pub proxy_addr: Option<SocketAddr>,
    /// Admin address as peers reach it.
    pub admin_addr: Option<SocketAddr>,
    /// Mesh address, if the node runs the mesh.
    pub mesh_addr: Option<SocketAddr>,
    /// Software version.
    pub version: String,
}

/// Everything needed to join a cluster.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Cluster name; nodes of other clusters are refused.
    pub cluster_name: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// Where the gossip socket binds (UDP). Port 0 picks one.
    pub listen: SocketAddr,
    /// The IP peers use to reach this node; required when `listen` is an
    /// unspecified address (0.0.0.0 or ::).
    pub advertise_ip: Option<IpAddr>,
    /// Gossip addresses (`host:port`) to join through.
    pub seeds: Vec<String>,
    /// The cluster secret; `None` only for a loopback listener.
    pub secret: Option<Vec<u8>>,
    /// Published keys.
    pub info: NodeInfo,
    /// Gossip and failure-detection timing.
    pub timing: GossipTiming,
    /// What carries the datagrams; [`GossipTransport::default`] is UDP.
    /// Sealing applies whatever it is.
    pub transport: GossipTransport,
}

/// Errors starting membership.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Gossip would listen beyond loopback in the clear.
    #[error(
        "gossip listens on {0}, which is not loopback, and no cluster secret is set (--cluster-secret-file or WEIR_CLUSTER_SECRET)"
    )]
    SecretRequired(SocketAddr),
    /// The secret is unusable.
    #[error("cluster secret: {0}")]
    Key(#[from] KeyError),
    /// No address to advertise.
    #[error(
        "gossip listens on {0}, an unspecified address; set the address peers should use (--advertise-addr)"
    )]
    AdvertiseRequired(SocketAddr),
    /// An empty cluster name or node id.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// Binding the socket failed.
    #[error("cannot bind the gossip socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Chitchat failed to start.
    #[error("gossip failed to start: {0:#}")]
    Start(anyhow::Error),
}

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Heard from within the detector's bounds.
    Alive,
    /// Known, but not yet heard from often enough to judge.
    Joining,
    /// Declared dead by the failure detector.
    Dead,
    /// Announced that it is stopping.
    Left,
}

impl MemberState {
    /// Lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Joining => "joining",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// One member as seen from this node. Values come from the wire: an
/// address that does not parse is `None`, never a guess.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// Generation (start time in ms of this incarnation).
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// State.
    pub state: MemberState,
    /// Whether this is the local node.
    pub is_self: bool,
    /// Region label (empty if unknown).
    pub region: String,
    /// Zone label (empty if unknown).
    pub zone: String,
    /// Proxy address.
    pub proxy_addr: Option<SocketAddr>,
    /// Admin address.
    pub admin_addr: Option<SocketAddr>,
    /// Mesh address.
    pub mesh_addr: Option<SocketAddr>,
    /// Software version.
    pub version: String,
    /// Start time, ms since the Unix epoch.
    pub started_at_ms: Option<u64>,
    /// Every other key the member publishes (e.g. health reports).
    #[serde(skip)]
    pub keys: BTreeMap<String, String>,
}

/// A running membership: the gossip server and its handle.
pub struct Membership {
    handle: ChitchatHandle,
    stats: Arc<GossipStats>,
    cluster_name: String,
    timing: GossipTiming,
    live_rx: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("self", self.handle.chitchat_id())
            .field("cluster", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Membership {
    /// Binds the gossip socket through `cfg.transport`, checks the
    /// security rules, and joins.
    ///
    /// # Errors
    /// See [`MembershipError`].
    pub async fn start(cfg: MembershipConfig) -> Result<Membership, MembershipError> {
        if cfg.cluster_name.trim().is_empty() {
            return Err(MembershipError::Empty("cluster name"));
        }
        if cfg.node_id.trim().is_empty() {
            return Err(MembershipError::Empty("node id"));
        }
        let key = match &cfg.secret {
            Some(s) => Some(GossipKey::derive(s, &cfg.cluster_name)?),
            None if cfg.listen.ip().is_loopback() => None,
            None => return Err(MembershipError::SecretRequired(cfg.listen)),
        };
        let socket =
            cfg.transport
                .bind(cfg.listen)
                .await
                .map_err(|source| MembershipError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let bound = socket
            .local_addr()
            .map_err(|source| MembershipError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let advertise_ip = match cfg.advertise_ip {
            Some(ip) => ip,
            None if bound.ip().is_unspecified() => {
                return Err(MembershipError::AdvertiseRequired(bound));
            }
            None => bound.ip(),
        };
        let advertise = SocketAddr::new(advertise_ip, bound.port());
        let started = SystemTime::now();
        let generation = unix_ms(started);
        let chitchat_id = ChitchatId::new(cfg.node_id.clone(), generation, advertise);

        let t = &cfg.timing;
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: cfg.cluster_name.clone(),
            gossip_interval: t.gossip_interval,
            listen_addr: bound,
            seed_nodes: cfg.seeds.clone(),
            failure_detector_config: failure_detector_config(t),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|state: &NodeState| {
                state.get(KEY_STATUS) != Some(STATUS_LEAVING)
            })),
        };
        let info = &cfg.info;
        let mut kv: Vec<(String, String)> = vec![
            (KEY_REGION.into(), info.region.clone()),
            (KEY_ZONE.into(), info.zone.clone()),
            (KEY_VERSION.into(), info.version.clone()),
            (KEY_STARTED_AT.into(), generation.to_string()),
            (KEY_STATUS.into(), STATUS_ALIVE.into()),
        ];
        for (k, v) in [
            (KEY_PROXY_ADDR, info.proxy_addr),
            (KEY_ADMIN_ADDR, info.admin_addr),
            (KEY_MESH_ADDR, info.mesh_addr),
        ] {
            if let Some(a) = v {
                kv.push((k.into(), a.to_string()));
            }
        }
        let stats = Arc::new(GossipStats::default());
        let transport = SealedTransport::over(socket, key, stats.clone());
        let handle = chitchat::spawn_chitchat(config, kv, &transport)
            .await
            .map_err(MembershipError::Start)?;
        let live_rx = handle.chitchat().lock().await.live_nodes_watcher();
        tracing::info!(
            cluster = %cfg.cluster_name,
            node_id = %cfg.node_id,
            generation,
            gossip = %advertise,
            sealed = cfg.secret.is_some(),
            seeds = ?cfg.seeds,
            "joined gossip"
        );
        Ok(Membership {
            handle,
            stats,
            cluster_name: cfg.cluster_name,
            timing: cfg.timing,
            live_rx,
        })
    }

    /// The cluster name.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.handle.chitchat_id().node_id
    }

    /// This node's generation.
    pub fn generation(&self) -> u64 {
        self.handle.chitchat_id().generation_id
    }

    /// The gossip address peers use for this node.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.handle.chitchat_id().gossip_advertise_addr
    }

    /// The gossip timing in force.
    pub fn timing(&self) -> &GossipTiming {
        &self.timing
    }

    /// Transport counters.
    pub fn stats(&self) -> GossipStatsSnapshot {
        self.stats.snapshot()
    }

    /// A receiver that changes whenever the set of live members or their
    /// keys change (not on heartbeats).
    pub fn changes(&self) -> watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.live_rx.clone()
    }

    /// Every member this node knows of, itself included, sorted by id then
    /// generation.
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.handle.chitchat();
        let guard = chitchat.lock().await;
        let self_id = guard.self_chitchat_id().clone();
        let live: std::collections::HashSet<&ChitchatId> = guard.live_nodes().collect();
        let dead: std::collections::HashSet<&ChitchatId> = guard.dead_nodes().collect();
        let mut out: Vec<Member> = guard
            .node_states()
            .iter()
            .map(|(id, state)| {
                let member_state = if state.get(KEY_STATUS) == Some(STATUS_LEAVING) {
                    MemberState::Left
                } else if live.contains(id) {
                    MemberState::Alive
                } else if dead.contains(id) {
                    MemberState::Dead
                } else {
                    MemberState::Joining
                };
                member_from_state(id, state, member_state, *id == self_id)
            })
            .collect();
        out.sort_by(|a, b| (&a.id, a.generation).cmp(&(&b.id, b.generation)));
        out
    }

    /// Sets one of this node's keys (e.g. a health report).
    pub async fn set_key(&self, key: &str, value: &str) {
        let chitchat = self.handle.chitchat();
        chitchat.lock().await.self_node_state().set(key, value);
    }

    /// Deletes one of this node's keys.
    pub async fn delete_key(&self, key: &str) {
        let chitchat = self.handle.chitchat();
        let mut guard = chitchat.lock().await;
        let state = guard.self_node_state();
        if state.get(key).is_some() {
            state.delete(key);
        }
    }

    /// Graceful leave: publishes `status: leaving`, pushes it to every live
    /// peer, gives the exchange one gossip interval to complete, then stops
    /// gossiping. Calling it again does nothing more.
    pub async fn leave(&self) {
        let peers: Vec<SocketAddr> = {
            let chitchat = self.handle.chitchat();
            let mut guard = chitchat.lock().await;
            guard.self_node_state().set(KEY_STATUS, STATUS_LEAVING);
            let me = guard.self_chitchat_id().clone();
            guard
                .live_nodes()
                .filter(|id| **id != me)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        for peer in &peers {
            // Syn → SynAck → Ack: our Ack carries the new status.
            let _ = self.handle.gossip(*peer);
        }
        tokio::time::sleep(self.timing.gossip_interval.min(Duration::from_secs(1))).await;
        tracing::info!(peers = peers.len(), "left gossip");
        // Already stopped is fine: leaving twice is not an error.
        let _ = self.handle.initiate_shutdown();
    }
}

/// chitchat's detector settings for `t` (shared with the simulation).
pub fn failure_detector_config(t: &GossipTiming) -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold: t.phi_threshold,
        // Enough samples to average out scheduling jitter, few enough that
        // the mean follows a change in rhythm within a minute.
        sampling_window_size: 100,
        max_interval: t.max_interval,
        initial_interval: t.initial_interval,
        dead_node_grace_period: t.dead_node_grace,
    }
}

fn parse_addr(state: &NodeState, key: &str) -> Option<SocketAddr> {
    state.get(key).and_then(|v| v.parse().ok())
}

fn member_from_state(id: &ChitchatId, state: &NodeState, ms: MemberState, is_self: bool) -> Member {
    let text = |k: &str| state.get(k).unwrap_or_default().to_string();
    let known = [
        KEY_REGION,
        KEY_ZONE,
        KEY_PROXY_ADDR,
        KEY_ADMIN_ADDR,
        KEY_MESH_ADDR,
        KEY_VERSION,
        KEY_STARTED_AT,
        KEY_STATUS,
    ];
    Member {
        id: id.node_id.to_string(),
        generation: id.generation_id,
        gossip_addr: id.gossip_advertise_addr,
        state: ms,
        is_self,
        region: text(KEY_REGION),
        zone: text(KEY_ZONE),
        proxy_addr: parse_addr(state, KEY_PROXY_ADDR),
        admin_addr: parse_addr(state, KEY_ADMIN_ADDR),
        mesh_addr: parse_addr(state, KEY_MESH_ADDR),
        version: text(KEY_VERSION),
        started_at_ms: state.get(KEY_STARTED_AT).and_then(|v| v.parse().ok()),
        keys: state
            .key_values()
            .filter(|(k, _)| !known.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, seeds: Vec<String>, secret: Option<&str>) -> MembershipConfig {
        MembershipConfig {
            cluster_name: "test".into(),
            node_id: id.into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise_ip: None,
            seeds,
            secret: secret.map(|s| s.as_bytes().to_vec()),
            info: NodeInfo {
                region: format!("region-{id}"),
                zone: "z1".into(),
                proxy_addr: Some("127.0.0.1:9080".parse().expect("addr")),
                admin_addr: None,
                mesh_addr: None,
                version: "0.0.0".into(),
            },
            timing: GossipTiming {
                gossip_interval: Duration::from_millis(50),
                initial_interval: Duration::from_millis(100),
                ..GossipTiming::default()
            },
            transport: GossipTransport::default(),
        }
    }

    async fn wait_for<F: Fn(&[Member]) -> bool>(m: &Membership, what: &str, f: F) -> Vec<Member> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let members = m.members().await;
            if f(&members) {
                return members;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; members: {members:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn state_of(ms: &[Member], id: &str) -> Option<MemberState> {
        ms.iter().find(|m| m.id == id).map(|m| m.state)
    }

    #[tokio::test]
    async fn refuses_clear_gossip_beyond_loopback() {
        let mut c = cfg("a", vec![], None);
        c.listen = "0.0.0.0:0".parse().expect("addr");
        assert!(matches!(
            Membership::start(c).await,
            Err(MembershipError::SecretRequired(_))
        ));
        let mut c = cfg("a", vec![], Some("a long enough secret"));
        c.listen = "0.0.0.0:0".parse().expect("addr");
        assert!(matches!(
            Membership::start(c).await,
            Err(MembershipError::AdvertiseRequired(_))
        ));
        assert!(matches!(
            Membership::start(cfg("a", vec![], Some("short"))).await,
            Err(MembershipError::Key(_))
        ));
    }

    #[tokio::test]
    async fn nodes_join_publish_and_leave() {
        let secret = Some("the shared test secret");
        let a = Membership::start(cfg("a", vec![], secret))
            .await
            .expect("a");
        let seed = vec![a.gossip_addr().to_string()];
        let b = Membership::start(cfg("b", seed.clone(), secret))
            .await
            .expect("b");
        let c = Membership::start(cfg("c", seed, secret)).await.expect("c");
        let seen = wait_for(&c, "all alive", |ms| {
            ["a", "b", "c"]
                .iter()
                .all(|id| state_of(ms, id) == Some(MemberState::Alive))
        })
        .await;
        let a_seen = seen.iter().find(|m| m.id == "a").expect("a listed");
        assert_eq!(a_seen.region, "region-a");
        assert_eq!(
            a_seen.proxy_addr,
            Some("127.0.0.1:9080".parse().expect("addr"))
        );
        assert_eq!(a_seen.generation, a.generation());
        assert!(seen.iter().any(|m| m.id == "c" && m.is_self));

        b.set_key("health:u", "x").await;
        wait_for(&a, "b's key", |ms| {
            ms.iter()
                .any(|m| m.id == "b" && m.keys.get("health:u").map(String::as_str) == Some("x"))
        })
        .await;

        b.leave().await;
        // The leave shows as `left`, which only the announcement produces
        // (the detector would say `dead`).
        wait_for(&a, "b left", |ms| {
            state_of(ms, "b") == Some(MemberState::Left)
        })
        .await;
        wait_for(&c, "b left", |ms| {
            state_of(ms, "b") == Some(MemberState::Left)
        })
        .await;
        assert!(a.stats().received_datagrams > 0);
        assert_eq!(a.stats().rejected_datagrams, 0);
    }

    #[tokio::test]
    async fn other_secret_never_joins_and_is_counted() {
        let a = Membership::start(cfg("a", vec![], Some("the shared test secret")))
            .await
            .expect("a");
        let seed = vec![a.gossip_addr().to_string()];
        let intruder = Membership::start(cfg("x", seed, Some("some other secret!!")))
            .await
            .expect("x");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while a.stats().rejected_datagrams < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no rejections counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(a.members().await.iter().all(|m| m.id != "x"));
        assert!(intruder.members().await.iter().all(|m| m.id != "a"));
    }
}
