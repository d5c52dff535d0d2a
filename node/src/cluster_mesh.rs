//! The node's side of the QUIC mesh (`weir-mesh`, ADR 0032): starting it
//! when the cluster has a secret, the address and key fingerprint this
//! node publishes through gossip, feeding the live members into the mesh
//! as peers, and what it reports (`GET /v1/cluster/mesh`, the `weir_mesh_*`
//! series). Gossip itself is `cluster`; what travels over the mesh belongs
//! to its future users (cluster-wide limits), not here.
//!
//! Without a cluster secret the mesh stays off: gossip would be the only
//! thing vouching for a peer's key, and unsealed gossip vouches for
//! nothing. The node says so once in its log and in the endpoint.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_cluster::membership::{KEY_MESH_IDENTITY, Member, MemberState, Membership};
use weir_mesh::stats::DROP_REASONS;
use weir_mesh::{Fingerprint, Identity, LinkState, Mesh, MeshConfig, MeshSnapshot, PeerSpec};
use weir_observability::metrics::{Column, Gauge, Metrics, SeriesTable, as_metric};

/// A gauge holding seconds (the registry's plain gauges hold integers).
type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;
type RttTable = Arc<SeriesTable<1, Seconds>>;

/// Why the mesh is off when there is no secret.
const OFF_NO_SECRET: &str = "the cluster has no secret (--cluster-secret-file or WEIR_CLUSTER_SECRET); the mesh authenticates peers through sealed gossip and runs only with one";

/// How often the peer set is rebuilt even without a gossip change (a
/// backstop: the watch reports changes of the live set and of keys).
const RESYNC: Duration = Duration::from_secs(5);

/// The mesh of a clustered node, or why there is none.
#[derive(Debug)]
pub struct NodeMesh {
    mesh: Option<Mesh>,
    advertise: Option<SocketAddr>,
    feed: Mutex<Option<tokio::task::AbortHandle>>,
    /// Per-peer counters already added to the Prometheus series.
    seen: Mutex<HashMap<String, Seen>>,
    seen_refusals: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// The RTT table, per registry it was registered in (a table is
    /// registered once; in practice there is one registry, the global one).
    rtt: Mutex<Vec<(usize, RttTable)>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    bytes_in: u64,
    bytes_out: u64,
    frames_in: u64,
    frames_out: u64,
    drops: [u64; DROP_REASONS.len()],
    reconnects: u64,
}

/// The address peers should dial: `cluster.mesh_advertise` when set;
/// else the bound one, an unspecified IP replaced by the advertised one,
/// else by gossip's listen IP.
fn advertise_of(
    bound: SocketAddr,
    mesh_advertise: Option<SocketAddr>,
    advertise: Option<IpAddr>,
    gossip: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    if let Some(a) = mesh_advertise {
        return Ok(a);
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    match advertise.or_else(|| Some(gossip.ip()).filter(|ip| !ip.is_unspecified())) {
        Some(ip) => Ok(SocketAddr::new(ip, bound.port())),
        None => anyhow::bail!(
            "cluster.mesh_listen is {bound}, an unspecified address; set the address peers should use (--advertise-addr)"
        ),
    }
}

impl NodeMesh {
    /// Starts the mesh for `node_id` when there is a secret; otherwise
    /// returns one that is off and logs why.
    ///
    /// # Errors
    /// A mesh socket that cannot be bound, or no address to advertise.
    pub fn start(
        node_id: &str,
        listen: SocketAddr,
        mesh_advertise: Option<SocketAddr>,
        advertise: Option<IpAddr>,
        gossip: SocketAddr,
        has_secret: bool,
    ) -> anyhow::Result<NodeMesh> {
        if !has_secret {
            tracing::info!("mesh off: {OFF_NO_SECRET}");
            return Ok(NodeMesh::off());
        }
        let identity = Identity::generate(node_id)?;
        let mesh = Mesh::start(MeshConfig::new(identity, listen))?;
        let addr = match advertise_of(mesh.local_addr(), mesh_advertise, advertise, gossip) {
            Ok(a) => a,
            Err(e) => {
                mesh.close();
                return Err(e);
            }
        };
        Ok(NodeMesh {
            mesh: Some(mesh),
            advertise: Some(addr),
            ..NodeMesh::off()
        })
    }

    fn off() -> NodeMesh {
        NodeMesh {
            mesh: None,
            advertise: None,
            feed: Mutex::new(None),
            seen: Mutex::default(),
            seen_refusals: Mutex::default(),
            rtt: Mutex::default(),
        }
    }

    /// The running mesh, if any (its API is for the cluster features built
    /// on it).
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// The address published as `mesh_addr`.
    pub fn advertise(&self) -> Option<SocketAddr> {
        self.advertise
    }

    /// Publishes the key fingerprint and starts feeding live members into
    /// the mesh as peers.
    pub async fn attach(&self, membership: Arc<Membership>) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        membership
            .set_key(
                KEY_MESH_IDENTITY,
                &mesh.identity().fingerprint().to_string(),
            )
            .await;
        let task = tokio::spawn(async move {
            let mut changes = membership.changes();
            loop {
                mesh.set_peers(peers_of(&membership.members().await));
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    () = tokio::time::sleep(RESYNC) => {}
                }
            }
        });
        *lock(&self.feed) = Some(task.abort_handle());
    }

    /// Stops feeding and closes every link.
    pub fn close(&self) {
        if let Some(t) = lock(&self.feed).take() {
            t.abort();
        }
        if let Some(m) = &self.mesh {
            m.close();
        }
    }

    /// The body of `GET /v1/cluster/mesh`.
    pub fn json(&self) -> serde_json::Value {
        match &self.mesh {
            None => serde_json::json!({
                "enabled": false,
                "reason": OFF_NO_SECRET,
                "peers": [],
            }),
            Some(m) => {
                let mut doc = serde_json::to_value(m.snapshot()).unwrap_or_default();
                doc["enabled"] = serde_json::json!(true);
                doc["advertise"] = serde_json::json!(self.advertise);
                doc
            }
        }
    }

    /// Brings the `weir_mesh_*` series up to date (before a scrape).
    pub fn publish_metrics(&self, m: &Metrics) {
        m.gauge(
            "weir_mesh_enabled",
            "1 when the node mesh runs (it needs a cluster secret).",
        )
        .set(i64::from(self.mesh.is_some()));
        let Some(mesh) = &self.mesh else {
            return;
        };
        publish_snapshot(self, m, &mesh.snapshot());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rtt_table(nm: &NodeMesh, m: &Metrics) -> RttTable {
    let key = std::ptr::from_ref(m) as usize;
    let mut tables = lock(&nm.rtt);
    if let Some((_, t)) = tables.iter().find(|(k, _)| *k == key) {
        return t.clone();
    }
    let t = m.table(
        "weir_mesh_rtt_seconds",
        [("peer", false)],
        Seconds::default,
        vec![Column::gauge(
            "weir_mesh_rtt_seconds",
            "Smoothed round-trip time of the mesh link to the peer (QUIC path RTT), in seconds.",
            as_metric::<Seconds>,
        )],
    );
    tables.push((key, t.clone()));
    t
}

/// Counter growth since the last scrape; a counter that went down belongs
/// to a peer that was removed and re-added, so it counts from zero.
fn growth(now: u64, before: u64) -> u64 {
    if now >= before { now - before } else { now }
}

fn publish_snapshot(nm: &NodeMesh, m: &Metrics, snap: &MeshSnapshot) {
    let links = m.gauge_vec(
        "weir_mesh_peers",
        "Mesh peers (live members with a mesh identity) by link state (connecting, connected, backoff).",
        ["state"],
    );
    for s in [
        LinkState::Connecting,
        LinkState::Connected,
        LinkState::Backoff,
    ] {
        let n = snap.peers.iter().filter(|p| p.state == s).count();
        links.set([s.as_str()], i64::try_from(n).unwrap_or(i64::MAX));
    }
    let up = m.gauge_vec(
        "weir_mesh_link_up",
        "1 while the mesh link to the peer is connected.",
        ["peer"],
    );
    let rtt = rtt_table(nm, m);
    let bytes = m.counter_vec(
        "weir_mesh_bytes",
        "Mesh frame bytes exchanged with the peer, by direction (in, out).",
        ["peer", "direction"],
    );
    let frames = m.counter_vec(
        "weir_mesh_frames",
        "Mesh frames exchanged with the peer, by direction (in: accepted; out: sent).",
        ["peer", "direction"],
    );
    let drops = m.counter_vec(
        "weir_mesh_dropped",
        "Outgoing mesh frames dropped, by peer and reason (queue_full, no_link, too_large, timeout, send_failed).",
        ["peer", "reason"],
    );
    let reconnects = m.counter_vec(
        "weir_mesh_reconnects",
        "Mesh connections to the peer established after the first.",
        ["peer"],
    );
    let refused_frames = m.counter_vec(
        "weir_mesh_frames_refused",
        "Incoming mesh frames refused, by reason (unknown_version, oversized, malformed, forged_sender, replayed, unknown_kind).",
        ["reason"],
    );
    let refused_conns = m.counter_vec(
        "weir_mesh_connections_refused",
        "Mesh handshakes refused, by reason (unknown_node: no pinned identity, e.g. another cluster; identity_mismatch; bad_certificate).",
        ["reason"],
    );

    let mut seen = lock(&nm.seen);
    let gone: Vec<String> = seen
        .keys()
        .filter(|id| snap.peer(id).is_none())
        .cloned()
        .collect();
    for id in gone {
        up.remove([&id]);
        rtt.remove([id.as_str()]);
        seen.remove(&id);
    }
    for p in &snap.peers {
        let id = p.node_id.as_str();
        up.set([id], i64::from(p.state == LinkState::Connected));
        match p.rtt_ms {
            Some(ms) => {
                rtt.with([id], |g| g.set(ms / 1000.0));
            }
            None => rtt.remove([id]),
        }
        let before = seen.get(id).copied().unwrap_or_default();
        let mut now = Seen {
            bytes_in: p.bytes_in,
            bytes_out: p.bytes_out,
            frames_in: p.frames_in,
            frames_out: p.frames_out,
            drops: before.drops,
            reconnects: p.reconnects,
        };
        bytes.inc_by([id, "in"], growth(now.bytes_in, before.bytes_in));
        bytes.inc_by([id, "out"], growth(now.bytes_out, before.bytes_out));
        frames.inc_by([id, "in"], growth(now.frames_in, before.frames_in));
        frames.inc_by([id, "out"], growth(now.frames_out, before.frames_out));
        reconnects.inc_by([id], growth(now.reconnects, before.reconnects));
        for (i, reason) in DROP_REASONS.iter().enumerate() {
            let n = p.drops_by_reason.get(reason).copied().unwrap_or(0);
            drops.inc_by([id, reason], growth(n, before.drops[i]));
            now.drops[i] = n;
        }
        seen.insert(id.to_string(), now);
    }
    drop(seen);

    let mut seen = lock(&nm.seen_refusals);
    for (family, map) in [
        ("frames", &snap.refused_frames),
        ("handshakes", &snap.refused_handshakes),
    ] {
        for (reason, n) in map {
            let before = seen.insert((family, reason), *n).unwrap_or(0);
            let series = if family == "frames" {
                &refused_frames
            } else {
                &refused_conns
            };
            series.inc_by([reason], growth(*n, before));
        }
    }
}

/// The live members (other than this node) that publish a mesh address
/// and identity, newest generation per node id.
fn peers_of(members: &[Member]) -> Vec<PeerSpec> {
    let mut by_id: BTreeMap<&str, (u64, PeerSpec)> = BTreeMap::new();
    for m in members {
        if m.is_self || m.state != MemberState::Alive {
            continue;
        }
        let (Some(addr), Some(fp)) = (m.mesh_addr, m.keys.get(KEY_MESH_IDENTITY)) else {
            continue;
        };
        let Ok(fingerprint) = fp.parse::<Fingerprint>() else {
            tracing::debug!(peer = %m.id, "mesh: the published mesh identity does not parse");
            continue;
        };
        if by_id
            .get(m.id.as_str())
            .is_some_and(|(g, _)| *g > m.generation)
        {
            continue;
        }
        by_id.insert(
            &m.id,
            (
                m.generation,
                PeerSpec {
                    node_id: m.id.clone(),
                    addr,
                    fingerprint,
                },
            ),
        );
    }
    by_id.into_values().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, generation: u64, state: MemberState, fp: Option<&str>) -> Member {
        Member {
            id: id.into(),
            generation,
            gossip_addr: "127.0.0.1:1".parse().expect("addr"),
            state,
            is_self: false,
            region: String::new(),
            zone: String::new(),
            proxy_addr: None,
            admin_addr: None,
            mesh_addr: Some("127.0.0.1:2".parse().expect("addr")),
            version: String::new(),
            started_at_ms: None,
            keys: fp
                .map(|f| (KEY_MESH_IDENTITY.to_string(), f.to_string()))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn peers_are_live_members_with_an_identity_newest_first() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut me = member("me", 1, MemberState::Alive, Some(&a));
        me.is_self = true;
        let peers = peers_of(&[
            me,
            member("n1", 1, MemberState::Dead, Some(&a)),
            member("n1", 2, MemberState::Alive, Some(&b)),
            member("n2", 1, MemberState::Alive, None),
            member("n3", 1, MemberState::Alive, Some("not hex")),
            member("n4", 1, MemberState::Left, Some(&a)),
            member("n5", 1, MemberState::Joining, Some(&a)),
        ]);
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].node_id, "n1");
        assert_eq!(peers[0].fingerprint, b.parse().expect("fp"));
    }

    #[test]
    fn advertise_fills_an_unspecified_ip() {
        let any: SocketAddr = "0.0.0.0:7947".parse().expect("addr");
        let gossip: SocketAddr = "10.0.0.5:7946".parse().expect("addr");
        assert_eq!(
            advertise_of(any, None, None, gossip).expect("gossip ip"),
            "10.0.0.5:7947".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            advertise_of(any, None, Some("10.0.0.9".parse().expect("ip")), gossip)
                .expect("advertised"),
            "10.0.0.9:7947".parse::<SocketAddr>().expect("addr")
        );
        let any_gossip: SocketAddr = "0.0.0.0:7946".parse().expect("addr");
        let e = advertise_of(any, None, None, any_gossip).expect_err("nothing to advertise");
        assert!(e.to_string().contains("cluster.mesh_listen"), "{e}");
        let fixed: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        assert_eq!(
            advertise_of(fixed, None, None, any_gossip).expect("as bound"),
            fixed
        );
        // An explicit mesh address wins over both (a proxy in front).
        let proxy: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        assert_eq!(
            advertise_of(fixed, Some(proxy), None, any_gossip).expect("explicit"),
            proxy
        );
    }
}
