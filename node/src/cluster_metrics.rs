//! The cluster series of `/metrics`: gossip membership and transport
//! counters, the mesh links (published by `cluster_mesh`), the probe
//! duties this node holds, and the Raft store's state.
//!
//! All of them are read, not counted on a hot path: before each scrape
//! [`refresh`] copies what membership, the health checker and openraft's
//! metrics watch already know into the registry, the way
//! [`crate::telemetry::Telemetry::refresh`] does for target health. The
//! label values are fixed words (states, directions, reasons, roles), so
//! the series stay bounded however large the cluster grows; the mesh
//! series add a `peer` label, bounded by the number of members.

use weir_cluster::raft::RaftKv;
use weir_observability::metrics::Metrics;

use crate::cluster::Cluster;
use crate::health::HealthChecker;

/// Raft roles, as `/v1/status` names them.
const RAFT_STATES: [&str; 5] = ["leader", "follower", "learner", "candidate", "shutdown"];

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Brings every cluster series up to date.
pub async fn refresh(
    m: &Metrics,
    cluster: Option<&Cluster>,
    health: &HealthChecker,
    store: Option<&RaftKv>,
) {
    if let Some(c) = cluster {
        c.publish_metrics(m).await;
    }
    let duties = health.view().iter().filter(|t| t.probed_here).count();
    m.gauge(
        "weir_health_probe_duties",
        "Upstream targets this node probes actively (its share of the sharded health checks).",
    )
    .set(gauge_value(duties as u64));
    if let Some(kv) = store {
        publish_raft(m, kv);
    }
}

/// The Raft series, from openraft's metrics watch (no call into the Raft
/// core). openraft 0.9 does not publish the commit index; the applied
/// index trails it only by the time the state machine takes to apply.
fn publish_raft(m: &Metrics, kv: &RaftKv) {
    let st = kv.status();
    let last_log = kv.raft().metrics().borrow().last_log_index;
    m.gauge("weir_raft_term", "Current Raft term seen by this node.")
        .set(gauge_value(st.term));
    m.gauge(
        "weir_raft_is_leader",
        "1 when this node is the Raft leader of the config store.",
    )
    .set(i64::from(st.leader == Some(st.node_id)));
    m.gauge(
        "weir_raft_has_leader",
        "1 when this node knows a Raft leader.",
    )
    .set(i64::from(st.leader.is_some()));
    let state = m.gauge_vec(
        "weir_raft_state",
        "This node's Raft role: 1 for the current one (leader, follower, learner, candidate, shutdown).",
        ["state"],
    );
    for s in RAFT_STATES {
        state.set([s], i64::from(st.role == s));
    }
    m.gauge(
        "weir_raft_last_log_index",
        "Index of the last entry in this node's Raft log.",
    )
    .set(gauge_value(last_log.unwrap_or(0)));
    m.gauge(
        "weir_raft_applied_index",
        "Index of the last Raft entry applied to this node's config (committed entries only).",
    )
    .set(gauge_value(st.applied_index));
    m.gauge(
        "weir_raft_config_stale",
        "1 when this node has not heard from a leader (or, as leader, a quorum) for longer than --stale-after.",
    )
    .set(i64::from(st.config_stale));
    let members = m.gauge_vec(
        "weir_raft_members",
        "Members of the config store's Raft group, by role (voter, learner).",
        ["role"],
    );
    for role in ["voter", "learner"] {
        let n = st.members.iter().filter(|x| x.role == role).count();
        members.set([role], gauge_value(n as u64));
    }
}
