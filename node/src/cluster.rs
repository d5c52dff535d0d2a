//! The node's side of clustering: the `cluster` config section and `weir
//! serve` flags, starting gossip membership (`weir-cluster`) with this
//! node's addresses, the admin endpoint `GET /v1/cluster/members`, and
//! `weir cluster status`.
//!
//! Clustering is on when the config has a `cluster` section or any cluster
//! flag is given; otherwise the node runs alone and binds no gossip port
//! (see `docs/adr/0010-gossip-membership.md`). Cluster settings are read at
//! start only; a config reload leaves them as they were.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weir_cluster::gossip::GossipStatsSnapshot;
use weir_cluster::membership::{
    GossipTiming, Member, MemberState, Membership, MembershipConfig, NodeInfo,
};
use weir_observability::metrics::Metrics;

/// Default gossip port (UDP).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;

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
    #[serde(with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// Silence, in mean heartbeat intervals, before a peer is dead.
    pub phi_threshold: f64,
    /// How long dead members stay listed.
    #[serde(with = "humantime_serde")]
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
            advertise_addr: None,
            seeds: Vec::new(),
            secret_file: None,
            gossip_interval: t.gossip_interval,
            phi_threshold: t.phi_threshold,
            dead_node_grace: t.dead_node_grace,
        }
    }
}

fn is_label(s: &str) -> bool {
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
fn read_secret(c: &ClusterConfig) -> anyhow::Result<Option<Vec<u8>>> {
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
    membership: Membership,
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
                mesh_addr: None,
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
        .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
        Ok(Cluster {
            membership,
            metrics_seen: std::sync::Mutex::new(GossipStatsSnapshot::default()),
        })
    }

    /// The membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Announces that this node leaves, then stops gossiping.
    pub async fn leave(&self) {
        self.membership.leave().await;
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
            "Gossip datagrams dropped, by reason: rejected (failed to open: another secret or cluster, tampered, truncated), malformed (opened but not a gossip message), oversized (outgoing, larger than one datagram once sealed).",
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
    }

    /// The body of `GET /v1/cluster/members`.
    pub async fn members_json(&self) -> serde_json::Value {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
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
                    "age_seconds": m.started_at_ms.map(|s| now_ms.saturating_sub(s) / 1000),
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

/// Shared handle the admin API reads.
pub type SharedCluster = Option<Arc<Cluster>>;

// === weir cluster status ===

/// `weir cluster status`: the member list and the health matrix (fetched
/// by the admin client, which sends the admin key) printed as tables, or as
/// JSON (the members document with the health view's `targets` under
/// `health`).
///
/// # Errors
/// If the JSON cannot be printed.
pub fn render_status(
    mut members: serde_json::Value,
    health: &serde_json::Value,
    json: bool,
) -> anyhow::Result<String> {
    members["health"] = health["targets"].clone();
    if json {
        return Ok(serde_json::to_string_pretty(&members)?);
    }
    Ok(render_table(&members))
}

/// Left-aligned columns, two spaces apart.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn render_table(doc: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if !s.is_empty() => s.clone(),
        serde_json::Value::Null | serde_json::Value::String(_) => "-".to_string(),
        other => other.to_string(),
    };
    let mut rows = vec![
        [
            "ID", "STATE", "REGION", "ZONE", "AGE", "PROXY", "ADMIN", "GOSSIP",
        ]
        .map(String::from),
    ];
    for m in doc["members"].as_array().into_iter().flatten() {
        let mut id = s(&m["id"]);
        if m["is_self"] == serde_json::Value::Bool(true) {
            id.push_str(" (self)");
        }
        let age = m["age_seconds"]
            .as_u64()
            .map(|a| humantime::format_duration(Duration::from_secs(a)).to_string())
            .unwrap_or_else(|| "-".to_string());
        rows.push([
            id,
            s(&m["state"]),
            s(&m["region"]),
            s(&m["zone"]),
            age,
            s(&m["proxy_addr"]),
            s(&m["admin_addr"]),
            s(&m["gossip_addr"]),
        ]);
    }
    let mut out = format!(
        "cluster {} (seen from {})\n\n",
        s(&doc["cluster"]),
        s(&doc["node_id"])
    );
    out.push_str(&columns(&rows));
    let g = &doc["gossip"];
    out.push_str(&format!(
        "\ngossip: {} datagrams sent, {} received, {} rejected (failed to open), {} malformed\n",
        s(&g["sent_datagrams"]),
        s(&g["received_datagrams"]),
        s(&g["rejected_datagrams"]),
        s(&g["malformed_datagrams"]),
    ));
    let targets = doc["health"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !targets.is_empty() {
        let list = |v: &serde_json::Value| {
            let items: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x.as_str().unwrap_or("?").to_string())
                .collect();
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(",")
            }
        };
        let mut rows = vec![
            [
                "UPSTREAM", "TARGET", "REGION", "CLUSTER", "PROBERS", "DOWN FOR",
            ]
            .map(String::from),
        ];
        for t in targets {
            rows.push([
                s(&t["upstream"]),
                s(&t["target"]),
                s(&t["region"]),
                if t["cluster_down"] == serde_json::Value::Bool(true) {
                    "down".to_string()
                } else {
                    "up".to_string()
                },
                list(&t["probers"]),
                list(&t["down_reports"]),
            ]);
        }
        out.push_str("\nhealth checks (DOWN FOR: members reporting the target down)\n\n");
        out.push_str(&columns(&rows));
    }
    out
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
    }

    #[test]
    fn table_lists_members() {
        let doc = serde_json::json!({
            "cluster": "c", "node_id": "a",
            "members": [
                {"id": "a", "is_self": true, "state": "alive", "region": "eu", "zone": "",
                 "age_seconds": 61, "proxy_addr": "127.0.0.1:1", "admin_addr": null, "gossip_addr": "127.0.0.1:2"},
                {"id": "b", "is_self": false, "state": "dead", "region": "us", "zone": "z",
                 "age_seconds": null, "proxy_addr": null, "admin_addr": null, "gossip_addr": "127.0.0.1:3"}
            ],
            "gossip": {"sent_datagrams": 5, "received_datagrams": 4, "rejected_datagrams": 1, "malformed_datagrams": 0},
            "health": [
                {"upstream": "u", "target": "10.0.0.1:80", "region": "eu", "cluster_down": true,
                 "probers": ["a", "b"], "down_reports": ["a", "b"]},
                {"upstream": "u", "target": "10.0.0.2:80", "region": "", "cluster_down": false,
                 "probers": ["b", "a"], "down_reports": []}
            ]
        });
        let t = render_table(&doc);
        assert!(t.contains("a (self)  alive"), "{t}");
        assert!(t.contains("1m 1s"), "{t}");
        assert!(t.contains("b         dead "), "{t}");
        assert!(t.contains("1 rejected"), "{t}");
        assert!(
            t.contains("u         10.0.0.1:80  eu      down     a,b      a,b"),
            "{t}"
        );
        assert!(
            t.contains("u         10.0.0.2:80  -       up       b,a      -"),
            "{t}"
        );
    }
}
