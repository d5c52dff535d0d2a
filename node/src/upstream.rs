//! Upstreams at run time: targets, their passive health, the connection
//! pools, the balancer and the retry budget.
//!
//! Each target has its own small connection pool ([`TargetPool`]) over
//! hyper's connection-level clients: HTTP/1.1 keep-alive connections, or one
//! multiplexed HTTP/2 (h2c) connection; see
//! `docs/adr/0005-own-upstream-connection-pool.md`. Pools and health state
//! are kept across config reloads when the settings that shape them are
//! unchanged, so a reload neither drops warm connections nor forgets that a
//! target is down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::retry::budget::{Budget, TpsBudget};

use crate::balance::Balancer;
use crate::body::ReqBody;
use crate::clock::mono_ms;
use crate::config::{ConfigErrors, StickyConfig, TimeoutConfig, UpstreamConfig, UpstreamScheme};

// === impl TargetHealth ===

/// Passive health of one target (nginx `max_fails` / `fail_timeout`).
#[derive(Debug, Default)]
pub struct TargetHealth {
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    down_until_ms: AtomicU64,
    /// The merged verdict of the cluster's active checks (`health.rs`).
    cluster_down: AtomicBool,
}

impl TargetHealth {
    /// Whether the target may receive traffic now: neither taken out by
    /// this node's own failures nor down for the cluster.
    pub fn is_up(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
            && !self.cluster_down.load(Ordering::Relaxed)
    }

    /// Whether the cluster's merged active checks hold the target down
    /// (the same answer on every node, unlike [`TargetHealth::is_up`]).
    pub fn is_cluster_down(&self) -> bool {
        self.cluster_down.load(Ordering::Relaxed)
    }

    /// Sets the cluster verdict; true when it changed.
    pub fn set_cluster_down(&self, down: bool) -> bool {
        self.cluster_down.swap(down, Ordering::Relaxed) != down
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
    /// The address as a socket address when it is an IP literal (for the
    /// span's peer attributes), parsed once here rather than per attempt.
    pub socket: Option<std::net::SocketAddr>,
    /// Parsed authority, used to build request URIs.
    pub authority: Authority,
    /// The `Host` value when the route asks for the target's address.
    pub host_value: HeaderValue,
    /// Value of the sticky cookie that selects this target.
    pub sticky_id: String,
    /// Configured weight; 0 means no traffic at all.
    pub weight: u32,
    /// Region label; empty when none.
    pub region: String,
    /// Zone label; empty when none.
    pub zone: String,
    /// Passive health, shared across reloads.
    pub health: Arc<TargetHealth>,
    /// Keep-alive connections, shared across reloads.
    pub pool: Arc<TargetPool>,
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
    /// Active health checks, when configured.
    pub health_check: Option<crate::config::HealthCheckConfig>,
    /// Locality preference; `None` when it does not apply (no region or
    /// zone labels that the node's own could match, or `locality: none`).
    pub locality: Option<(crate::config::Locality, u32)>,
    /// Per target: whether it is in this node's region (unlabelled
    /// targets, and every target when region preference is off, are).
    pub local: Vec<bool>,
    /// Per target: whether it is in this node's zone, inside its region
    /// (unlabelled targets in the region are). All false when zone
    /// preference is off: the node has no zone or no target a zone label.
    pub same_zone: Vec<bool>,
}

/// How far from this node a target is, nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Zone,
    Region,
    Remote,
}

impl Upstream {
    /// Whether target `i` may take traffic now.
    pub fn is_up(&self, i: usize, now_ms: u64) -> bool {
        self.targets[i].health.is_up(now_ms)
    }

    fn tier(&self, i: usize) -> Tier {
        if self.same_zone.get(i).copied().unwrap_or(false) {
            Tier::Zone
        } else if self.local.get(i).copied().unwrap_or(true) {
            Tier::Region
        } else {
            Tier::Remote
        }
    }

    /// Whether the balancer may pick target `i` now: it is up, and its
    /// place is allowed by `locality`. The nearest tier (own zone, then own
    /// region, then every region) whose healthy weight reaches
    /// `locality_min_weight` takes the traffic; `strict-local` never goes
    /// past its region, even when nothing there is healthy.
    pub fn eligible(&self, i: usize, now_ms: u64) -> bool {
        if !self.is_up(i, now_ms) {
            return false;
        }
        let Some((policy, min_weight)) = self.locality else {
            return true;
        };
        let tier = self.tier(i);
        if tier == Tier::Zone {
            return true;
        }
        let has_zone = self.same_zone.iter().any(|z| *z);
        if has_zone && self.up_weight(now_ms, Tier::Zone) >= min_weight {
            return false;
        }
        match tier {
            Tier::Zone | Tier::Region => true,
            Tier::Remote => {
                policy == crate::config::Locality::PreferLocal
                    && self.up_weight(now_ms, Tier::Region) < min_weight
            }
        }
    }

    /// Sum of the weights of healthy targets in this node's region (its
    /// zone included).
    pub fn local_up_weight(&self, now_ms: u64) -> u32 {
        self.up_weight(now_ms, Tier::Region)
    }

    /// Sum of the weights of healthy targets at `tier` or nearer.
    fn up_weight(&self, now_ms: u64, within: Tier) -> u32 {
        self.targets
            .iter()
            .enumerate()
            .filter(|(i, t)| self.tier(*i) <= within && t.health.is_up(now_ms))
            .map(|(_, t)| t.weight)
            .sum()
    }

    /// The weight of the targets the cluster's merged health view holds
    /// up, and the weight of all targets (drained, weight-0 targets count
    /// in neither). One relaxed atomic load per target, no lock: dynamic
    /// limits read it on the request path. A node's own passive failures
    /// are left out, so every node of a cluster computes the same value.
    pub fn cluster_healthy_weight(&self) -> (u64, u64) {
        self.targets.iter().fold((0, 0), |(up, all), t| {
            let w = u64::from(t.weight);
            let healthy = if t.health.is_cluster_down() { 0 } else { w };
            (up + healthy, all + w)
        })
    }

    /// Records a failed attempt on target `i`, logging when it goes down.
    pub fn record_failure(&self, i: usize, reason: &str) {
        let t = &self.targets[i];
        if t.health
            .record_failure(self.max_fails, self.fail_timeout, mono_ms())
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
    /// A target with weight 0 is drained: its cookie no longer pins.
    pub fn sticky_target(&self, value: &str) -> Option<usize> {
        self.targets
            .iter()
            .position(|t| t.sticky_id == value && t.weight > 0)
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

/// What shapes a target's pool. Two upstreams naming the same address with
/// the same settings share one pool.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: String,
    settings: PoolSettings,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PoolSettings {
    h2: bool,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl PoolSettings {
    fn of(cfg: &UpstreamConfig) -> Self {
        PoolSettings {
            h2: cfg.scheme == UpstreamScheme::H2c,
            max_idle: cfg.keepalive.max_idle,
            idle_timeout: cfg.keepalive.idle_timeout,
            connect_timeout: cfg.timeouts.connect,
        }
    }
}

/// State that outlives one config snapshot: connection pools and target
/// health, looked up by what shapes them.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<TargetPool>>>,
    health: Mutex<HashMap<(String, String), Arc<TargetHealth>>>,
}

impl Pools {
    /// Builds the run-time upstream for a config, reusing pools and health
    /// state where they fit.
    ///
    /// `region` and `zone` are this node's (empty when it has none):
    /// targets labelled with them are near for `locality`.
    pub fn upstream(
        &self,
        cfg: &UpstreamConfig,
        region: &str,
        zone: &str,
    ) -> Result<Upstream, ConfigErrors> {
        let settings = PoolSettings::of(cfg);
        let targets = {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            cfg.targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let bad = || {
                        ConfigErrors::one(
                            format!("upstream `{}`.targets[{i}].addr", cfg.id),
                            format!("`{}` is not a valid host:port", t.addr),
                        )
                    };
                    let authority: Authority = t.addr.parse().map_err(|_| bad())?;
                    let host_value = HeaderValue::from_str(&t.addr).map_err(|_| bad())?;
                    let h = health
                        .entry((cfg.id.clone(), t.addr.clone()))
                        .or_default()
                        .clone();
                    let key = PoolKey {
                        addr: t.addr.clone(),
                        settings,
                    };
                    let pool = pools
                        .entry(key)
                        .or_insert_with(|| Arc::new(TargetPool::new(t.addr.clone(), settings)))
                        .clone();
                    Ok(Target {
                        addr: t.addr.clone(),
                        socket: t.addr.parse().ok(),
                        authority,
                        host_value,
                        sticky_id: sticky_id(&t.addr),
                        weight: t.weight,
                        region: t.region.clone(),
                        zone: t.zone.clone(),
                        health: h,
                        pool,
                    })
                })
                .collect::<Result<Vec<_>, ConfigErrors>>()?
        };
        let b = &cfg.retry_budget;
        let policy_on = cfg.locality != crate::config::Locality::None;
        let by_region =
            policy_on && !region.is_empty() && cfg.targets.iter().any(|t| !t.region.is_empty());
        let by_zone =
            policy_on && !zone.is_empty() && cfg.targets.iter().any(|t| !t.zone.is_empty());
        let local: Vec<bool> = cfg
            .targets
            .iter()
            .map(|t| !by_region || t.region.is_empty() || t.region == region)
            .collect();
        let same_zone: Vec<bool> = cfg
            .targets
            .iter()
            .zip(&local)
            .map(|(t, &local)| by_zone && local && (t.zone.is_empty() || t.zone == zone))
            .collect();
        let locality = (by_region || by_zone).then_some((cfg.locality, cfg.locality_min_weight));
        Ok(Upstream {
            id: cfg.id.clone(),
            targets,
            balancer: Balancer::new(&cfg.balancer, &cfg.targets),
            scheme: Scheme::HTTP,
            h2: settings.h2,
            timeouts: cfg.timeouts.clone(),
            retries: cfg.retries,
            budget: TpsBudget::new(b.ttl, b.min_per_sec, b.ratio),
            max_fails: cfg.passive_health.max_fails,
            fail_timeout: cfg.passive_health.fail_timeout,
            sticky: cfg.sticky.clone(),
            health_check: cfg.health_check.clone(),
            locality,
            local,
            same_zone,
        })
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
        let keys: std::collections::HashSet<PoolKey> = upstreams
            .iter()
            .flat_map(|u| {
                let settings = PoolSettings::of(u);
                u.targets.iter().map(move |t| PoolKey {
                    addr: t.addr.clone(),
                    settings,
                })
            })
            .collect();
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keys.contains(k));
    }
}

// === impl TargetPool ===

/// Why an attempt failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the target could be made; the request never left,
    /// so sending it elsewhere is safe for any method.
    #[error("connect to {addr} failed: {reason}")]
    Connect {
        /// The target.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The exchange failed on an established connection.
    #[error("request to {addr} failed: {source}")]
    Request {
        /// The target.
        addr: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
}

impl SendError {
    /// True when the target was never reached.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }
}

/// Keep-alive connections to one target.
///
/// HTTP/1.1: a stack of idle connections, most recently used on top, at
/// most `max_idle` of them. A connection returns to the stack when the
/// response body it carried has been read to its end ([`PooledConn`]);
/// one whose exchange ended any other way is closed. HTTP/2: one shared
/// connection that every request multiplexes over.
///
/// Idle connections are closed by a reaper task that runs while the pool
/// holds any, every `idle_timeout / 2`: a connection goes once it has sat
/// idle for three ticks, so between `idle_timeout` and 1.5 × `idle_timeout`.
/// Counting ticks rather than reading the clock keeps the request path free
/// of clock reads.
pub struct TargetPool {
    addr: String,
    settings: PoolSettings,
    idle: Mutex<Idle>,
    /// Held while an HTTP/2 connection is being made, so that concurrent
    /// requests wait for it and share it rather than each opening one.
    h2_connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Idle {
    h1: Vec<(http1::SendRequest<ReqBody>, u64)>,
    h2: Option<(http2::SendRequest<ReqBody>, u64)>,
    /// Reaper ticks so far.
    epoch: u64,
    reaper_running: bool,
}

impl Idle {
    fn is_empty(&self) -> bool {
        self.h1.is_empty() && self.h2.is_none()
    }
}

/// Ticks an idle connection survives (see [`TargetPool`]).
const IDLE_TICKS: u64 = 3;

enum Conn {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl TargetPool {
    fn new(addr: String, settings: PoolSettings) -> Self {
        TargetPool {
            addr,
            settings,
            idle: Mutex::new(Idle::default()),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req` on a pooled connection, or on a new one. Returns the
    /// response head and, for HTTP/1.1, the connection to hand back once the
    /// body has been read.
    ///
    /// A pooled connection that the target closed before our request was
    /// written is no failure of the target: the request comes back unsent
    /// and goes out again on another connection.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, PooledConn), SendError> {
        loop {
            let (conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                // Boxed: connecting is rare on a warm pool, and its large
                // future would otherwise be part of every request's future
                // (and of every move of it).
                None => (Box::pin(self.connect()).await?, false),
            };
            let sent = match conn {
                Conn::H1(mut tx) => match tx.try_send_request(req).await {
                    Ok(resp) => {
                        return Ok((
                            resp,
                            PooledConn {
                                conn: Some((self.clone(), tx)),
                            },
                        ));
                    }
                    Err(e) => e,
                },
                Conn::H2(mut tx) => match tx.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, PooledConn { conn: None })),
                    Err(e) => e,
                },
            };
            let mut e = sent;
            match e.take_message() {
                Some(r) if reused => req = r,
                _ => {
                    return Err(SendError::Request {
                        addr: self.addr.clone(),
                        source: e.into_error(),
                    });
                }
            }
        }
    }

    /// An idle connection that is still open, if any.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if self.settings.h2 {
            let epoch = idle.epoch;
            match &mut idle.h2 {
                Some((tx, used)) if tx.is_ready() => {
                    *used = epoch;
                    return Some(Conn::H2(tx.clone()));
                }
                Some(_) => idle.h2 = None,
                None => {}
            }
            return None;
        }
        while let Some((tx, _)) = idle.h1.pop() {
            if tx.is_ready() {
                return Some(Conn::H1(tx));
            }
        }
        None
    }

    /// Hands an HTTP/1.1 connection back after a complete exchange.
    fn checkin(self: &Arc<Self>, tx: http1::SendRequest<ReqBody>) {
        if tx.is_closed() {
            return;
        }
        if !tx.is_ready() {
            // The connection task has not caught up with the end of the
            // exchange yet (another worker thread runs it, or the request
            // body is still being sent): wait for it off the request path.
            let pool = Arc::downgrade(self);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut tx = tx;
                    if tx.ready().await.is_ok()
                        && let Some(pool) = pool.upgrade()
                    {
                        pool.push_idle(tx);
                    }
                });
            }
            return;
        }
        self.push_idle(tx);
    }

    fn push_idle(self: &Arc<Self>, tx: http1::SendRequest<ReqBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.h1.len() >= self.settings.max_idle {
            return;
        }
        let epoch = idle.epoch;
        idle.h1.push((tx, epoch));
        self.ensure_reaper(&mut idle);
    }

    fn ensure_reaper(self: &Arc<Self>, idle: &mut Idle) {
        if idle.reaper_running {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        idle.reaper_running = true;
        let tick = (self.settings.idle_timeout / 2).max(Duration::from_millis(1));
        rt.spawn(reap(Arc::downgrade(self), tick));
    }

    /// Opens a connection, bounded by the connect timeout. For HTTP/2, only
    /// one request connects at a time; the others then share its connection.
    async fn connect(self: &Arc<Self>) -> Result<Conn, SendError> {
        if !self.settings.h2 {
            let io = self.connect_tcp().await?;
            let (tx, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| self.connect_error(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::trace!(error = %e, "upstream connection ended with an error");
                }
            });
            return Ok(Conn::H1(tx));
        }
        let _connecting = self.h2_connecting.lock().await;
        if let Some(c) = self.checkout() {
            return Ok(c);
        }
        let io = self.connect_tcp().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| self.connect_error(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "upstream h2 connection ended with an error");
            }
        });
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let epoch = idle.epoch;
            idle.h2 = Some((tx.clone(), epoch));
            self.ensure_reaper(&mut idle);
        }
        Ok(Conn::H2(tx))
    }

    async fn connect_tcp(&self) -> Result<TokioIo<TcpStream>, SendError> {
        let timeout = self.settings.connect_timeout;
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(
            timeout,
            tokio::net::lookup_host(self.addr.as_str()),
        )
        .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(self.connect_error(format!("dns error: {e}"))),
            Err(_) => return Err(self.connect_error("dns timeout".into())),
        };
        if addrs.is_empty() {
            return Err(self.connect_error("the name resolved to no address".into()));
        }
        // Like most proxies, split the connect timeout over the addresses a
        // name resolves to, so one black-holed address cannot use it all.
        let each = timeout / addrs.len() as u32;
        let mut last = String::new();
        for addr in addrs {
            match tokio::time::timeout(each, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    let _ = socket2::SockRef::from(&s).set_tcp_keepalive(
                        &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)),
                    );
                    return Ok(TokioIo::new(s));
                }
                Ok(Err(e)) => last = format!("tcp connect error: {e}"),
                Err(_) => {
                    last = format!(
                        "tcp connect timeout after {}",
                        humantime::format_duration(each)
                    )
                }
            }
        }
        Err(self.connect_error(last))
    }

    fn connect_error(&self, reason: String) -> SendError {
        SendError::Connect {
            addr: self.addr.clone(),
            reason,
        }
    }
}

/// Closes connections that sat idle too long; ends when the pool is empty
/// or gone.
async fn reap(pool: Weak<TargetPool>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.epoch += 1;
        let epoch = idle.epoch;
        let fresh = |since: u64| epoch - since < IDLE_TICKS;
        idle.h1
            .retain(|(tx, since)| fresh(*since) && !tx.is_closed());
        if idle
            .h2
            .as_ref()
            .is_some_and(|(tx, used)| !fresh(*used) || tx.is_closed())
        {
            idle.h2 = None;
        }
        if idle.is_empty() {
            idle.reaper_running = false;
            return;
        }
    }
}

/// The HTTP/1.1 connection a response arrived on, handed back to its pool
/// by [`PooledConn::release`] once the response body has been read to its
/// end. Dropped without that, it closes the connection: whatever is left
/// of the exchange on the wire makes it unusable.
pub struct PooledConn {
    conn: Option<(Arc<TargetPool>, http1::SendRequest<ReqBody>)>,
}

impl PooledConn {
    /// Returns the connection to its pool: the exchange on it is complete.
    pub fn release(&mut self) {
        if let Some((pool, tx)) = self.conn.take() {
            pool.checkin(tx);
        }
    }
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

    /// The indices of the targets `eligible` allows.
    fn allowed(up: &Upstream) -> Vec<usize> {
        (0..up.targets.len())
            .filter(|&i| up.eligible(i, 0))
            .collect()
    }

    fn zoned(locality: &str, region: &str, zone: &str) -> Upstream {
        let cfg: UpstreamConfig = serde_yaml_ng::from_str(&format!(
            "id: u\nlocality: {locality}\ntargets:\n  - {{addr: \"10.0.0.1:80\", region: eu, zone: eu-1}}\n  - {{addr: \"10.0.0.2:80\", region: eu, zone: eu-2}}\n  - {{addr: \"10.0.0.3:80\", region: eu}}\n  - {{addr: \"10.0.0.4:80\", region: us, zone: us-1}}\n"
        ))
        .expect("upstream config");
        Pools::default()
            .upstream(&cfg, region, zone)
            .expect("builds")
    }

    #[test]
    fn locality_prefers_the_zone_then_the_region_then_spills_over() {
        // Target 2 has no zone label: it counts as in every zone of eu.
        let up = zoned("prefer-local", "eu", "eu-1");
        assert_eq!(allowed(&up), [0, 2]);
        up.targets[0].health.set_cluster_down(true);
        assert_eq!(allowed(&up), [2]);
        up.targets[2].health.set_cluster_down(true);
        assert_eq!(allowed(&up), [1], "the rest of the region");
        up.targets[1].health.set_cluster_down(true);
        assert_eq!(allowed(&up), [3], "other regions last");
        up.targets[0].health.set_cluster_down(false);
        assert_eq!(allowed(&up), [0], "back home as soon as it returns");

        let strict = zoned("strict-local", "eu", "eu-1");
        for t in &strict.targets[..3] {
            t.health.set_cluster_down(true);
        }
        assert!(allowed(&strict).is_empty(), "strict-local stays in eu");
        strict.targets[1].health.set_cluster_down(false);
        assert_eq!(allowed(&strict), [1]);

        assert_eq!(allowed(&zoned("none", "eu", "eu-1")), [0, 1, 2, 3]);
        // Without a zone, the region alone; without a region, the zone
        // alone (every region counts as the node's).
        assert_eq!(allowed(&zoned("prefer-local", "eu", "")), [0, 1, 2]);
        assert_eq!(allowed(&zoned("prefer-local", "", "eu-2")), [1, 2]);
        assert_eq!(allowed(&zoned("prefer-local", "", "")), [0, 1, 2, 3]);
    }

    #[test]
    fn sticky_ids_are_stable() {
        assert_eq!(sticky_id("127.0.0.1:8080"), sticky_id("127.0.0.1:8080"));
        assert_ne!(sticky_id("127.0.0.1:8080"), sticky_id("127.0.0.1:8081"));
    }
}
