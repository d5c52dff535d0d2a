//! The leader's voter policy: keep `voters` voters, promote live learners
//! when voters are missing, replace a voter that has been silent longer
//! than `voter_down_timeout`. One membership change at a time: a change is
//! awaited before the next tick, and nothing is proposed while a joint
//! configuration is in flight.
//!
//! Regions are not known yet (node metadata arrives with gossip), so the
//! spread across regions is left to that work.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use openraft::ServerState;
use weir_storage::NodeId;

use super::Inner;

/// How far behind (in log entries) a learner may be and still be promoted.
const CAUGHT_UP: u64 = 100;

/// A learner that answered this recently counts as live.
const LIVE: Duration = Duration::from_secs(2);

pub(crate) async fn run(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = step(&inner).await {
            tracing::warn!(error = %e, "voter policy: membership change failed");
        }
    }
}

async fn step(inner: &Inner) -> Result<(), String> {
    let m = inner.raft.metrics().borrow().clone();
    if m.state != ServerState::Leader {
        return Ok(());
    }
    let mem = m.membership_config.membership();
    if mem.get_joint_config().len() > 1 {
        return Ok(());
    }
    let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
    let learners: Vec<NodeId> = mem.learner_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let caught_up = |id: &NodeId| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .is_some_and(|l| l.index + CAUGHT_UP >= last)
    };
    let live_learner = learners.iter().copied().find(|l| {
        inner
            .liveness
            .last_seen(*l)
            .is_some_and(|t| t.elapsed() < LIVE)
            && caught_up(l)
    });
    let timeout = inner.settings.voter_down_timeout;
    let dead_voter = voters.iter().copied().find(|v| {
        *v != inner.id
            && match inner.liveness.last_seen(*v) {
                Some(t) => t.elapsed() > timeout,
                None => inner.started.elapsed() > timeout,
            }
    });
    let target = inner.settings.voters.max(1);
    let next = match (dead_voter, live_learner) {
        (Some(dead), Some(l)) => {
            tracing::info!(dead, promote = l, "replacing a silent voter");
            let mut v = voters.clone();
            v.remove(&dead);
            v.insert(l);
            v
        }
        (None, Some(l)) if voters.len() < target => {
            tracing::info!(promote = l, "promoting a learner to voter");
            let mut v = voters.clone();
            v.insert(l);
            v
        }
        _ => return Ok(()),
    };
    inner
        .raft
        .change_membership(next, true)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
