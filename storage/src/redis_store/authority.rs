//! [`RedisAuthority`]: a [`CreditAuthority`] whose counts live in Redis.
//!
//! One hash per limit, key and window, `<prefix>{<id>|<key>}:w:<start>`,
//! with two fields: `granted` (credit handed out and not given back:
//! consumed plus outstanding) and `reported` (usage counted by stores that
//! settle by reporting). Each operation is one Lua script, so Redis runs it
//! alone: `acquire` grants `min(want, limit − granted − reported −
//! carried)` and nothing when that is negative, which keeps consumed +
//! outstanding ≤ limit whatever the number of nodes racing for credit.

use std::time::Duration;

use redis::Script;
use weir_limits::WindowPolicy;
use weir_limits::store::{CreditAuthority, Grant, LimitId, SettleError, Usage};

use super::base_key;
use super::client::{RedisClient, integers};

/// How long a key that only received reports lives after its first
/// report (reports carry no window length).
pub const DEFAULT_REPORT_TTL: Duration = Duration::from_secs(3600);

/// Slack added to every expiry, for clock skew between nodes and Redis.
const EXPIRY_SLACK_MS: u64 = 1000;

/// KEYS[1]: this window; KEYS[2] (sliding only): the previous one.
/// ARGV: limit, want, ttl_ms, and for sliding the weight of the previous
/// window as a fraction (part, whole). Returns {granted now, what the
/// window had used before}.
const ACQUIRE: &str = r"
local limit = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'granted', 'reported')
local used = (tonumber(h[1]) or 0) + (tonumber(h[2]) or 0)
if KEYS[2] then
  local p = redis.call('HMGET', KEYS[2], 'granted', 'reported')
  local prev = (tonumber(p[1]) or 0) + (tonumber(p[2]) or 0)
  used = used + math.ceil(prev * tonumber(ARGV[4]) / tonumber(ARGV[5]))
end
local room = limit - used
if room < 0 then room = 0 end
local grant = want
if grant > room then grant = room end
if grant > 0 then
  redis.call('HINCRBY', KEYS[1], 'granted', grant)
  if redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
end
return {grant, used}
";

/// KEYS[1]: the window. ARGV: units to give back. Never goes below zero
/// and never creates a key. Returns {units given back, granted after}.
const RELEASE: &str = r"
local granted = tonumber(redis.call('HGET', KEYS[1], 'granted') or '0') or 0
local n = tonumber(ARGV[1])
if n > granted then n = granted end
if n > 0 then
  granted = redis.call('HINCRBY', KEYS[1], 'granted', -n)
end
return {n, granted}
";

/// KEYS[1]: the window. ARGV: units used, ttl_ms for a new key. Returns
/// {reported after, 0}.
const REPORT: &str = r"
local n = redis.call('HINCRBY', KEYS[1], 'reported', ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {n, 0}
";

/// The credit authority of `store: redis` limits. Clone it freely; every
/// clone shares the connection.
#[derive(Clone)]
pub struct RedisAuthority {
    client: RedisClient,
    acquire: std::sync::Arc<Script>,
    release: std::sync::Arc<Script>,
    report: std::sync::Arc<Script>,
    report_ttl: Duration,
}

impl std::fmt::Debug for RedisAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuthority")
            .field("client", &self.client)
            .field("report_ttl", &self.report_ttl)
            .finish()
    }
}

/// The Redis key of one window of a limit key.
fn window_key(prefix: &str, id: &LimitId, key: &str, window_start_us: u64) -> String {
    let mut k = base_key(prefix, id, key);
    k.push_str(":w:");
    k.push_str(&window_start_us.to_string());
    k
}

/// Milliseconds, rounded up, plus the slack.
fn ttl_ms(us: u64) -> u64 {
    us.div_ceil(1000).saturating_add(EXPIRY_SLACK_MS)
}

impl RedisAuthority {
    /// An authority over `client`'s Redis.
    pub fn new(client: RedisClient) -> RedisAuthority {
        RedisAuthority {
            client,
            acquire: std::sync::Arc::new(Script::new(ACQUIRE)),
            release: std::sync::Arc::new(Script::new(RELEASE)),
            report: std::sync::Arc::new(Script::new(REPORT)),
            report_ttl: DEFAULT_REPORT_TTL,
        }
    }

    /// How long a key that only received reports lives.
    pub fn with_report_ttl(mut self, ttl: Duration) -> RedisAuthority {
        self.report_ttl = ttl;
        self
    }

    /// [`CreditAuthority::acquire`] at an explicit clock `now_us` (µs since
    /// the Unix epoch), which only matters for sliding windows: the share
    /// of the previous window still inside the sliding window is counted
    /// as of one step past `now_us` ([`WindowPolicy::sliding_step_us`]).
    /// That share only shrinks as time goes on, so a grant that fits then
    /// still fits later.
    pub async fn acquire_at(
        &self,
        id: &LimitId,
        key: &str,
        policy: &WindowPolicy,
        window_start_us: u64,
        want: u64,
        now_us: u64,
    ) -> Result<Grant, SettleError> {
        let len = policy.window_us.max(1);
        let prefix = self.client.prefix();
        let cur = window_key(prefix, id, key, window_start_us);
        // A sliding window's key must outlive its window by one more: it
        // is the previous window of the next one.
        let ttl = ttl_ms(if policy.sliding {
            len.saturating_mul(2)
        } else {
            len
        });
        let reply = if policy.sliding && window_start_us >= len {
            let prev = window_key(prefix, id, key, window_start_us - len);
            let end = window_start_us.saturating_add(len);
            // Counted one step ahead, as the mesh owner does
            // (`WindowPolicy::sliding_step_us`).
            let ahead = now_us.saturating_add(policy.sliding_step_us());
            let to_end = end.saturating_sub(ahead.max(window_start_us)).min(len);
            self.client
                .eval(
                    &self.acquire,
                    &[&cur, &prev],
                    &[policy.limit, want, ttl, to_end, len],
                )
                .await?
        } else {
            self.client
                .eval(&self.acquire, &[&cur], &[policy.limit, want, ttl])
                .await?
        };
        let [units, consumed] = integers::<2>(&reply, "a credit request")?;
        if units > want {
            return Err(SettleError::Refused(format!(
                "Redis granted {units} units when {want} were asked for"
            )));
        }
        Ok(Grant {
            window_start_us,
            units,
            consumed,
        })
    }
}

#[async_trait::async_trait]
impl CreditAuthority for RedisAuthority {
    async fn acquire(
        &self,
        id: &LimitId,
        key: &str,
        policy: &WindowPolicy,
        window_start_us: u64,
        want: u64,
    ) -> Result<Grant, SettleError> {
        self.acquire_at(
            id,
            key,
            policy,
            window_start_us,
            want,
            weir_limits::wall_clock_us(),
        )
        .await
    }

    async fn release(
        &self,
        id: &LimitId,
        key: &str,
        window_start_us: u64,
        unused: u64,
    ) -> Result<(), SettleError> {
        if unused == 0 {
            return Ok(());
        }
        let k = window_key(self.client.prefix(), id, key, window_start_us);
        let reply = self.client.eval(&self.release, &[&k], &[unused]).await?;
        let [given, _] = integers::<2>(&reply, "a release")?;
        if given > unused {
            return Err(SettleError::Refused(format!(
                "Redis took back {given} units when {unused} were given back"
            )));
        }
        Ok(())
    }

    async fn report(&self, id: &LimitId, usage: &[Usage]) -> Result<(), SettleError> {
        let ttl = u64::try_from(self.report_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let prefix = self.client.prefix();
        // One script per key (keys of a report may sit in different hash
        // slots of a cluster), the whole report bounded by one timeout.
        let all = async {
            for u in usage.iter().filter(|u| u.used > 0) {
                let k = window_key(prefix, id, &u.key, u.window_start_us);
                let reply = self
                    .client
                    .eval(&self.report, &[&k], &[u.used, ttl])
                    .await?;
                integers::<2>(&reply, "a usage report")?;
            }
            Ok(())
        };
        let timeout = self.client.response_timeout();
        match tokio::time::timeout(timeout, all).await {
            Ok(r) => r,
            Err(_) => Err(SettleError::Timeout(timeout)),
        }
    }
}
