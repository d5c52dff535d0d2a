//! What an operator reads about Raft at info level: one line per
//! leadership change, membership change and snapshot, in weir's words,
//! driven by openraft's metrics watch. openraft's own events are debug
//! detail (the log filter keeps them out at info; see `weir-observability`).
//! This module only logs; it changes nothing.

use std::time::Instant;

use openraft::{BasicNode, LogId, RaftMetrics};
use tokio::sync::watch;
use weir_storage::NodeId;

/// What was last reported.
#[derive(Default)]
struct Seen {
    leader: Option<(NodeId, u64)>,
    /// Since when this node has known no leader.
    leaderless_since: Option<Instant>,
    membership: Option<Option<LogId<NodeId>>>,
    snapshot: Option<LogId<NodeId>>,
    fatal: bool,
}

/// Logs changes until Raft shuts down.
pub(crate) async fn run(mut rx: watch::Receiver<RaftMetrics<NodeId, BasicNode>>, id: NodeId) {
    let mut seen = Seen::default();
    loop {
        let m = rx.borrow_and_update().clone();
        report(&mut seen, &m, id);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn report(seen: &mut Seen, m: &RaftMetrics<NodeId, BasicNode>, id: NodeId) {
    if let Err(e) = &m.running_state {
        if !seen.fatal {
            tracing::error!(raft_id = id, error = %e, "raft stopped; this node no longer takes part in the config cluster");
            seen.fatal = true;
        }
        return;
    }
    match m.current_leader {
        Some(leader) if seen.leader != Some((leader, m.current_term)) => {
            let leaderless_ms = seen
                .leaderless_since
                .take()
                .map(|t| t.elapsed().as_millis() as u64);
            let term = m.current_term;
            if leader == id {
                tracing::info!(
                    raft_id = id,
                    term,
                    leaderless_ms,
                    "this node is now the raft leader"
                );
            } else {
                tracing::info!(
                    raft_id = id,
                    leader,
                    term,
                    leaderless_ms,
                    "raft leader is now node {leader}"
                );
            }
            seen.leader = Some((leader, term));
        }
        Some(_) => {}
        None => {
            if seen.leaderless_since.is_none() {
                seen.leaderless_since = Some(Instant::now());
                // The next leader's line says how long this lasted.
                tracing::debug!(
                    raft_id = id,
                    term = m.current_term,
                    "no raft leader known; an election is due"
                );
            }
        }
    }
    let stored = &m.membership_config;
    let mem = stored.membership();
    if seen.membership != Some(*stored.log_id())
        && mem.get_joint_config().len() == 1
        && mem.nodes().next().is_some()
    {
        let voters: Vec<NodeId> = mem.voter_ids().collect();
        let learners: Vec<NodeId> = mem.learner_ids().collect();
        tracing::info!(raft_id = id, voters = ?voters, learners = ?learners, "raft membership: {} voter(s), {} learner(s)", voters.len(), learners.len());
        seen.membership = Some(*stored.log_id());
    }
    if let Some(snap) = m.snapshot
        && seen.snapshot != Some(snap)
    {
        tracing::info!(
            raft_id = id,
            index = snap.index,
            purged_to = m.purged.map(|p| p.index),
            "raft snapshot up to log index {}",
            snap.index
        );
        seen.snapshot = Some(snap);
    }
}
