//! `store: redis` on `limit-count` and `limit-req` (ADR 0034): the node's
//! one Redis client, the credit stores that settle with Redis in the
//! background ([`RedisHome`]), the exact one-round-trip-per-request path
//! of `sync: per_request` ([`PerRequest`]) and what the node says while
//! Redis is down ([`RedisHealth`]: the `weir_limit_redis_*` series and a
//! log line once per interval).
//!
//! It does not own the scripts or the connection (`weir_storage::
//! redis_store`), the credit arithmetic (`weir_limits::credit`) or the
//! fair share a limit falls back to: that is the scope's share from
//! [`ClusterLimits`], the members of the scope this node reaches over all
//! of them (the whole limit for a node that is not clustered). A Redis
//! that fails never fails a request: a credit store admits from what it
//! holds, then its fair share; a per-request limit decides on this node
//! at the fair share, and skips Redis for [`BREAKER`] after a failure so
//! that an outage costs one bounded wait per interval, not one per
//! request.
//!
//! Redis's counts are not mixed with the mesh's: two authorities for one
//! window would each grant up to the whole limit. A region-scope limit
//! keeps its counts under the region's name, so regions sharing one Redis
//! count apart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_limits::credit::{CreditConfig, CreditCounters, FairShare};
use weir_limits::store::{Grant, SettleError, Usage};
use weir_limits::{
    BuildMark, CounterSpec, CounterStore, CounterStoreProvider, CreditAuthority, LimitId,
    LimitStores, LocalProvider, Scale, Verdict, WindowPolicy,
};
use weir_observability::metrics::Metrics;
use weir_storage::redis_store::{RedisAuthority, RedisClient, RedisCounter, RedisSettings};

use crate::cluster_limits::{ClusterLimits, Scope};

/// How long a per-request limit decides locally after a failed Redis call
/// before it tries Redis again.
pub const BREAKER: Duration = Duration::from_millis(250);
/// Longest interval between two "Redis is still failing" log lines.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Slack on the credit stores' settle timeout over the client's own
/// bound (the client always answers first).
const SETTLE_SLACK: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outcome of one Redis call, a label of `weir_limit_redis_calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallResult {
    Ok,
    Timeout,
    Unreachable,
    Refused,
}

impl CallResult {
    const ALL: [CallResult; 4] = [
        CallResult::Ok,
        CallResult::Timeout,
        CallResult::Unreachable,
        CallResult::Refused,
    ];

    fn of(r: Result<(), &SettleError>) -> CallResult {
        match r {
            Ok(()) => CallResult::Ok,
            Err(SettleError::Timeout(_)) => CallResult::Timeout,
            Err(SettleError::Unreachable(_)) => CallResult::Unreachable,
            Err(SettleError::Refused(_)) => CallResult::Refused,
        }
    }

    fn label(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Timeout => "timeout",
            CallResult::Unreachable => "unreachable",
            CallResult::Refused => "refused",
        }
    }
}

/// What the node knows of Redis's health: call outcomes, whether the last
/// call worked, when a per-request limit may try again, and the log
/// lines that say so (the first failure at once, then at most one per
/// [`LOG_EVERY`] while it lasts, and one when Redis answers again).
#[derive(Debug)]
pub struct RedisHealth {
    calls: [AtomicU64; 4],
    up: AtomicBool,
    /// Per-request limits skip Redis until then (µs on the wall clock).
    open_until_us: AtomicU64,
    logged: Mutex<Option<(Instant, u64)>>,
}

impl Default for RedisHealth {
    fn default() -> Self {
        RedisHealth {
            calls: Default::default(),
            up: AtomicBool::new(true),
            open_until_us: AtomicU64::new(0),
            logged: Mutex::default(),
        }
    }
}

impl RedisHealth {
    /// Records one call's outcome.
    fn record(&self, r: Result<(), &SettleError>, now_us: u64) {
        let result = CallResult::of(r);
        self.calls[result as usize].fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(()) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    let failed = lock(&self.logged).take().map_or(0, |(_, n)| n);
                    tracing::info!(
                        failed_calls = failed,
                        "Redis answers again: limits with store: redis count in Redis"
                    );
                }
            }
            Err(e) => {
                self.up.store(false, Ordering::Relaxed);
                let until = now_us.saturating_add(BREAKER.as_micros() as u64);
                self.open_until_us.fetch_max(until, Ordering::Relaxed);
                let mut logged = lock(&self.logged);
                match &mut *logged {
                    Some((at, n)) if at.elapsed() < LOG_EVERY => *n += 1,
                    slot => {
                        let since = slot.map_or(0, |(_, n)| n);
                        tracing::warn!(
                            error = %e,
                            failed_calls_since_last_line = since,
                            "Redis call failed: limits with store: redis admit this node's fair share until it answers"
                        );
                        *slot = Some((Instant::now(), 0));
                    }
                }
            }
        }
    }

    /// Whether a per-request limit should skip Redis at `now_us`.
    fn skip(&self, now_us: u64) -> bool {
        now_us < self.open_until_us.load(Ordering::Relaxed)
    }

    fn publish(&self, m: &Metrics, seen: &mut [u64; 4]) {
        let calls = m.counter_vec(
            "weir_limit_redis_calls",
            "Redis calls of limits with store: redis, by result (ok, timeout, unreachable, refused).",
            ["result"],
        );
        for r in CallResult::ALL {
            let now = self.calls[r as usize].load(Ordering::Relaxed);
            calls.inc_by([r.label()], now.saturating_sub(seen[r as usize]));
            seen[r as usize] = now;
        }
        m.gauge(
            "weir_limit_redis_up",
            "1 while the last Redis call of a store: redis limit worked, 0 while limits fall back to the fair share.",
        )
        .set(i64::from(self.up.load(Ordering::Relaxed)));
    }
}

/// The Redis of one config: its client, its health and the stores of the
/// limits that use it. A config whose `redis:` section or region changes
/// gets a new home, so the limits start over on the new Redis.
pub struct RedisHome {
    settings: RedisSettings,
    region: String,
    client: RedisClient,
    health: Arc<RedisHealth>,
    /// Credit stores of `scope: region` and `scope: cluster`.
    stores: [LimitStores; 2],
}

impl std::fmt::Debug for RedisHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHome")
            .field("client", &self.client)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The Redis state of a running gateway: the home of the last build that
/// used Redis, and what its series showed last.
#[derive(Default)]
pub struct RedisLimits {
    home: Mutex<Option<Arc<RedisHome>>>,
    seen: Mutex<[u64; 4]>,
}

/// One build's use of a [`RedisHome`] (the marks its limits were taken
/// under, so the publish sweeps what the build no longer uses).
#[derive(Clone, Debug)]
pub struct RedisUse {
    home: Arc<RedisHome>,
    marks: [BuildMark; 2],
}

impl RedisLimits {
    /// The home for `settings` in `region`: the current one if both are
    /// unchanged, else a new one (which then becomes current when the
    /// build is published). Must run inside a tokio runtime.
    fn home(
        &self,
        settings: &RedisSettings,
        region: &str,
        cluster: &Arc<ClusterLimits>,
    ) -> Result<Arc<RedisHome>, String> {
        let mut home = lock(&self.home);
        if let Some(h) = home
            .as_ref()
            .filter(|h| h.settings == *settings && h.region == region)
        {
            return Ok(h.clone());
        }
        let client =
            RedisClient::open(settings).map_err(|e| format!("redis.{}: {}", e.field, e.reason))?;
        let health = Arc::new(RedisHealth::default());
        let rt = tokio::runtime::Handle::current();
        let stores = [Scope::Region, Scope::Cluster].map(|scope| {
            LimitStores::new(Arc::new(Provider {
                scope,
                region: region.to_string(),
                authority: RedisAuthority::new(client.clone()),
                health: health.clone(),
                cluster: cluster.clone(),
                timeout: client.response_timeout() + SETTLE_SLACK,
                rt: rt.clone(),
            }))
        });
        let h = Arc::new(RedisHome {
            settings: settings.clone(),
            region: region.to_string(),
            client,
            health,
            stores,
        });
        *home = Some(h.clone());
        Ok(h)
    }

    /// Starts a build's use of Redis.
    pub fn begin(
        &self,
        settings: &RedisSettings,
        region: &str,
        cluster: &Arc<ClusterLimits>,
    ) -> Result<RedisUse, String> {
        let home = self.home(settings, region, cluster)?;
        let marks = [home.stores[0].begin(), home.stores[1].begin()];
        Ok(RedisUse { home, marks })
    }

    /// The build that used `used` (or no Redis) is published: sweeps the
    /// limits it dropped; a build without Redis lets the client go.
    pub fn published(&self, used: Option<&RedisUse>) {
        let mut home = lock(&self.home);
        match used {
            Some(u) => {
                for (s, mark) in u.home.stores.iter().zip(u.marks) {
                    s.sweep(mark);
                }
                *home = Some(u.home.clone());
            }
            None => *home = None,
        }
    }

    /// Publishes the `weir_limit_redis_*` series (before a scrape); none
    /// while no limit uses Redis.
    pub fn publish_metrics(&self, m: &Metrics) {
        let home = lock(&self.home).clone();
        if let Some(h) = home {
            h.health.publish(m, &mut lock(&self.seen));
        }
    }
}

impl RedisUse {
    /// The credit store of limit `id` shared over `scope` through Redis.
    pub fn counters(
        &self,
        id: &LimitId,
        spec: &CounterSpec,
        scope: Scope,
    ) -> Arc<dyn CounterStore> {
        match scope {
            Scope::Node => LocalProvider.open(id, spec),
            Scope::Region => self.home.stores[0].counters(self.marks[0], id, spec),
            Scope::Cluster => self.home.stores[1].counters(self.marks[1], id, spec),
        }
    }

    /// The exact counter of `sync: per_request` for limit `id` over
    /// `scope`, deciding on this node at `share` of the limit (through
    /// `fallback`) while Redis fails.
    pub fn per_request(
        &self,
        id: &LimitId,
        scope: Scope,
        fallback: Arc<dyn CounterStore>,
        share: FairShare,
    ) -> PerRequest {
        PerRequest {
            counter: RedisCounter::new(self.home.client.clone()),
            id: scoped_id(id, scope, &self.home.region),
            fallback,
            share,
            health: self.home.health.clone(),
        }
    }
}

/// The name a limit's counts carry in Redis: a region-scope limit's owner
/// gets the region, so every region counts apart.
fn scoped_id(id: &LimitId, scope: Scope, region: &str) -> LimitId {
    match scope {
        Scope::Region => LimitId {
            owner: format!("{}@region:{region}", id.owner).into(),
            ..id.clone()
        },
        Scope::Node | Scope::Cluster => id.clone(),
    }
}

/// Opens the Redis credit stores of one scope.
struct Provider {
    scope: Scope,
    region: String,
    authority: RedisAuthority,
    health: Arc<RedisHealth>,
    cluster: Arc<ClusterLimits>,
    timeout: Duration,
    rt: tokio::runtime::Handle,
}

impl CounterStoreProvider for Provider {
    fn open(&self, id: &LimitId, spec: &CounterSpec) -> Arc<dyn CounterStore> {
        let share = self
            .cluster
            .share(self.scope)
            .unwrap_or_else(|| FairShare::new(Scale::FULL));
        let authority = Arc::new(Authority {
            inner: self.authority.clone(),
            health: self.health.clone(),
            scope: self.scope,
            region: self.region.clone(),
        });
        let cfg = CreditConfig {
            timeout: self.timeout,
            ..CreditConfig::default()
        };
        let store = Arc::new(CreditCounters::new(
            id.clone(),
            spec,
            authority,
            share,
            cfg,
            &self.rt,
        ));
        self.cluster.register_external(self.scope, id, &store);
        store
    }
}

/// [`RedisAuthority`] under the scope's name, reporting every call's
/// outcome to the health.
struct Authority {
    inner: RedisAuthority,
    health: Arc<RedisHealth>,
    scope: Scope,
    region: String,
}

impl Authority {
    fn seen<T>(&self, r: Result<T, SettleError>) -> Result<T, SettleError> {
        self.health
            .record(r.as_ref().map(|_| ()), weir_limits::wall_clock_us());
        r
    }
}

#[async_trait::async_trait]
impl CreditAuthority for Authority {
    async fn acquire(
        &self,
        id: &LimitId,
        key: &str,
        policy: &WindowPolicy,
        window_start_us: u64,
        want: u64,
    ) -> Result<Grant, SettleError> {
        let id = scoped_id(id, self.scope, &self.region);
        let r = self
            .inner
            .acquire(&id, key, policy, window_start_us, want)
            .await;
        self.seen(r)
    }

    async fn release(
        &self,
        id: &LimitId,
        key: &str,
        window_start_us: u64,
        unused: u64,
    ) -> Result<(), SettleError> {
        let id = scoped_id(id, self.scope, &self.region);
        let r = self.inner.release(&id, key, window_start_us, unused).await;
        self.seen(r)
    }

    async fn report(&self, id: &LimitId, usage: &[Usage]) -> Result<(), SettleError> {
        let id = scoped_id(id, self.scope, &self.region);
        let r = self.inner.report(&id, usage).await;
        self.seen(r)
    }
}

/// `sync: per_request`: one Redis round trip per request, exact across
/// the scope; while Redis fails, this node's fair share decided locally.
pub struct PerRequest {
    counter: RedisCounter,
    id: LimitId,
    fallback: Arc<dyn CounterStore>,
    share: FairShare,
    health: Arc<RedisHealth>,
}

impl PerRequest {
    /// Counts a request of `key` against `policy` at `now_us`. Waits for
    /// Redis at most its response timeout, and not at all within
    /// [`BREAKER`] of a failure.
    pub async fn hit_window(&self, key: &str, policy: &WindowPolicy, now_us: u64) -> Verdict {
        if !self.health.skip(now_us) {
            let r = self
                .counter
                .hit_window(&self.id, key, policy, now_us, 1)
                .await;
            self.health
                .record(r.as_ref().map(|_| ()), weir_limits::wall_clock_us());
            if let Ok(v) = r {
                return v;
            }
        }
        self.fallback
            .hit_window(key, &policy.scaled(self.share.get()), now_us, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_limit_counts_under_its_region() {
        let id = LimitId {
            owner: "route:r".into(),
            plugin: "limit-count".into(),
            config: 7,
        };
        assert_eq!(scoped_id(&id, Scope::Cluster, "eu"), id);
        let eu = scoped_id(&id, Scope::Region, "eu");
        assert_eq!(&*eu.owner, "route:r@region:eu");
        assert_ne!(eu, scoped_id(&id, Scope::Region, "us"));
    }

    #[test]
    fn a_failure_opens_the_breaker_for_a_while_and_success_closes_the_outage() {
        let h = RedisHealth::default();
        h.record(Ok(()), 1_000);
        assert!(!h.skip(1_000));
        let e = SettleError::Timeout(Duration::from_millis(5));
        h.record(Err(&e), 1_000);
        assert!(!h.up.load(Ordering::Relaxed));
        assert!(h.skip(1_000 + BREAKER.as_micros() as u64 - 1));
        assert!(!h.skip(1_000 + BREAKER.as_micros() as u64));
        h.record(Ok(()), 2_000_000);
        assert!(h.up.load(Ordering::Relaxed));
        let counts: Vec<u64> = h.calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(counts, [2, 1, 0, 0]);
    }
}
