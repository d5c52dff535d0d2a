//! Active health checks, sharded over the cluster, and the merged
//! cluster-wide health view.
//!
//! Each target of an upstream with a `health_check` is probed by `probers`
//! nodes (default 2), chosen by rendezvous hashing of `(upstream, target,
//! node id)` over the live members, members in the target's region first
//! when the target has a region label. Every node computes the same choice
//! from the same membership, so an upstream sees `probers` probes per
//! interval however large the cluster is, and a membership change moves a
//! duty at the next tick.
//!
//! A prober keeps, per target, consecutive successes and failures and flips
//! its verdict at `healthy_threshold` / `unhealthy_threshold`. It gossips
//! only the targets it finds down, under the key `health` (a JSON array of
//! `[upstream, target]` pairs; absent when everything is healthy). Every
//! node merges the reports: a target is down for the cluster when at least
//! `quorum` of its current probers (default a majority) report it down.
//! The verdict is applied to the target's shared health state, which the
//! balancers already consult; passive health (a node's own failed
//! connections) still takes a target out locally at once. Transitions are
//! logged.
//!
//! Without a cluster the node is its only member: it probes every target
//! itself and its verdict is the view.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::SharedCluster;
use crate::config::{CheckKind, HealthCheckConfig};
use crate::snapshot::State;

/// Gossip key carrying a node's down reports.
pub const HEALTH_KEY: &str = "health";
/// Largest report accepted from a peer, in bytes.
const MAX_REPORT_BYTES: usize = 16 * 1024;
/// How often the checker looks for due probes and merges reports.
const TICK: Duration = Duration::from_millis(100);

/// One live member as the checker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id.
    pub id: String,
    /// Region label.
    pub region: String,
}

impl weir_cluster::owner::Candidate for Peer {
    fn candidate_id(&self) -> &str {
        &self.id
    }
}

/// The `k` probers of a target: highest rendezvous score first, members of
/// `region` (when not empty) ahead of the rest.
pub fn probers_of<'a>(
    upstream: &str,
    target: &str,
    region: &str,
    peers: &'a [Peer],
    k: usize,
) -> Vec<&'a Peer> {
    let key = weir_cluster::owner::key(&[upstream, target]);
    weir_cluster::owner::owners_preferring(&key, peers, k, |p| {
        !region.is_empty() && p.region == region
    })
}

/// Parses a peer's report; `None` if it is not a list of pairs.
pub fn parse_report(v: &str) -> Option<BTreeSet<(String, String)>> {
    if v.len() > MAX_REPORT_BYTES {
        return None;
    }
    serde_json::from_str::<Vec<(String, String)>>(v)
        .ok()
        .map(|v| v.into_iter().collect())
}

#[derive(Debug, Default, Clone)]
struct ProbeState {
    successes: u32,
    failures: u32,
    down: bool,
    next_due: Option<Instant>,
    in_flight: bool,
    probes: u64,
    last_error: Option<String>,
}

/// The merged view of one target, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    /// Upstream id.
    pub upstream: String,
    /// Target address.
    pub target: String,
    /// Region label.
    pub region: String,
    /// Its probers now.
    pub probers: Vec<String>,
    /// Members reporting it down (probers or not).
    pub down_reports: Vec<String>,
    /// The cluster verdict.
    pub cluster_down: bool,
    /// Whether this node probes it.
    pub probed_here: bool,
    /// This node's own probe verdict, if it probes it.
    pub local_down: Option<bool>,
    /// Probes this node has sent to it.
    pub local_probes: u64,
    /// The last probe error seen here.
    pub last_error: Option<String>,
}

/// The checker: probe state, own report, merged view.
#[derive(Default)]
pub struct HealthChecker {
    probes: Mutex<HashMap<(String, String), ProbeState>>,
    view: Mutex<Vec<TargetView>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HealthChecker {
    /// The merged view, for `GET /v1/cluster/health`.
    pub fn view(&self) -> Vec<TargetView> {
        lock(&self.view).clone()
    }

    /// Runs until the task is dropped.
    pub async fn run(self: Arc<Self>, state: Arc<State>, cluster: SharedCluster) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published: Option<String> = None;
        loop {
            tick.tick().await;
            self.round(&state, &cluster, &mut published).await;
        }
    }

    async fn round(
        self: &Arc<Self>,
        state: &Arc<State>,
        cluster: &SharedCluster,
        published: &mut Option<String>,
    ) {
        let snap = state.load();
        // Who is alive and what they report.
        let (self_id, peers, reports) = match cluster {
            Some(c) => {
                let m = c.membership();
                let members = m.members().await;
                let mut peers = Vec::new();
                let mut reports: HashMap<String, BTreeSet<(String, String)>> = HashMap::new();
                for mem in members
                    .iter()
                    .filter(|x| x.state == weir_cluster::membership::MemberState::Alive)
                {
                    peers.push(Peer {
                        id: mem.id.clone(),
                        region: mem.region.clone(),
                    });
                    if let Some(r) = mem.keys.get(HEALTH_KEY).and_then(|v| parse_report(v)) {
                        reports.insert(mem.id.clone(), r);
                    }
                }
                (m.node_id().to_string(), peers, reports)
            }
            None => (
                String::new(),
                vec![Peer {
                    id: String::new(),
                    region: String::new(),
                }],
                HashMap::new(),
            ),
        };
        let now = Instant::now();
        let mut view = Vec::new();
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        let mut own_down: BTreeSet<(String, String)> = BTreeSet::new();
        let mut upstream_ids: Vec<&String> = snap.upstreams.keys().collect();
        upstream_ids.sort();
        for uid in upstream_ids {
            let up = &snap.upstreams[uid];
            let Some(hc) = up.health_check.clone() else {
                // Checks removed by a reload: no verdict stays behind.
                for t in &up.targets {
                    t.health.set_cluster_down(false);
                }
                continue;
            };
            let hc = Arc::new(hc);
            for t in &up.targets {
                let key = (up.id.clone(), t.addr.clone());
                wanted.insert(key.clone());
                let probers = probers_of(&up.id, &t.addr, &t.region, &peers, hc.probers);
                let probed_here = probers.iter().any(|p| p.id == self_id);
                let (local_down, local_probes, last_error) = {
                    let mut probes = lock(&self.probes);
                    let ps = probes.entry(key.clone()).or_default();
                    if probed_here {
                        if !ps.in_flight && ps.next_due.is_none_or(|d| d <= now) {
                            ps.in_flight = true;
                            ps.next_due = Some(now + hc.interval);
                            ps.probes += 1;
                            let me = self.clone();
                            let (hc, addr, key, node) =
                                (hc.clone(), t.addr.clone(), key.clone(), self_id.clone());
                            tokio::spawn(async move {
                                let result = probe(&hc, &addr, &node).await;
                                me.record(&key, &hc, &addr, result);
                            });
                        }
                    } else {
                        // Not ours (any more): forget, so a later duty
                        // starts fresh and we stop reporting it.
                        *ps = ProbeState {
                            probes: ps.probes,
                            in_flight: ps.in_flight,
                            ..ProbeState::default()
                        };
                    }
                    if probed_here && ps.down {
                        own_down.insert(key.clone());
                    }
                    (
                        probed_here.then_some(ps.down),
                        ps.probes,
                        ps.last_error.clone(),
                    )
                };
                let mut down_reports: Vec<String> = reports
                    .iter()
                    .filter(|(_, r)| r.contains(&key))
                    .map(|(id, _)| id.clone())
                    .collect();
                down_reports.sort();
                let mut votes = probers
                    .iter()
                    .filter(|p| reports.get(&p.id).is_some_and(|r| r.contains(&key)))
                    .count();
                if cluster.is_none() && local_down == Some(true) {
                    votes = 1;
                }
                let quorum = hc
                    .quorum
                    .unwrap_or(probers.len() / 2 + 1)
                    .min(probers.len().max(1));
                let cluster_down = !probers.is_empty() && votes >= quorum;
                if t.health.set_cluster_down(cluster_down) {
                    if cluster_down {
                        tracing::warn!(upstream = %up.id, target = %t.addr, reports = ?down_reports, "health: target down for the cluster; out of rotation");
                    } else {
                        tracing::info!(upstream = %up.id, target = %t.addr, "health: target healthy again; back in rotation");
                    }
                }
                view.push(TargetView {
                    upstream: up.id.clone(),
                    target: t.addr.clone(),
                    region: t.region.clone(),
                    probers: probers.iter().map(|p| p.id.clone()).collect(),
                    down_reports,
                    cluster_down,
                    probed_here,
                    local_down,
                    local_probes,
                    last_error,
                });
            }
        }
        lock(&self.probes).retain(|k, _| wanted.contains(k));
        *lock(&self.view) = view;
        if let Some(c) = cluster {
            let value = (!own_down.is_empty())
                .then(|| serde_json::to_string(&own_down).unwrap_or_default());
            if value != *published {
                match &value {
                    Some(v) => c.membership().set_key(HEALTH_KEY, v).await,
                    None => c.membership().delete_key(HEALTH_KEY).await,
                }
                *published = value;
            }
        }
    }

    fn record(
        &self,
        key: &(String, String),
        hc: &HealthCheckConfig,
        addr: &str,
        result: Result<(), String>,
    ) {
        let mut probes = lock(&self.probes);
        let Some(ps) = probes.get_mut(key) else {
            return;
        };
        ps.in_flight = false;
        match result {
            Ok(()) => {
                ps.failures = 0;
                ps.successes = ps.successes.saturating_add(1);
                if ps.down && ps.successes >= hc.healthy_threshold {
                    ps.down = false;
                    tracing::info!(upstream = %key.0, target = %addr, "health check: target passes again");
                }
            }
            Err(e) => {
                ps.successes = 0;
                ps.failures = ps.failures.saturating_add(1);
                if !ps.down && ps.failures >= hc.unhealthy_threshold {
                    ps.down = true;
                    tracing::warn!(upstream = %key.0, target = %addr, error = %e, "health check: target fails");
                }
                ps.last_error = Some(e);
            }
        }
    }
}

/// One probe.
async fn probe(hc: &HealthCheckConfig, addr: &str, node: &str) -> Result<(), String> {
    match tokio::time::timeout(hc.timeout, probe_inner(hc, addr, node)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", hc.timeout)),
    }
}

async fn probe_inner(hc: &HealthCheckConfig, addr: &str, node: &str) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if hc.kind == CheckKind::Tcp {
        return Ok(());
    }
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = if hc.host.is_empty() { addr } else { &hc.host };
    let req = http::Request::get(hc.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "weir-health-check")
        .header(
            "x-weir-prober",
            if node.is_empty() { "local" } else { node },
        )
        .header(http::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    drop(resp);
    conn.abort();
    if hc.expected_statuses.contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(spec: &[(&str, &str)]) -> Vec<Peer> {
        spec.iter()
            .map(|(id, r)| Peer {
                id: id.to_string(),
                region: r.to_string(),
            })
            .collect()
    }

    #[test]
    fn probers_are_k_distinct_and_prefer_the_region() {
        let ps = peers(&[
            ("a", "eu"),
            ("b", "us"),
            ("c", "eu"),
            ("d", "ap"),
            ("e", "us"),
        ]);
        for t in 0..50 {
            let target = format!("10.0.0.{t}:80");
            let chosen = probers_of("u", &target, "us", &ps, 2);
            let mut ids: Vec<&str> = chosen.iter().map(|p| p.id.as_str()).collect();
            ids.sort();
            assert_eq!(ids, ["b", "e"], "both us members, whatever the hash");
            let three = probers_of("u", &target, "us", &ps, 3);
            assert_eq!(three.len(), 3);
            assert_eq!(&three[..2], &chosen[..], "a larger k extends the choice");
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_duties() {
        let all = peers(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        let without_c: Vec<Peer> = all.iter().filter(|p| p.id != "c").cloned().collect();
        let mut load = HashMap::new();
        for t in 0..200 {
            let target = format!("t{t}:80");
            let before: BTreeSet<String> = probers_of("u", &target, "", &all, 2)
                .iter()
                .map(|p| p.id.clone())
                .collect();
            let after: BTreeSet<String> = probers_of("u", &target, "", &without_c, 2)
                .iter()
                .map(|p| p.id.clone())
                .collect();
            for id in &before {
                *load.entry(id.clone()).or_insert(0) += 1;
                if id != "c" {
                    assert!(after.contains(id), "a surviving prober keeps its duty");
                }
            }
        }
        // Spread: each of 5 members gets about 2/5 of 200 targets.
        for (id, n) in load {
            assert!((40..=120).contains(&n), "{id} probes {n} of 200");
        }
    }

    #[test]
    fn reports_parse_strictly() {
        let r = parse_report(r#"[["u","10.0.0.1:80"]]"#).expect("valid");
        assert!(r.contains(&("u".to_string(), "10.0.0.1:80".to_string())));
        assert!(parse_report("nonsense").is_none());
        assert!(parse_report(r#"[["u"]]"#).is_none());
        assert!(parse_report(&"x".repeat(MAX_REPORT_BYTES + 1)).is_none());
    }
}
