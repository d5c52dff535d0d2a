//! Upstreams at run time: targets, their passive health, the connection
//! pools, the balancer and the retry budget.
//!
//! Connection pooling is hyper-util's client pool (keyed by target
//! authority, HTTP/1.1 keep-alive or HTTP/2 multiplexing); see
//! `docs/adr/0001-upstream-connection-pool.md`. Pools and health state are
//! kept across config reloads when the settings that shape them are
//! unchanged, so a reload neither drops warm connections nor forgets that a
//! target is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::retry::budget::{Budget, TpsBudget};

use crate::balance::Balancer;
use crate::config::{StickyConfig, TimeoutConfig, UpstreamConfig, UpstreamScheme};
use crate::proxy::ReqBody;

/// The pooled HTTP client used towards targets.
pub type HttpClient = Client<HttpConnector, ReqBody>;

/// Milliseconds since the process started; a cheap monotonic clock that
/// fits an atomic.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

// === impl TargetHealth ===

/// Passive health of one target (nginx `max_fails` / `fail_timeout`).
#[derive(Debug, Default)]
pub struct TargetHealth {
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    down_until_ms: AtomicU64,
}

impl TargetHealth {
    /// Whether the target may receive traffic now.
    pub fn is_up(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Records a failed attempt; returns true when this failure took the
    /// target out.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration, now_ms: u64) -> bool {
        if max_fails == 0 {
            return false;
        }
        let window = fail_timeout.as_millis() as u64;
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let fails = if now_ms.saturating_sub(start) >= window || start == 0 {
            // A new window: failures older than fail_timeout no longer count.
            self.window_start_ms.store(now_ms.max(1), Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= max_fails && self.is_up(now_ms) {
            self.down_until_ms.store(now_ms + window, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            self.window_start_ms.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a success: earlier failures are forgiven.
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }
}

// === impl Target ===

/// One target at run time.
pub struct Target {
    /// `host:port` as configured.
    pub addr: String,
    /// Parsed authority, used to build request URIs.
    pub authority: Authority,
    /// The `Host` value when the route asks for the target's address.
    pub host_value: HeaderValue,
    /// Value of the sticky cookie that selects this target.
    pub sticky_id: String,
    /// Passive health, shared across reloads.
    pub health: Arc<TargetHealth>,
}

// === impl Upstream ===

/// An upstream at run time.
pub struct Upstream {
    /// Config id.
    pub id: String,
    /// Targets in config order (the balancer's indices).
    pub targets: Vec<Target>,
    /// Chooses targets.
    pub balancer: Balancer,
    /// The pooled client.
    pub client: HttpClient,
    /// `http` (HTTP/1.1 or h2c share the scheme).
    pub scheme: Scheme,
    /// Whether requests go out as HTTP/2.
    pub h2: bool,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// Extra attempts after the first.
    pub retries: u32,
    /// Caps retries to a share of traffic.
    pub budget: TpsBudget,
    /// Passive health thresholds.
    pub max_fails: u32,
    /// Passive health window and ejection time.
    pub fail_timeout: Duration,
    /// Sticky sessions, when configured.
    pub sticky: Option<StickyConfig>,
}

impl Upstream {
    /// Whether target `i` may take traffic now.
    pub fn is_up(&self, i: usize, now_ms: u64) -> bool {
        self.targets[i].health.is_up(now_ms)
    }

    /// Records a failed attempt on target `i`, logging when it goes down.
    pub fn record_failure(&self, i: usize, reason: &str) {
        let t = &self.targets[i];
        if t.health
            .record_failure(self.max_fails, self.fail_timeout, now_ms())
        {
            tracing::warn!(
                upstream = %self.id,
                target = %t.addr,
                reason,
                out_for = %humantime::format_duration(self.fail_timeout),
                "target taken out of rotation after repeated failures"
            );
        }
    }

    /// Deposits one request into the retry budget.
    pub fn budget_deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn budget_withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// The target named by a sticky cookie value.
    pub fn sticky_target(&self, value: &str) -> Option<usize> {
        self.targets.iter().position(|t| t.sticky_id == value)
    }
}

/// Stable id of a target for the sticky cookie: FNV-1a of its address, so
/// every node and every restart agree without sharing state.
fn sticky_id(addr: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

// === impl Pools ===

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    h2: bool,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

/// State that outlives one config snapshot: connection pools and target
/// health, looked up by what shapes them.
#[derive(Default)]
pub struct Pools {
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
    health: Mutex<HashMap<(String, String), Arc<TargetHealth>>>,
}

impl Pools {
    /// Builds the run-time upstream for a config, reusing pools and health
    /// state where they fit.
    pub fn upstream(&self, cfg: &UpstreamConfig) -> Upstream {
        let h2 = cfg.scheme == UpstreamScheme::H2c;
        let key = ClientKey {
            h2,
            max_idle: cfg.keepalive.max_idle,
            idle_timeout: cfg.keepalive.idle_timeout,
            connect_timeout: cfg.timeouts.connect,
        };
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            clients
                .entry(key.clone())
                .or_insert_with(|| build_client(&key))
                .clone()
        };
        let targets = {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            cfg.targets
                .iter()
                .map(|t| {
                    let authority: Authority = t.addr.parse().expect("validated authority");
                    let host_value = HeaderValue::from_str(&t.addr).expect("validated authority");
                    let h = health
                        .entry((cfg.id.clone(), t.addr.clone()))
                        .or_default()
                        .clone();
                    Target {
                        addr: t.addr.clone(),
                        authority,
                        host_value,
                        sticky_id: sticky_id(&t.addr),
                        health: h,
                    }
                })
                .collect()
        };
        let b = &cfg.retry_budget;
        Upstream {
            id: cfg.id.clone(),
            targets,
            balancer: Balancer::new(&cfg.balancer, &cfg.targets),
            client,
            scheme: Scheme::HTTP,
            h2,
            timeouts: cfg.timeouts.clone(),
            retries: cfg.retries,
            budget: TpsBudget::new(b.ttl, b.min_per_sec, b.ratio),
            max_fails: cfg.passive_health.max_fails,
            fail_timeout: cfg.passive_health.fail_timeout,
            sticky: cfg.sticky.clone(),
        }
    }

    /// Forgets pools and health of upstreams and targets no longer
    /// configured.
    pub fn retain(&self, upstreams: &[UpstreamConfig]) {
        let live: std::collections::HashSet<(String, String)> = upstreams
            .iter()
            .flat_map(|u| {
                u.targets
                    .iter()
                    .map(move |t| (u.id.clone(), t.addr.clone()))
            })
            .collect();
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
        let keys: std::collections::HashSet<ClientKey> = upstreams
            .iter()
            .map(|u| ClientKey {
                h2: u.scheme == UpstreamScheme::H2c,
                max_idle: u.keepalive.max_idle,
                idle_timeout: u.keepalive.idle_timeout,
                connect_timeout: u.timeouts.connect,
            })
            .collect();
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keys.contains(k));
    }
}

fn build_client(key: &ClientKey) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.enforce_http(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(key.max_idle)
        .http2_only(key.h2)
        // The gateway sets Host itself, per route.
        .set_host(false)
        .retry_canceled_requests(true);
    b.build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_health_follows_max_fails_and_fail_timeout() {
        let h = TargetHealth::default();
        let ft = Duration::from_secs(10);
        assert!(!h.record_failure(3, ft, 1_000));
        assert!(!h.record_failure(3, ft, 2_000));
        assert!(h.is_up(2_000));
        assert!(h.record_failure(3, ft, 3_000));
        assert!(!h.is_up(3_001));
        assert!(!h.is_up(12_999));
        assert!(h.is_up(13_000));
        // Failures spread wider than fail_timeout never add up.
        assert!(!h.record_failure(2, ft, 20_000));
        assert!(!h.record_failure(2, ft, 31_000));
        assert!(h.is_up(31_001));
    }

    #[test]
    fn success_forgives_failures() {
        let h = TargetHealth::default();
        let ft = Duration::from_secs(10);
        assert!(!h.record_failure(2, ft, 1_000));
        h.record_success();
        assert!(!h.record_failure(2, ft, 1_500));
        assert!(h.is_up(1_600));
    }

    #[test]
    fn sticky_ids_are_stable() {
        assert_eq!(sticky_id("127.0.0.1:8080"), sticky_id("127.0.0.1:8080"));
        assert_ne!(sticky_id("127.0.0.1:8080"), sticky_id("127.0.0.1:8081"));
    }
}
