//! The `cluster` config section: gossip name, node id, locality labels,
//! addresses (gossip and mesh), seeds, secret file and timing, with their
//! defaults and checks. Starting membership from it is `cluster`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_cluster::membership::GossipTiming;

/// Default gossip port (UDP).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Default mesh port (UDP, QUIC).
pub const DEFAULT_MESH_PORT: u16 = 7947;

/// The `cluster` config section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Cluster name; nodes with another name are refused.
    pub name: String,
    /// This node's id, unique in the cluster. Empty: the host name, plus
    /// the gossip port when it is not the default.
    pub node_id: String,
    /// Region label of this node (locality, health sharding).
    pub region: String,
    /// Zone label of this node.
    pub zone: String,
    /// Where gossip listens (UDP).
    pub gossip_listen: SocketAddr,
    /// Where the node mesh listens (UDP, QUIC). The mesh runs only when
    /// the cluster has a secret.
    pub mesh_listen: SocketAddr,
    /// The mesh address peers should dial (published as `mesh_addr`), when
    /// it is not the listen address: a NAT, a load balancer or a fault
    /// proxy in front of the mesh socket. None: the listen address (its
    /// unspecified IP replaced as `advertise_addr` says).
    pub mesh_advertise: Option<SocketAddr>,
    /// The IP other nodes reach this one on. Needed when `gossip_listen`
    /// is 0.0.0.0 or ::.
    pub advertise_addr: Option<IpAddr>,
    /// Gossip addresses (`host:port`) of nodes to join through.
    pub seeds: Vec<String>,
    /// File holding the cluster secret (at least 16 bytes; surrounding
    /// whitespace ignored). `WEIR_CLUSTER_SECRET` may hold it instead.
    /// Required unless gossip listens on loopback only.
    pub secret_file: Option<PathBuf>,
    /// How often gossip runs.
    #[serde(with = "crate::config::duration")]
    pub gossip_interval: Duration,
    /// Silence, in mean heartbeat intervals, before a peer is dead.
    pub phi_threshold: f64,
    /// How long dead members stay listed.
    #[serde(with = "crate::config::duration")]
    pub dead_node_grace: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let t = GossipTiming::default();
        ClusterConfig {
            name: "weir".to_string(),
            node_id: String::new(),
            region: String::new(),
            zone: String::new(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_GOSSIP_PORT)),
            mesh_listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_MESH_PORT)),
            mesh_advertise: None,
            advertise_addr: None,
            seeds: Vec::new(),
            secret_file: None,
            gossip_interval: t.gossip_interval,
            phi_threshold: t.phi_threshold,
            dead_node_grace: t.dead_node_grace,
        }
    }
}

/// A locality or node label: at most 63 letters, digits, `-`, `_` or `.`.
pub(crate) fn is_label(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl ClusterConfig {
    /// Problems as `(path under cluster, reason)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut push = |k: &str, r: &str| p.push((k.to_string(), r.to_string()));
        if self.name.is_empty() || !is_label(&self.name) {
            push(
                "name",
                "must be 1-63 characters of letters, digits, `-`, `_` or `.`",
            );
        }
        for (k, v) in [
            ("node_id", &self.node_id),
            ("region", &self.region),
            ("zone", &self.zone),
        ] {
            if !is_label(v) {
                push(
                    k,
                    "must be at most 63 characters of letters, digits, `-`, `_` or `.`",
                );
            }
        }
        if self.gossip_interval < Duration::from_millis(10)
            || self.gossip_interval > Duration::from_secs(60)
        {
            push("gossip_interval", "must be between 10ms and 60s");
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold >= 2.0) {
            push("phi_threshold", "must be a number of at least 2");
        }
        if self.mesh_listen.port() != 0 && self.mesh_listen == self.gossip_listen {
            push(
                "mesh_listen",
                "must differ from gossip_listen (both are UDP)",
            );
        }
        if let Some(a) = self.mesh_advertise
            && (a.ip().is_unspecified() || a.port() == 0)
        {
            push(
                "mesh_advertise",
                "must be an address peers can dial: a specific IP and a port other than 0",
            );
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if s.rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
            {
                p.push((format!("seeds[{i}]"), format!("`{s}` is not `host:port`")));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_each_bad_key() {
        let c = ClusterConfig {
            name: String::new(),
            region: "eu west".into(),
            seeds: vec!["10.0.0.1:7946".into(), "nohost".into(), ":1".into()],
            gossip_interval: Duration::from_millis(1),
            phi_threshold: f64::NAN,
            ..ClusterConfig::default()
        };
        let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "name",
                "region",
                "gossip_interval",
                "phi_threshold",
                "seeds[1]",
                "seeds[2]"
            ]
        );
        assert!(ClusterConfig::default().validate().is_empty());
    }

    #[test]
    fn mesh_listen_defaults_to_7947_and_must_differ_from_gossip() {
        let c = ClusterConfig::default();
        assert_eq!(c.mesh_listen, SocketAddr::from(([0, 0, 0, 0], 7947)));
        let same = ClusterConfig {
            mesh_listen: c.gossip_listen,
            ..ClusterConfig::default()
        };
        let keys: Vec<String> = same.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["mesh_listen"]);
        let both_any_port = ClusterConfig {
            gossip_listen: "127.0.0.1:0".parse().expect("addr"),
            mesh_listen: "127.0.0.1:0".parse().expect("addr"),
            ..ClusterConfig::default()
        };
        assert!(both_any_port.validate().is_empty());
    }

    #[test]
    fn mesh_advertise_must_be_dialable() {
        for bad in ["0.0.0.0:7947", "127.0.0.1:0", "[::]:7947"] {
            let c = ClusterConfig {
                mesh_advertise: Some(bad.parse().expect("addr")),
                ..ClusterConfig::default()
            };
            let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["mesh_advertise"], "{bad}");
        }
        let ok = ClusterConfig {
            mesh_advertise: Some("10.0.0.7:17947".parse().expect("addr")),
            ..ClusterConfig::default()
        };
        assert!(ok.validate().is_empty());
    }
}
