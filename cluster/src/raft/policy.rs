//! The leader's membership policy, run by one task so that only one
//! membership change is ever in flight (openraft refuses a second one while
//! a joint configuration is pending, and we never ask):
//!
//! 1. **Learners from discovery.** A live peer that the node layer reports
//!    (found through gossip, with its Raft id and address) and that is not a
//!    member yet is added as a learner.
//! 2. **Addresses follow the nodes.** A member whose Raft address differs
//!    from the one reported for it — by itself (this leader), through
//!    `/raft/join`, or in gossip, in that order — gets the new address
//!    ([`address_change`]), as a `SetNodes` change that keeps its role. A
//!    node restarted with its data dir on a new port is reachable again,
//!    voter or learner. Every RPC names its target id and a node refuses
//!    RPCs for another id, so an address that now belongs to someone else
//!    is merely unreachable.
//! 3. **Voters spread over regions.** The leader keeps
//!    `min(voters, usable nodes)` voters, chosen by [`choose_voters`]: one
//!    per region before a second in any region, current voters before
//!    learners so that a healthy configuration is left alone.
//! 4. **Replacing silent voters.** A voter that has not answered the
//!    leader for `voter_down_timeout` is no longer usable, so a live,
//!    caught-up learner takes its place (the old voter stays a learner and
//!    can catch up). Without a learner to promote, it stays a voter:
//!    removing it would not lower the quorum the live voters need.
//! 5. **Removing dead learners.** A learner that has not answered the
//!    leader for `remove_dead_learner_after` and that gossip does not list
//!    as alive is removed ([`dead_learner`]). Voters never are: a dead
//!    voter is first replaced by rule 4, and only then, as a learner,
//!    falls under this one. A removed node that comes back is added again
//!    by rule 1 (gossip) or by its own `join`.
//!
//! Silence is measured from the later of the last answer and the moment
//! this leader first saw the node as a member, so a new leader (or a node
//! just added again) gives every member the full timeout.
//!
//! Each tick makes at most one change, and each voter change moves one
//! voter ([`next_voters`]), so the cluster walks to the desired set one
//! joint configuration at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, ServerState};
use weir_storage::NodeId;

use super::{Inner, Peer};

/// How far behind (in log entries) a learner may be and still be promoted.
const CAUGHT_UP: u64 = 100;

/// A learner that answered this recently counts as live.
const LIVE: Duration = Duration::from_secs(2);

/// A node the voter policy may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Raft node id.
    pub id: NodeId,
    /// Region label (empty: unknown; all unknown nodes count as one region).
    pub region: String,
    /// A voter now.
    pub voter: bool,
    /// May be a voter: a voter that answers, or a learner that is live and
    /// caught up.
    pub usable: bool,
}

/// The voters the leader wants: `min(target, usable)` nodes, the leader
/// first, then one per region before a second in any region; within a
/// round current voters come before learners, then lower ids.
pub fn choose_voters(leader: NodeId, candidates: &[Candidate], target: usize) -> BTreeSet<NodeId> {
    let mut order: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.usable || c.id == leader)
        .collect();
    order.sort_by_key(|c| (c.id != leader, !c.voter, c.id));
    let want = target.max(1).min(order.len());
    let mut chosen = BTreeSet::new();
    let mut per_region: BTreeMap<&str, usize> = BTreeMap::new();
    let mut round = 0;
    while chosen.len() < want {
        for c in &order {
            if chosen.len() == want {
                break;
            }
            let n = per_region.entry(c.region.as_str()).or_default();
            if *n == round && !chosen.contains(&c.id) {
                *n += 1;
                chosen.insert(c.id);
            }
        }
        round += 1;
    }
    chosen
}

/// One step from `current` towards `desired`: swap one voter (an unusable
/// one first), add one while below `target`, or drop one while above it.
/// `None` when there is nothing to do.
pub fn next_voters(
    current: &BTreeSet<NodeId>,
    desired: &BTreeSet<NodeId>,
    candidates: &[Candidate],
    target: usize,
) -> Option<BTreeSet<NodeId>> {
    let usable = |id: &NodeId| candidates.iter().any(|c| c.id == *id && c.usable);
    let add = desired.difference(current).next().copied();
    let mut removable: Vec<NodeId> = current.difference(desired).copied().collect();
    removable.sort_by_key(|id| (usable(id), *id));
    let remove = removable.first().copied();
    let mut next = current.clone();
    match (add, remove) {
        (Some(a), Some(r)) => {
            next.remove(&r);
            next.insert(a);
        }
        (Some(a), None) if current.len() < target.max(1) => {
            next.insert(a);
        }
        (None, Some(r)) if current.len() > target.max(1) => {
            next.remove(&r);
        }
        _ => return None,
    }
    Some(next)
}

/// The one address change to make now, if any: `(node, new address)`.
/// Reports are taken in order of trust — this node's own address (`me`),
/// then what members said through `/raft/join`, then gossip — and an
/// address another member already has is never given to a second one.
pub fn address_change(
    members: &BTreeMap<NodeId, String>,
    me: (NodeId, &str),
    joined: &BTreeMap<NodeId, String>,
    discovered: &BTreeMap<NodeId, Peer>,
) -> Option<(NodeId, String)> {
    let reported = |id: NodeId| -> Option<&str> {
        if id == me.0 {
            return Some(me.1);
        }
        joined
            .get(&id)
            .map(String::as_str)
            .or_else(|| discovered.get(&id).map(|p| p.addr.as_str()))
    };
    members.iter().find_map(|(&id, addr)| {
        let new = reported(id)?;
        if new == addr || new.is_empty() {
            return None;
        }
        if let Some((&other, _)) = members.iter().find(|(o, a)| **o != id && *a == new) {
            tracing::warn!(raft_id = id, addr = %new, other, "not moving a member to an address another member has");
            return None;
        }
        Some((id, new.to_string()))
    })
}

/// What the leader knows of a learner when deciding whether it is dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnerSeen {
    /// Raft node id.
    pub id: NodeId,
    /// A voter now (never removed by this rule).
    pub voter: bool,
    /// Time since it last answered this leader (or since this leader first
    /// saw it as a member, if later).
    pub silent_for: Duration,
    /// Gossip lists it as alive.
    pub gossip_alive: bool,
}

/// The learner to remove now, if any: silent for at least `after` and not
/// alive in gossip; the longest silent first.
pub fn dead_learner(members: &[LearnerSeen], after: Duration) -> Option<NodeId> {
    members
        .iter()
        .filter(|m| !m.voter && !m.gossip_alive && m.silent_for >= after)
        .max_by_key(|m| (m.silent_for, std::cmp::Reverse(m.id)))
        .map(|m| m.id)
}

/// The policy task's memory: since when this leader (in this term) has
/// known each member.
#[derive(Default)]
struct Known {
    term: u64,
    since: BTreeMap<NodeId, Instant>,
}

impl Known {
    /// Brings the map up to date with the current term and members.
    fn update(&mut self, term: u64, members: impl Iterator<Item = NodeId>) {
        if term != self.term {
            self.term = term;
            self.since.clear();
        }
        let now = Instant::now();
        let members: BTreeSet<NodeId> = members.collect();
        self.since.retain(|id, _| members.contains(id));
        for id in members {
            self.since.entry(id).or_insert(now);
        }
    }

    /// How long `id` has been silent towards this leader.
    fn silent_for(&self, id: NodeId, last_seen: Option<Instant>) -> Duration {
        let known = self.since.get(&id).copied().unwrap_or_else(Instant::now);
        last_seen.map_or(known, |t| t.max(known)).elapsed()
    }
}

pub(crate) async fn run(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut known = Known::default();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = step(&inner, &mut known).await {
            tracing::warn!(error = %e, "membership policy: change failed");
        }
    }
}

async fn step(inner: &Inner, known: &mut Known) -> Result<(), String> {
    let m = inner.raft.metrics().borrow().clone();
    if m.state != ServerState::Leader {
        known.since.clear();
        return Ok(());
    }
    let mem = m.membership_config.membership();
    if mem.get_joint_config().len() > 1 {
        return Ok(());
    }
    known.update(m.current_term, mem.nodes().map(|(id, _)| *id));
    let discovered = inner.discovered();

    // 1. A discovered node that is not a member becomes a learner.
    if let Some(p) = discovered.values().find(|p| mem.get_node(&p.id).is_none()) {
        tracing::info!(raft_id = p.id, addr = %p.addr, region = %p.region, "adding a node found through gossip as a learner");
        return inner
            .raft
            .add_learner(
                p.id,
                BasicNode {
                    addr: p.addr.clone(),
                },
                false,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }

    // 2. A member on a new address gets it.
    let addrs: BTreeMap<NodeId, String> =
        mem.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    let joined = inner.reported_addrs();
    // Reports that are now true are done.
    inner
        .reported_addrs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|id, a| addrs.get(id).is_some_and(|cur| cur != a));
    let me = (inner.id, inner.settings.advertise.as_str());
    if let Some((id, addr)) = address_change(&addrs, me, &joined, &discovered) {
        tracing::info!(raft_id = id, from = addrs.get(&id).map(String::as_str).unwrap_or_default(), to = %addr, "a member moved: updating its raft address");
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, BasicNode { addr })]));
        return inner
            .raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }

    // 3. and 4. Voters.
    let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let caught_up = |id: &NodeId| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .is_some_and(|l| l.index + CAUGHT_UP >= last)
    };
    let timeout = inner.settings.voter_down_timeout;
    let region_of = |id: NodeId| {
        if id == inner.id {
            inner.settings.region.clone()
        } else {
            discovered
                .get(&id)
                .map(|p| p.region.clone())
                .unwrap_or_default()
        }
    };
    let candidates: Vec<Candidate> = mem
        .nodes()
        .map(|(id, _)| {
            let id = *id;
            let voter = voters.contains(&id);
            let usable = if id == inner.id {
                true
            } else if voter {
                known.silent_for(id, inner.liveness.last_seen(id)) <= timeout
            } else {
                inner
                    .liveness
                    .last_seen(id)
                    .is_some_and(|t| t.elapsed() < LIVE)
                    && caught_up(&id)
            };
            Candidate {
                id,
                region: region_of(id),
                voter,
                usable,
            }
        })
        .collect();
    let target = inner.settings.voters.max(1);
    let desired = choose_voters(inner.id, &candidates, target);
    if let Some(next) = next_voters(&voters, &desired, &candidates, target) {
        tracing::info!(from = ?voters, to = ?next, "changing the voters");
        return inner
            .raft
            .change_membership(next, true)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }

    // 5. Learners dead for long are removed.
    let seen: Vec<LearnerSeen> = mem
        .nodes()
        .filter(|(id, _)| **id != inner.id)
        .map(|(id, _)| LearnerSeen {
            id: *id,
            voter: voters.contains(id),
            silent_for: known.silent_for(*id, inner.liveness.last_seen(*id)),
            gossip_alive: discovered.contains_key(id),
        })
        .collect();
    let Some(dead) = dead_learner(&seen, inner.settings.remove_dead_learner_after) else {
        return Ok(());
    };
    let silent = seen
        .iter()
        .find(|s| s.id == dead)
        .map(|s| s.silent_for)
        .unwrap_or_default();
    tracing::info!(
        raft_id = dead,
        silent_ms = silent.as_millis() as u64,
        "removing a learner that has been dead too long"
    );
    inner
        .raft
        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([dead])), false)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(id, region, voter, usable)`.
    fn cands(rows: &[(NodeId, &str, bool, bool)]) -> Vec<Candidate> {
        rows.iter()
            .map(|&(id, region, voter, usable)| Candidate {
                id,
                region: region.into(),
                voter,
                usable,
            })
            .collect()
    }

    /// (case, leader, candidates, target, desired voters)
    type DesiredCase = (
        &'static str,
        NodeId,
        Vec<Candidate>,
        usize,
        BTreeSet<NodeId>,
    );
    /// (case, current voters, candidates, target, next voters)
    type StepCase = (
        &'static str,
        Vec<NodeId>,
        Vec<Candidate>,
        usize,
        Option<Vec<NodeId>>,
    );

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn desired_voters_table() {
        // (case, leader, candidates, target, desired)
        let cases: Vec<DesiredCase> = vec![
            (
                "alone: one voter",
                1,
                cands(&[(1, "eu", true, true)]),
                3,
                set(&[1]),
            ),
            (
                "three regions: one each",
                1,
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", false, true),
                    (3, "ap", false, true),
                ]),
                3,
                set(&[1, 2, 3]),
            ),
            (
                "a second voter in a region only after every region has one",
                1,
                cands(&[
                    (1, "eu", true, true),
                    (2, "eu", false, true),
                    (3, "eu", false, true),
                    (4, "us", false, true),
                    (5, "ap", false, true),
                ]),
                3,
                set(&[1, 4, 5]),
            ),
            (
                "two regions, three voters: two and one",
                1,
                cands(&[
                    (1, "eu", true, true),
                    (2, "eu", false, true),
                    (3, "us", false, true),
                    (4, "us", false, true),
                ]),
                3,
                set(&[1, 2, 3]),
            ),
            (
                "current voters win ties over learners",
                1,
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", false, true),
                    (3, "us", true, true),
                    (4, "ap", true, true),
                ]),
                3,
                set(&[1, 3, 4]),
            ),
            (
                "a silent voter is replaced, preferably from its region's absence",
                1,
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", true, true),
                    (3, "ap", true, false),
                    (4, "eu", false, true),
                    (5, "ap", false, true),
                ]),
                3,
                set(&[1, 2, 5]),
            ),
            (
                "a silent voter with no learner to take over: two usable voters",
                1,
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", true, true),
                    (3, "ap", true, false),
                ]),
                3,
                set(&[1, 2]),
            ),
            (
                "a lagging learner is not chosen",
                1,
                cands(&[(1, "eu", true, true), (2, "us", false, false)]),
                3,
                set(&[1]),
            ),
            (
                "five voters over three regions",
                7,
                cands(&[
                    (1, "eu", false, true),
                    (2, "eu", false, true),
                    (3, "us", false, true),
                    (4, "us", false, true),
                    (5, "ap", false, true),
                    (6, "ap", false, true),
                    (7, "eu", true, true),
                ]),
                5,
                set(&[7, 3, 5, 1, 4]),
            ),
            (
                "no regions at all: lowest ids after the leader",
                9,
                cands(&[
                    (9, "", true, true),
                    (4, "", false, true),
                    (2, "", false, true),
                    (7, "", false, true),
                ]),
                3,
                set(&[9, 2, 4]),
            ),
        ];
        for (case, leader, c, target, want) in cases {
            assert_eq!(choose_voters(leader, &c, target), want, "{case}");
        }
    }

    #[test]
    fn one_voter_moves_per_step() {
        // (case, current, candidates, target, next)
        let cases: Vec<StepCase> = vec![
            (
                "healthy and spread: nothing to do",
                vec![1, 2, 3],
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", true, true),
                    (3, "ap", true, true),
                    (4, "eu", false, true),
                ]),
                3,
                None,
            ),
            (
                "grow by one",
                vec![1],
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", false, true),
                    (3, "ap", false, true),
                ]),
                3,
                Some(vec![1, 2]),
            ),
            (
                "swap a silent voter for a live learner",
                vec![1, 2, 3],
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", true, true),
                    (3, "ap", true, false),
                    (4, "ap", false, true),
                ]),
                3,
                Some(vec![1, 2, 4]),
            ),
            (
                "keep a silent voter when nobody can replace it",
                vec![1, 2, 3],
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", true, true),
                    (3, "ap", true, false),
                ]),
                3,
                None,
            ),
            (
                "move a voter out of a doubled region into a new one",
                vec![1, 2, 3],
                cands(&[
                    (1, "eu", true, true),
                    (2, "eu", true, true),
                    (3, "us", true, true),
                    (4, "ap", false, true),
                ]),
                3,
                Some(vec![1, 3, 4]),
            ),
            (
                "the silent voter goes first",
                vec![1, 2, 3, 4, 5],
                cands(&[
                    (1, "eu", true, true),
                    (2, "eu", true, true),
                    (3, "us", true, true),
                    (4, "us", true, false),
                    (5, "ap", true, true),
                    (6, "ap", false, true),
                ]),
                5,
                Some(vec![1, 2, 3, 5, 6]),
            ),
            (
                "shrink by one above the target",
                vec![1, 2, 3],
                cands(&[
                    (1, "eu", true, true),
                    (2, "us", true, true),
                    (3, "ap", true, true),
                ]),
                1,
                Some(vec![1, 3]),
            ),
        ];
        for (case, current, c, target, want) in cases {
            let current = set(&current);
            let desired = choose_voters(1, &c, target);
            let got = next_voters(&current, &desired, &c, target);
            assert_eq!(got, want.map(|w| set(&w)), "{case}");
        }
    }

    #[test]
    fn addresses_follow_the_nodes() {
        fn m(rows: &[(NodeId, &str)]) -> BTreeMap<NodeId, String> {
            rows.iter().map(|&(id, a)| (id, a.to_string())).collect()
        }
        fn g(rows: &[(NodeId, &str)]) -> BTreeMap<NodeId, Peer> {
            rows.iter()
                .map(|&(id, a)| {
                    (
                        id,
                        Peer {
                            id,
                            addr: a.into(),
                            ..Peer::default()
                        },
                    )
                })
                .collect()
        }
        type Case = (
            &'static str,
            BTreeMap<NodeId, String>,
            (NodeId, &'static str),
            BTreeMap<NodeId, String>,
            BTreeMap<NodeId, Peer>,
            Option<(NodeId, &'static str)>,
        );
        let members = m(&[(1, "a:1"), (2, "b:1"), (3, "c:1")]);
        // (case, members, me, joined, gossip, change)
        let cases: Vec<Case> = vec![
            (
                "everything where it is",
                members.clone(),
                (1, "a:1"),
                m(&[]),
                g(&[(2, "b:1"), (3, "c:1")]),
                None,
            ),
            (
                "gossip shows a member on a new port",
                members.clone(),
                (1, "a:1"),
                m(&[]),
                g(&[(2, "b:1"), (3, "c:2")]),
                Some((3, "c:2")),
            ),
            (
                "a join report wins over gossip",
                members.clone(),
                (1, "a:1"),
                m(&[(3, "c:3")]),
                g(&[(3, "c:2")]),
                Some((3, "c:3")),
            ),
            (
                "the leader's own address comes from itself",
                members.clone(),
                (1, "a:9"),
                m(&[(1, "a:7")]),
                g(&[(1, "a:8")]),
                Some((1, "a:9")),
            ),
            (
                "an address another member has is not taken",
                members.clone(),
                (1, "a:1"),
                m(&[]),
                g(&[(3, "b:1")]),
                None,
            ),
            (
                "non-members are not this rule's business",
                members.clone(),
                (1, "a:1"),
                m(&[(7, "x:1")]),
                g(&[(8, "y:1")]),
                None,
            ),
            (
                "one change at a time, lowest id first",
                members.clone(),
                (1, "a:1"),
                m(&[]),
                g(&[(2, "b:2"), (3, "c:2")]),
                Some((2, "b:2")),
            ),
        ];
        for (case, members, me, joined, gossip, want) in cases {
            let got = address_change(&members, me, &joined, &gossip);
            assert_eq!(got, want.map(|(id, a)| (id, a.to_string())), "{case}");
        }
    }

    #[test]
    fn dead_learners_table() {
        const S: Duration = Duration::from_secs(1);
        /// `(id, voter, silent seconds, alive in gossip)`.
        fn rows(r: &[(NodeId, bool, u64, bool)]) -> Vec<LearnerSeen> {
            r.iter()
                .map(|&(id, voter, silent, gossip_alive)| LearnerSeen {
                    id,
                    voter,
                    silent_for: S * silent as u32,
                    gossip_alive,
                })
                .collect()
        }
        let after = S * 600;
        // (case, members, removed)
        let cases: Vec<(&str, Vec<LearnerSeen>, Option<NodeId>)> = vec![
            (
                "nobody silent",
                rows(&[(2, false, 0, true), (3, true, 0, true)]),
                None,
            ),
            (
                "a learner silent, not yet long enough",
                rows(&[(2, false, 599, false)]),
                None,
            ),
            (
                "a learner silent for the timeout exactly",
                rows(&[(2, false, 600, false)]),
                Some(2),
            ),
            (
                "a dead voter is never removed by this rule",
                rows(&[(2, true, 3600, false)]),
                None,
            ),
            (
                "a learner alive in gossip stays (it would be added again at once)",
                rows(&[(2, false, 3600, true)]),
                None,
            ),
            (
                "the longest silent goes first, one at a time",
                rows(&[
                    (2, false, 700, false),
                    (3, false, 900, false),
                    (4, true, 5000, false),
                ]),
                Some(3),
            ),
            (
                "a tie goes to the lower id",
                rows(&[(5, false, 700, false), (4, false, 700, false)]),
                Some(4),
            ),
        ];
        for (case, seen, want) in cases {
            assert_eq!(dead_learner(&seen, after), want, "{case}");
        }
    }

    #[test]
    fn silence_counts_from_when_this_leader_knew_the_member() {
        let mut k = Known::default();
        k.update(3, [1, 2].into_iter());
        let long_ago = Instant::now().checked_sub(Duration::from_secs(3600));
        // Answered long ago, but this leader has known it only now.
        assert!(k.silent_for(2, long_ago) < Duration::from_secs(60));
        // A new term starts the count again; so does being added again.
        k.since.insert(2, long_ago.unwrap_or_else(Instant::now));
        k.update(3, [1].into_iter());
        k.update(3, [1, 2].into_iter());
        assert!(k.silent_for(2, None) < Duration::from_secs(60));
    }
}
