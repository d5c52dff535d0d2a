//! The node's side of clustering: the `weir serve` cluster flags, starting
//! gossip membership (`weir-cluster`) with this node's addresses and the
//! QUIC mesh (`cluster_mesh`), and the document behind the admin endpoint
//! `GET /v1/cluster/members`. The
//! `cluster` config section is `config::ClusterConfig`; `weir cluster
//! status` renders the document in `cli`.
//!
//! Clustering is on when the config has a `cluster` section or any cluster
//! flag is given; otherwise the node runs alone and binds no gossip port
//! (see `docs/adr/0010-gossip-membership.md`). Cluster settings are read at
//! start only; a config reload leaves them as they were.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use weir_cluster::gossip::GossipStatsSnapshot;
use weir_cluster::membership::{
    GossipTiming, KEY_CONFIG_REVISION, KEY_RAFT_ID, Member, MemberState, Membership,
    MembershipConfig, NodeInfo,
};
use weir_observability::metrics::Metrics;

use crate::config::{ClusterConfig, DEFAULT_GOSSIP_PORT, is_label};

/// Cluster settings given on the command line; each wins over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Cluster name (turns clustering on; overrides `cluster.name`).
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Gossip seeds, `host:port`, comma-separated (overrides `cluster.seeds`).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// This node's region (overrides `cluster.region`).
    #[arg(long)]
    pub region: Option<String>,
    /// This node's zone (overrides `cluster.zone`).
    #[arg(long)]
    pub zone: Option<String>,
    /// The IP other nodes reach this one on (overrides
    /// `cluster.advertise_addr`).
    #[arg(long)]
    pub advertise_addr: Option<IpAddr>,
    /// File with the cluster secret (overrides `cluster.secret_file`); the
    /// secret may also come from the `WEIR_CLUSTER_SECRET` environment
    /// variable.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Gossip listen address, UDP (overrides `cluster.gossip_listen`;
    /// default 0.0.0.0:7946).
    #[arg(long)]
    pub gossip_listen: Option<SocketAddr>,
    /// Node mesh listen address, UDP/QUIC (overrides `cluster.mesh_listen`;
    /// default 0.0.0.0:7947). The mesh runs only with a cluster secret.
    #[arg(long)]
    pub mesh_listen: Option<SocketAddr>,
    /// The mesh address peers should dial, when not the listen address
    /// (overrides `cluster.mesh_advertise`).
    #[arg(long)]
    pub mesh_advertise: Option<SocketAddr>,
    /// This node's id (overrides `cluster.node_id`).
    #[arg(long)]
    pub node_id: Option<String>,
}

impl ClusterArgs {
    fn any(&self) -> bool {
        self.cluster_name.is_some()
            || self.seeds.is_some()
            || self.region.is_some()
            || self.zone.is_some()
            || self.advertise_addr.is_some()
            || self.cluster_secret_file.is_some()
            || self.gossip_listen.is_some()
            || self.mesh_listen.is_some()
            || self.mesh_advertise.is_some()
            || self.node_id.is_some()
    }

    /// Applies the flags to `cfg`, creating the section if a flag is given.
    pub fn apply(&self, cfg: &mut Option<ClusterConfig>) {
        if !self.any() {
            return;
        }
        let c = cfg.get_or_insert_with(ClusterConfig::default);
        if let Some(v) = &self.cluster_name {
            c.name.clone_from(v);
        }
        if let Some(v) = &self.seeds {
            c.seeds = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.region {
            c.region.clone_from(v);
        }
        if let Some(v) = &self.zone {
            c.zone.clone_from(v);
        }
        if let Some(v) = self.advertise_addr {
            c.advertise_addr = Some(v);
        }
        if let Some(v) = &self.cluster_secret_file {
            c.secret_file = Some(v.clone());
        }
        if let Some(v) = self.gossip_listen {
            c.gossip_listen = v;
        }
        if let Some(v) = self.mesh_listen {
            c.mesh_listen = v;
        }
        if let Some(v) = self.mesh_advertise {
            c.mesh_advertise = Some(v);
        }
        if let Some(v) = &self.node_id {
            c.node_id.clone_from(v);
        }
    }
}

/// This node's id: `cluster.node_id`, else the host name, with the gossip
/// port (or, for port 0, a random suffix) when it is not the default one.
/// Call once and store the result: the port-0 form differs per call.
pub fn resolve_node_id(c: &ClusterConfig) -> String {
    if !c.node_id.is_empty() {
        return c.node_id.clone();
    }
    match c.gossip_listen.port() {
        DEFAULT_GOSSIP_PORT => host_name(),
        0 => format!("{}-{:08x}", host_name(), fastrand::u32(..)),
        port => format!("{}-{port}", host_name()),
    }
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && is_label(s))
        .unwrap_or_else(|| "weir".to_string())
}

/// Reads the secret: the file named in the config, else
/// `WEIR_CLUSTER_SECRET`, else none.
pub(crate) fn read_secret(c: &ClusterConfig) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(path) = &c.secret_file {
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the cluster secret file {} (cluster.secret_file): {e}",
                path.display()
            )
        })?;
        return Ok(Some(bytes));
    }
    Ok(std::env::var_os("WEIR_CLUSTER_SECRET")
        .filter(|v| !v.is_empty())
        .map(|v| v.into_encoded_bytes()))
}

/// An address as peers should use it: an unspecified IP is replaced by the
/// advertised one.
fn reachable(addr: SocketAddr, advertise: Option<IpAddr>) -> Option<SocketAddr> {
    if addr.ip().is_unspecified() {
        advertise.map(|ip| SocketAddr::new(ip, addr.port()))
    } else {
        Some(addr)
    }
}

/// The running cluster side of a node.
#[derive(Debug)]
pub struct Cluster {
    membership: Arc<Membership>,
    mesh: crate::cluster_mesh::NodeMesh,
    /// Gossip counters already added to the Prometheus series.
    metrics_seen: std::sync::Mutex<GossipStatsSnapshot>,
}

impl Cluster {
    /// Starts gossip for this node.
    ///
    /// # Errors
    /// Unreadable secret file, refused settings (no secret beyond loopback,
    /// no advertise address), or a gossip port that cannot be bound.
    pub async fn start(
        c: &ClusterConfig,
        proxy: SocketAddr,
        admin: SocketAddr,
    ) -> anyhow::Result<Cluster> {
        let secret = read_secret(c)?;
        let node_id = resolve_node_id(c);
        let mesh = crate::cluster_mesh::NodeMesh::start(
            &node_id,
            c.mesh_listen,
            c.mesh_advertise,
            c.advertise_addr,
            c.gossip_listen,
            secret.is_some(),
        )
        .map_err(|e| anyhow::anyhow!("cluster: {e:#}"))?;
        let membership = Membership::start(MembershipConfig {
            cluster_name: c.name.clone(),
            node_id,
            listen: c.gossip_listen,
            advertise_ip: c.advertise_addr,
            seeds: c.seeds.clone(),
            secret,
            info: NodeInfo {
                region: c.region.clone(),
                zone: c.zone.clone(),
                proxy_addr: reachable(proxy, c.advertise_addr),
                admin_addr: reachable(admin, c.advertise_addr),
                mesh_addr: mesh.advertise(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            timing: GossipTiming {
                gossip_interval: c.gossip_interval,
                phi_threshold: c.phi_threshold,
                dead_node_grace: c.dead_node_grace,
                ..GossipTiming::default()
            },
            transport: weir_cluster::gossip::GossipTransport::default(),
        })
        .await
        .map_err(|e| {
            mesh.close();
            anyhow::anyhow!("cluster: {e}")
        })?;
        let membership = Arc::new(membership);
        mesh.attach(membership.clone()).await;
        Ok(Cluster {
            membership,
            mesh,
            metrics_seen: std::sync::Mutex::new(GossipStatsSnapshot::default()),
        })
    }

    /// The membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The membership, shared.
    pub fn membership_handle(&self) -> Arc<Membership> {
        self.membership.clone()
    }

    /// The node mesh (off without a cluster secret).
    pub fn mesh(&self) -> &crate::cluster_mesh::NodeMesh {
        &self.mesh
    }

    /// Announces that this node leaves, then stops gossiping and closes
    /// the mesh.
    pub async fn leave(&self) {
        self.membership.leave().await;
        self.mesh.close();
    }

    /// Brings the membership and gossip series up to date; called before
    /// each `/metrics` scrape. The gossip transport keeps its own counters
    /// (they feed the admin JSON too); the series advance by what changed
    /// since the last scrape.
    pub async fn publish_metrics(&self, m: &Metrics) {
        let members = self.membership.members().await;
        let by_state = m.gauge_vec(
            "weir_cluster_members",
            "Cluster members this node knows of, itself included, by state (alive, joining, dead, left).",
            ["state"],
        );
        for state in [
            MemberState::Alive,
            MemberState::Joining,
            MemberState::Dead,
            MemberState::Left,
        ] {
            let n = members.iter().filter(|x| x.state == state).count();
            by_state.set([state.as_str()], i64::try_from(n).unwrap_or(i64::MAX));
        }

        let datagrams = m.counter_vec(
            "weir_gossip_datagrams",
            "Gossip datagrams sent and received (received: those that opened and decoded).",
            ["direction"],
        );
        let bytes = m.counter_vec(
            "weir_gossip_bytes",
            "Gossip bytes sent and received, sealed size.",
            ["direction"],
        );
        let dropped = m.counter_vec(
            "weir_gossip_datagrams_dropped",
            "Gossip datagrams dropped, by reason: rejected (failed to open: another secret or cluster, tampered, truncated), malformed (opened but not a gossip message), oversized (outgoing, more than four datagrams once sealed), incomplete (incoming message whose parts did not all arrive in time).",
            ["reason"],
        );
        let mut seen = self
            .metrics_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.membership.stats();
        let before = std::mem::replace(&mut *seen, now);
        let d = |a: u64, b: u64| a.saturating_sub(b);
        datagrams.inc_by(["sent"], d(now.sent_datagrams, before.sent_datagrams));
        datagrams.inc_by(
            ["received"],
            d(now.received_datagrams, before.received_datagrams),
        );
        bytes.inc_by(["sent"], d(now.sent_bytes, before.sent_bytes));
        bytes.inc_by(["received"], d(now.received_bytes, before.received_bytes));
        dropped.inc_by(
            ["rejected"],
            d(now.rejected_datagrams, before.rejected_datagrams),
        );
        dropped.inc_by(
            ["malformed"],
            d(now.malformed_datagrams, before.malformed_datagrams),
        );
        dropped.inc_by(
            ["oversized"],
            d(now.oversized_datagrams, before.oversized_datagrams),
        );
        dropped.inc_by(
            ["incomplete"],
            d(now.incomplete_messages, before.incomplete_messages),
        );
        m.counter(
            "weir_gossip_split_messages",
            "Outgoing gossip messages sent in several datagrams because, sealed, they exceed one.",
        )
        .inc_by(d(now.split_messages, before.split_messages));
        drop(seen);
        self.mesh.publish_metrics(m);
    }

    /// The body of `GET /v1/cluster/members`.
    pub async fn members_json(&self) -> serde_json::Value {
        let unix_ms = crate::clock::unix_ms();
        let members: Vec<serde_json::Value> = self
            .membership
            .members()
            .await
            .iter()
            .map(|m: &Member| {
                serde_json::json!({
                    "id": m.id,
                    "generation": m.generation,
                    "state": m.state,
                    "is_self": m.is_self,
                    "region": m.region,
                    "zone": m.zone,
                    "gossip_addr": m.gossip_addr,
                    "proxy_addr": m.proxy_addr,
                    "admin_addr": m.admin_addr,
                    "mesh_addr": m.mesh_addr,
                    "version": m.version,
                    "started_at_ms": m.started_at_ms,
                    "age_seconds": m.started_at_ms.map(|s| unix_ms.saturating_sub(s) / 1000),
                    "raft_id": key_u64(m, KEY_RAFT_ID),
                    "revision": key_u64(m, KEY_CONFIG_REVISION),
                })
            })
            .collect();
        let m = &self.membership;
        serde_json::json!({
            "cluster": m.cluster_name(),
            "node_id": m.node_id(),
            "generation": m.generation(),
            "gossip_addr": m.gossip_addr(),
            "members": members,
            "gossip": m.stats(),
        })
    }
}

/// A decimal key a member publishes, if it does.
fn key_u64(m: &Member, key: &str) -> Option<u64> {
    m.keys.get(key).and_then(|v| v.parse().ok())
}

/// Shared handle the admin API reads.
pub type SharedCluster = Option<Arc<Cluster>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_turn_clustering_on_and_win() {
        let mut cfg = None;
        ClusterArgs::default().apply(&mut cfg);
        assert_eq!(cfg, None);
        let args = ClusterArgs {
            region: Some("eu".into()),
            seeds: Some(vec!["a:1".into(), String::new()]),
            ..ClusterArgs::default()
        };
        args.apply(&mut cfg);
        let c = cfg.expect("on");
        assert_eq!(c.region, "eu");
        assert_eq!(c.seeds, ["a:1"]);
        assert_eq!(c.name, "weir");

        let mut cfg = None;
        ClusterArgs {
            mesh_listen: Some("127.0.0.1:0".parse().expect("addr")),
            ..ClusterArgs::default()
        }
        .apply(&mut cfg);
        assert_eq!(
            cfg.expect("on").mesh_listen,
            "127.0.0.1:0".parse::<SocketAddr>().expect("addr")
        );
    }
}
