//! Forming a new cluster when every node has the same seeds
//! (`bootstrap_expect`), the way Consul and Nomad do it, plus a vote so
//! that exactly one node initialises.
//!
//! A node with an empty store and `bootstrap_expect: N` publishes in gossip
//! that its store is empty, its `N`, and the node it *votes* to bootstrap
//! the cluster: the lowest Raft id among the live nodes with an empty store
//! and the same `N` (itself included); once it sees a node that is in a
//! cluster its vote no longer moves. Every round it decides ([`decide`]):
//!
//! 1. a live member that is already in a cluster (or does not say) → join
//!    it: wait for its leader to add this node (never bootstrap);
//! 2. a live member with another `N` → refuse to bootstrap and say so;
//! 3. fewer than `N` nodes (itself included) → wait;
//! 4. it votes for another node → wait for that one;
//! 5. fewer than `N` of them vote for it → wait;
//! 6. otherwise initialise the cluster with voters chosen among its
//!    supporters (spread over regions, at most `voters`); the others are
//!    added as learners by the leader's gossip rule.
//!
//! With exactly `N` such nodes, only the one with the lowest id can ever
//! gather `N` votes (every other node has a lower one in the set, which
//! votes for itself or lower), so one cluster forms whatever the order and
//! however late gossip is. More than `N` empty nodes with the same `N` at
//! once can race (as with Consul): start exactly `N`, and further nodes
//! once the cluster exists — they see it and join.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::Duration;

use openraft::BasicNode;
use weir_storage::NodeId;

use super::policy::{Candidate, choose_voters};
use super::{Inner, Peer};

/// What a node with an empty store and `bootstrap_expect` does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep waiting, for this reason.
    Wait(String),
    /// A cluster exists (this member is in it): wait to be added.
    Join(NodeId),
    /// Nodes disagree on `bootstrap_expect`: never bootstrap while they do.
    Conflict(String),
    /// Initialise the cluster with these voters.
    Initialize(BTreeSet<NodeId>),
}

/// The live nodes with an empty store and the same `expect`, this one
/// included.
fn group(me: NodeId, expect: usize, peers: &[Peer]) -> BTreeSet<NodeId> {
    peers
        .iter()
        .filter(|p| p.in_cluster == Some(false) && p.expect == Some(expect))
        .map(|p| p.id)
        .chain([me])
        .collect()
}

/// This node's vote: the lowest id of the group it sees (itself
/// included). Once any live member is in a cluster the vote is frozen
/// (`held`, possibly none): a node that saw a cluster form must not lend
/// its vote to a second one.
pub fn vote(me: NodeId, expect: usize, held: Option<NodeId>, peers: &[Peer]) -> Option<NodeId> {
    if peers.iter().any(|p| p.in_cluster != Some(false)) {
        return held;
    }
    group(me, expect, peers).first().copied()
}

/// The decision of node `me` (in `region`, voting `my_vote`) that expects
/// `expect` nodes and wants at most `voters` voters, given the live peers.
pub fn decide(
    me: NodeId,
    region: &str,
    expect: usize,
    voters: usize,
    my_vote: Option<NodeId>,
    peers: &[Peer],
) -> Decision {
    if let Some(p) = peers.iter().find(|p| p.in_cluster != Some(false)) {
        return Decision::Join(p.id);
    }
    if let Some(p) = peers.iter().find(|p| p.expect.is_some_and(|e| e != expect)) {
        return Decision::Conflict(format!(
            "node {} expects {} nodes, this one {expect}: give every node the same bootstrap_expect",
            p.id,
            p.expect.unwrap_or_default()
        ));
    }
    let g = group(me, expect, peers);
    if g.len() < expect {
        return Decision::Wait(format!("{} of {expect} nodes seen", g.len()));
    }
    match my_vote {
        Some(v) if v == me => {}
        Some(v) => return Decision::Wait(format!("node {v} bootstraps the cluster")),
        None => return Decision::Wait("no vote yet".into()),
    }
    let supporters: Vec<&Peer> = peers
        .iter()
        .filter(|p| g.contains(&p.id) && p.boot_vote == Some(me))
        .collect();
    if supporters.len() + 1 < expect {
        return Decision::Wait(format!(
            "{} of {expect} nodes agree that this one bootstraps",
            supporters.len() + 1
        ));
    }
    let candidates: Vec<Candidate> = supporters
        .iter()
        .map(|p| Candidate {
            id: p.id,
            region: p.region.clone(),
            voter: false,
            usable: true,
        })
        .chain([Candidate {
            id: me,
            region: region.to_string(),
            voter: true,
            usable: true,
        }])
        .collect();
    Decision::Initialize(choose_voters(me, &candidates, voters.min(expect)))
}

/// Runs until this node's store is part of a cluster: decides every
/// round, publishes its vote (through [`super::RaftKv::boot_vote`]) and,
/// when chosen, initialises the cluster.
pub(crate) async fn run(inner: Weak<Inner>, expect: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut said = String::new();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if super::in_cluster(&inner) {
            return;
        }
        let peers: Vec<Peer> = inner.discovered().into_values().collect();
        let held = *inner.boot_vote.lock().unwrap_or_else(|e| e.into_inner());
        let my_vote = vote(inner.id, expect, held, &peers);
        *inner.boot_vote.lock().unwrap_or_else(|e| e.into_inner()) = my_vote;
        let d = decide(
            inner.id,
            &inner.settings.region,
            expect,
            inner.settings.voters,
            my_vote,
            &peers,
        );
        let text = format!("{d:?}");
        let changed = text != said;
        said = text;
        let waiting = match &d {
            Decision::Wait(why) => Some(format!("waiting: {why}")),
            Decision::Join(member) => Some(format!(
                "node {member} is in a cluster: waiting for its leader to add this node"
            )),
            Decision::Conflict(why) => Some(format!("not bootstrapping: {why}")),
            Decision::Initialize(_) => Some("initialising the cluster".into()),
        };
        *inner.boot_waiting.lock().unwrap_or_else(|e| e.into_inner()) = waiting;
        match d {
            Decision::Wait(why) if changed => {
                tracing::info!(raft_id = inner.id, expect, reason = %why, "waiting to bootstrap the config cluster");
            }
            Decision::Join(member) if changed => {
                tracing::info!(
                    raft_id = inner.id,
                    member,
                    "a cluster already exists; waiting for its leader to add this node"
                );
            }
            Decision::Conflict(why) if changed => {
                tracing::error!(raft_id = inner.id, reason = %why, "not bootstrapping the config cluster");
            }
            Decision::Initialize(voters) => {
                let addrs: BTreeMap<NodeId, String> =
                    peers.iter().map(|p| (p.id, p.addr.clone())).collect();
                let members: BTreeMap<NodeId, BasicNode> = voters
                    .iter()
                    .map(|&id| {
                        let addr = if id == inner.id {
                            inner.settings.advertise.clone()
                        } else {
                            addrs.get(&id).cloned().unwrap_or_default()
                        };
                        (id, BasicNode { addr })
                    })
                    .collect();
                tracing::info!(raft_id = inner.id, voters = ?voters, "bootstrapping the config cluster: {expect} nodes agree");
                match inner.raft.initialize(members).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "bootstrapping the config cluster failed; retrying");
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(id, region, in_cluster, expect, vote)`.
    type Row = (
        NodeId,
        &'static str,
        Option<bool>,
        Option<usize>,
        Option<NodeId>,
    );

    fn peers(rows: &[Row]) -> Vec<Peer> {
        rows.iter()
            .map(|&(id, region, in_cluster, expect, boot_vote)| Peer {
                id,
                addr: format!("h:{id}"),
                region: region.into(),
                in_cluster,
                expect,
                boot_vote,
            })
            .collect()
    }

    const E: Option<bool> = Some(false);
    const M: Option<bool> = Some(true);

    fn init(ids: &[NodeId]) -> Decision {
        Decision::Initialize(ids.iter().copied().collect())
    }

    #[test]
    fn votes_go_to_the_lowest_id() {
        // (case, me, held vote, peers, vote)
        type Case = (
            &'static str,
            NodeId,
            Option<NodeId>,
            Vec<Peer>,
            Option<NodeId>,
        );
        let cases: Vec<Case> = vec![
            ("alone: itself", 5, None, peers(&[]), Some(5)),
            (
                "the lowest empty node with the same expect",
                5,
                None,
                peers(&[(3, "", E, Some(3), None), (1, "", E, Some(5), None)]),
                Some(3),
            ),
            (
                "a vote moves to a lower id seen later",
                5,
                Some(4),
                peers(&[(4, "", E, Some(3), None), (3, "", E, Some(3), None)]),
                Some(3),
            ),
            (
                "a vote moves when its node is gone",
                5,
                Some(4),
                peers(&[(3, "", E, Some(3), None)]),
                Some(3),
            ),
            (
                "a cluster exists: the vote is frozen",
                5,
                Some(4),
                peers(&[(3, "", E, Some(3), None), (4, "", M, Some(3), None)]),
                Some(4),
            ),
            (
                "a cluster exists and no vote was held: none",
                5,
                None,
                peers(&[(3, "", E, Some(3), None), (4, "", M, Some(3), None)]),
                None,
            ),
        ];
        for (case, me, held, p, want) in cases {
            assert_eq!(vote(me, 3, held, &p), want, "{case}");
        }
    }

    #[test]
    fn bootstrap_rules_table() {
        // (case, me, my vote, peers, expect, voters wanted, decision)
        type Case = (
            &'static str,
            NodeId,
            Option<NodeId>,
            Vec<Peer>,
            usize,
            usize,
            Decision,
        );
        let cases: Vec<Case> =
            vec![
            (
                "too few nodes seen",
                1,
                Some(1),
                peers(&[(2, "us", E, Some(3), Some(1))]),
                3,
                3,
                Decision::Wait("2 of 3 nodes seen".into()),
            ),
            (
                "enough nodes, all agree: the lowest id initialises with all three",
                1,
                Some(1),
                peers(&[(2, "us", E, Some(3), Some(1)), (3, "ap", E, Some(3), Some(1))]),
                3,
                3,
                init(&[1, 2, 3]),
            ),
            (
                "enough nodes but one still votes for another: wait",
                1,
                Some(1),
                peers(&[(2, "us", E, Some(3), Some(1)), (3, "ap", E, Some(3), Some(2))]),
                3,
                3,
                Decision::Wait("2 of 3 nodes agree that this one bootstraps".into()),
            ),
            (
                "a node that is not the lowest waits for it",
                2,
                Some(1),
                peers(&[(1, "eu", E, Some(3), Some(1)), (3, "ap", E, Some(3), Some(1))]),
                3,
                3,
                Decision::Wait("node 1 bootstraps the cluster".into()),
            ),
            (
                "a member already in a cluster: join it, never bootstrap",
                1,
                Some(1),
                peers(&[
                    (2, "us", E, Some(3), Some(1)),
                    (3, "ap", E, Some(3), Some(1)),
                    (9, "eu", M, None, None),
                ]),
                3,
                3,
                Decision::Join(9),
            ),
            (
                "a member that does not say whether it is in a cluster counts as one",
                1,
                Some(1),
                peers(&[
                    (2, "us", E, Some(3), Some(1)),
                    (3, "ap", E, Some(3), Some(1)),
                    (9, "eu", None, None, None),
                ]),
                3,
                3,
                Decision::Join(9),
            ),
            (
                "another expect: refuse",
                1,
                Some(1),
                peers(&[(2, "us", E, Some(3), Some(1)), (3, "ap", E, Some(5), Some(1))]),
                3,
                3,
                Decision::Conflict(
                    "node 3 expects 5 nodes, this one 3: give every node the same bootstrap_expect"
                        .into(),
                ),
            ),
            (
                "empty nodes without expect are not counted (they are added later)",
                1,
                Some(1),
                peers(&[(2, "us", E, Some(3), Some(1)), (3, "ap", E, None, None)]),
                3,
                3,
                Decision::Wait("2 of 3 nodes seen".into()),
            ),
            (
                "more supporters than voters: voters spread over regions",
                1,
                Some(1),
                peers(&[
                    (2, "eu", E, Some(5), Some(1)),
                    (3, "us", E, Some(5), Some(1)),
                    (4, "us", E, Some(5), Some(1)),
                    (5, "ap", E, Some(5), Some(1)),
                ]),
                5,
                3,
                init(&[1, 3, 5]),
            ),
            ("expect 1: alone", 7, Some(7), peers(&[]), 1, 3, init(&[7])),
        ];
        for (case, me, my_vote, p, expect, voters, want) in cases {
            assert_eq!(
                decide(me, "eu", expect, voters, my_vote, &p),
                want,
                "{case}"
            );
        }
    }

    /// Whatever order the nodes learn about each other in, and however
    /// stale what they know is, exactly `N` nodes with empty stores form
    /// exactly one cluster: every node runs the rules over its own view,
    /// each view of another node is refreshed at random moments (gossip
    /// delivers newer versions, never older ones), and once gossip has
    /// settled, one node has initialised — never two.
    #[test]
    fn exactly_one_bootstrapper() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..3000 {
            let expect = rng.usize(1..=5);
            let voters = rng.usize(1..=expect);
            let mut ids = BTreeSet::new();
            while ids.len() < expect {
                ids.insert(rng.u64(1..1000));
            }
            let ids: Vec<NodeId> = ids.into_iter().collect();
            // Each node's own state: (in a cluster, vote).
            let mut state: BTreeMap<NodeId, (bool, Option<NodeId>)> =
                ids.iter().map(|&i| (i, (false, None))).collect();
            // What `a` knows of `b`, as of its last refresh.
            let mut view: BTreeMap<(NodeId, NodeId), (bool, Option<NodeId>)> = BTreeMap::new();
            let mut initialised = Vec::new();
            let mut run =
                |me: NodeId,
                 state: &mut BTreeMap<NodeId, (bool, Option<NodeId>)>,
                 view: &BTreeMap<(NodeId, NodeId), (bool, Option<NodeId>)>| {
                    let (joined, held) = state[&me];
                    if joined {
                        return;
                    }
                    let peers: Vec<Peer> = view
                        .range((me, 0)..=(me, NodeId::MAX))
                        .map(|(&(_, id), &(in_cluster, boot_vote))| Peer {
                            id,
                            in_cluster: Some(in_cluster),
                            expect: Some(expect),
                            boot_vote,
                            ..Peer::default()
                        })
                        .collect();
                    let v = vote(me, expect, held, &peers);
                    state.insert(me, (false, v));
                    if let Decision::Initialize(chosen) = decide(me, "", expect, voters, v, &peers)
                    {
                        initialised.push(me);
                        // It and its voters are in its cluster from now on.
                        for id in chosen.into_iter().chain([me]) {
                            state.entry(id).and_modify(|s| s.0 = true);
                        }
                    }
                };
            for _step in 0..rng.usize(0..300) {
                let a = ids[rng.usize(..ids.len())];
                let b = ids[rng.usize(..ids.len())];
                if a != b {
                    view.insert((a, b), state[&b]);
                }
                run(ids[rng.usize(..ids.len())], &mut state, &view);
            }
            // Gossip settles: everyone learns everything, a few rounds.
            for _ in 0..3 {
                for &a in &ids {
                    for &b in &ids {
                        if a != b {
                            view.insert((a, b), state[&b]);
                        }
                    }
                }
                for &me in &ids {
                    run(me, &mut state, &view);
                }
            }
            assert_eq!(
                initialised.len(),
                1,
                "round {round}: {initialised:?} initialised (expect {expect})"
            );
            assert_eq!(initialised[0], ids[0], "round {round}: the lowest id");
        }
    }
}
