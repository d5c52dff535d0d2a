//! [`RedisCounter`]: `sync: per_request`, one Redis round trip per request.
//!
//! The window arithmetic is the node-local limiter's
//! ([`weir_limits::limiter::WindowSlot`]) run inside one Lua script on one
//! hash per limit key, `<prefix>{<id>|<key>}:hit`, holding the key's
//! window origin, window index and the counts of this and the previous
//! window. Windows are aligned on the key's first request, as locally; the
//! hash expires once its counts no longer matter (end of the window, plus
//! one more for a sliding window), after which the key starts afresh as a
//! key the local store dropped for being idle would.
//!
//! Lua numbers are doubles: the arithmetic is exact while timestamps and
//! `count × window_us` stay below 2^53 (µs clocks until the year 2255; a
//! million requests per hour-long window is 3.6·10^15).

use std::sync::Arc;

use redis::Script;
use weir_limits::store::{LimitId, SettleError};
use weir_limits::{Verdict, WindowPolicy};

use super::base_key;
use super::client::{RedisClient, integers};

/// KEYS[1]: the key's hash. ARGV: limit, window_us, sliding (0/1), now_us,
/// cost, slack_ms. Returns {admitted, used after, µs to the window's end,
/// this window's count, the previous window's count}.
const HIT: &str = r"
local limit = tonumber(ARGV[1])
local len = tonumber(ARGV[2])
if len < 1 then len = 1 end
local sliding = ARGV[3] == '1'
local now = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local s = redis.call('HMGET', KEYS[1], 'origin', 'idx', 'cur', 'prev')
local origin = tonumber(s[1]) or now
local sidx = tonumber(s[2]) or 0
local cur = tonumber(s[3]) or 0
local prev = tonumber(s[4]) or 0
local since = now - origin
if since < 0 then since = 0 end
local idx = math.floor(since / len)
if idx * len > since then idx = idx - 1 end
if (idx + 1) * len <= since then idx = idx + 1 end
if idx ~= sidx then
  if idx == sidx + 1 then prev = cur else prev = 0 end
  cur = 0
  sidx = idx
end
local to_end = len - (since - idx * len)
local carried = 0
if sliding then carried = math.ceil(prev * to_end / len) end
local used = cur + carried
local admitted = 0
if used + cost <= limit then
  cur = cur + cost
  used = used + cost
  admitted = 1
end
redis.call('HSET', KEYS[1], 'origin', origin, 'idx', sidx, 'cur', cur, 'prev', prev)
local life = to_end
if sliding then life = life + len end
redis.call('PEXPIRE', KEYS[1], math.ceil(life / 1000) + tonumber(ARGV[6]))
return {admitted, used, to_end, cur, prev}
";

/// Slack on the expiry of a key's hash, for clock skew.
const EXPIRY_SLACK_MS: u64 = 1000;

/// The exact, one-round-trip-per-request window counter of `sync:
/// per_request`. Clone it freely.
#[derive(Clone)]
pub struct RedisCounter {
    client: RedisClient,
    hit: Arc<Script>,
}

impl std::fmt::Debug for RedisCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounter")
            .field("client", &self.client)
            .finish()
    }
}

impl RedisCounter {
    /// A counter over `client`'s Redis.
    pub fn new(client: RedisClient) -> RedisCounter {
        RedisCounter {
            client,
            hit: Arc::new(Script::new(HIT)),
        }
    }

    /// Counts a request of `key` against the window limit `policy` at
    /// `now_us` if it admits it, in Redis: the same verdict the node-local
    /// limiter gives on the same sequence, for the whole cluster at once.
    /// Bounded by the response timeout; on an error the caller decides
    /// locally (the limit's fallback), never fails the request.
    pub async fn hit_window(
        &self,
        id: &LimitId,
        key: &str,
        policy: &WindowPolicy,
        now_us: u64,
        cost: u64,
    ) -> Result<Verdict, SettleError> {
        let mut k = base_key(self.client.prefix(), id, key);
        k.push_str(":hit");
        let reply = self
            .client
            .eval(
                &self.hit,
                &[&k],
                &[
                    policy.limit,
                    policy.window_us,
                    u64::from(policy.sliding),
                    now_us,
                    cost,
                    EXPIRY_SLACK_MS,
                ],
            )
            .await?;
        let [admitted, used, to_end, cur, prev] = integers::<5>(&reply, "a window hit")?;
        verdict(policy, cost, admitted, used, to_end, cur, prev)
    }
}

/// The verdict of a window hit from what the script saw, as
/// [`weir_limits::limiter::WindowSlot::hit`] computes it.
fn verdict(
    p: &WindowPolicy,
    cost: u64,
    admitted: u64,
    used: u64,
    to_end: u64,
    cur: u64,
    prev: u64,
) -> Result<Verdict, SettleError> {
    let len = p.window_us.max(1);
    let shape_ok =
        admitted <= 1 && to_end >= 1 && to_end <= len && (admitted == 0 || used <= p.limit);
    if !shape_ok {
        return Err(SettleError::Refused(format!(
            "Redis answered a window hit with admitted={admitted} used={used} to_end={to_end}, \
             which does not fit limit {} over {len} µs",
            p.limit
        )));
    }
    if admitted == 1 {
        return Ok(Verdict {
            admitted: true,
            limit: p.limit,
            remaining: p.limit - used,
            reset_us: to_end,
            retry_after_us: 0,
            delay_us: 0,
        });
    }
    Ok(Verdict::window_rejection(p, cur, prev, cost, to_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_does_not_fit_the_policy_is_refused() {
        let p = WindowPolicy {
            limit: 5,
            window_us: 1000,
            sliding: false,
        };
        assert!(verdict(&p, 1, 2, 1, 10, 1, 0).is_err());
        assert!(verdict(&p, 1, 1, 6, 10, 6, 0).is_err());
        assert!(verdict(&p, 1, 1, 1, 0, 1, 0).is_err());
        assert!(verdict(&p, 1, 1, 1, 1001, 1, 0).is_err());
        let v = verdict(&p, 1, 1, 2, 10, 2, 0).unwrap();
        assert_eq!((v.admitted, v.remaining, v.reset_us), (true, 3, 10));
    }
}
