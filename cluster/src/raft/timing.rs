//! Raft timing: the heartbeat interval, the election timeouts and how long
//! a write waits for a leader, as two named profiles (`lan`, the default,
//! and `wan` for voters in different regions) with explicit overrides, and
//! the checks that keep a combination safe. It does not run timers; openraft
//! does, from the [`openraft::Config`] built here.
//!
//! Why the numbers (ADR 0037): openraft 0.9 makes a follower that has
//! accepted a leader wait its *leader lease* (`election_timeout_max`) plus
//! its own election timeout (drawn once per process from `[min, max)`)
//! after the last heartbeat before it campaigns, and looks at that only on
//! a tick of 1.5 heartbeats. Losing a leader therefore costs about
//! `max + [min, max) + 1.5 × heartbeat` before a new one is elected.

use std::fmt;
use std::time::Duration;

/// A named set of timing defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimingProfile {
    /// Voters on one LAN (or one region): heartbeat 100 ms, elections
    /// 500–750 ms; a lost leader is replaced in about 1.3–1.7 s.
    #[default]
    Lan,
    /// Voters in different regions (round trips up to ~300 ms): heartbeat
    /// 500 ms, elections 2–3 s; a lost leader is replaced in about 5–7 s.
    Wan,
}

impl TimingProfile {
    /// Every profile name, for messages.
    pub const NAMES: &'static str = "lan, wan";
}

impl std::str::FromStr for TimingProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<TimingProfile, String> {
        match s {
            "lan" => Ok(TimingProfile::Lan),
            "wan" => Ok(TimingProfile::Wan),
            other => Err(format!(
                "`{other}` is not a timing profile (one of: {})",
                TimingProfile::NAMES
            )),
        }
    }
}

impl fmt::Display for TimingProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimingProfile::Lan => "lan",
            TimingProfile::Wan => "wan",
        })
    }
}

/// The timing a node runs Raft with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// How often the leader sends heartbeats (also openraft's deadline for
    /// one AppendEntries call; weir's network lets a large entry outlive
    /// it, see `network`).
    pub heartbeat: Duration,
    /// Lower bound of the election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the election timeout; openraft 0.9 also uses it as
    /// the leader lease.
    pub election_timeout_max: Duration,
    /// How long a write waits for a leader to accept it before it is
    /// answered "unavailable, retry".
    pub write_wait: Duration,
}

/// A timing value that is not usable: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TimingError {
    /// The setting, named as in [`RaftTiming`] (`heartbeat`,
    /// `election_timeout_min`, `election_timeout_max`, `write_wait`).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl RaftTiming {
    /// The defaults of `profile`.
    pub fn profile(profile: TimingProfile) -> RaftTiming {
        match profile {
            TimingProfile::Lan => RaftTiming {
                heartbeat: Duration::from_millis(100),
                election_timeout_min: Duration::from_millis(500),
                election_timeout_max: Duration::from_millis(750),
                write_wait: Duration::from_secs(3),
            },
            TimingProfile::Wan => RaftTiming {
                heartbeat: Duration::from_millis(500),
                election_timeout_min: Duration::from_millis(2000),
                election_timeout_max: Duration::from_millis(3000),
                write_wait: Duration::from_secs(10),
            },
        }
    }

    /// Checks that the combination keeps elections safe: heartbeats well
    /// inside the election timeout, room to randomise it, and writes that
    /// wait at least one election. Returns every problem.
    pub fn validate(&self) -> Result<(), Vec<TimingError>> {
        let mut errs = Vec::new();
        let mut bad = |field: &'static str, reason: String| {
            errs.push(TimingError { field, reason });
        };
        if self.heartbeat < Duration::from_millis(10) {
            bad(
                "heartbeat",
                format!("{} is below the 10ms minimum", ms(self.heartbeat)),
            );
        }
        if self.election_timeout_min < self.heartbeat * 3 {
            bad(
                "election_timeout_min",
                format!(
                    "{} must be at least 3 heartbeats ({}), so that a late heartbeat does not start an election",
                    ms(self.election_timeout_min),
                    ms(self.heartbeat * 3)
                ),
            );
        }
        if self.election_timeout_max < self.election_timeout_min + self.heartbeat {
            bad(
                "election_timeout_max",
                format!(
                    "{} must exceed election_timeout_min ({}) by at least one heartbeat ({}), so that nodes draw different timeouts",
                    ms(self.election_timeout_max),
                    ms(self.election_timeout_min),
                    ms(self.heartbeat)
                ),
            );
        }
        if self.election_timeout_max > Duration::from_secs(60) {
            bad(
                "election_timeout_max",
                format!("{} is above the 60s maximum", ms(self.election_timeout_max)),
            );
        }
        if self.write_wait < self.election_timeout_max {
            bad(
                "write_wait",
                format!(
                    "{} must be at least election_timeout_max ({}): a write has to outlast one election",
                    ms(self.write_wait),
                    ms(self.election_timeout_max)
                ),
            );
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// The longest a lost leader should take to be replaced on a healthy
    /// network: lease, the longest election timeout, one tick, one
    /// heartbeat for the vote and the new leader's first entry.
    pub fn failover_bound(&self) -> Duration {
        self.election_timeout_max * 2 + self.heartbeat * 5 / 2
    }

    /// What `Retry-After` says to a write refused for want of a leader:
    /// the failover bound, in whole seconds, at least 1.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(self.failover_bound().as_millis().div_ceil(1000).max(1) as u64)
    }

    /// The openraft settings for this timing (the snapshot policy is set
    /// by the caller).
    pub(crate) fn apply(&self, config: &mut openraft::Config) {
        config.heartbeat_interval = self.heartbeat.as_millis() as u64;
        config.election_timeout_min = self.election_timeout_min.as_millis() as u64;
        config.election_timeout_max = self.election_timeout_max.as_millis() as u64;
    }
}

impl Default for RaftTiming {
    fn default() -> RaftTiming {
        RaftTiming::profile(TimingProfile::Lan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_profiles_are_valid_and_lan_fails_over_within_two_seconds() {
        for p in [TimingProfile::Lan, TimingProfile::Wan] {
            let t = RaftTiming::profile(p);
            assert_eq!(t.validate(), Ok(()), "{p}");
            assert_eq!(p.to_string().parse::<TimingProfile>(), Ok(p));
        }
        let lan = RaftTiming::profile(TimingProfile::Lan);
        assert!(lan.failover_bound() <= Duration::from_secs(2));
        assert_eq!(lan.retry_after(), Duration::from_secs(2));
    }

    #[test]
    fn unsafe_combinations_name_the_field() {
        let t = RaftTiming {
            heartbeat: Duration::from_millis(400),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(1200),
            write_wait: Duration::from_millis(500),
        };
        let errs = t.validate().unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["election_timeout_min", "election_timeout_max", "write_wait"]
        );
        assert!(
            errs[0]
                .to_string()
                .contains("at least 3 heartbeats (1200ms)")
        );
        assert!(
            "metro"
                .parse::<TimingProfile>()
                .unwrap_err()
                .contains("lan, wan")
        );
    }
}
