//! Prometheus metrics: one [`Metrics`] per process, recorded on the request
//! path and encoded at scrape time.
//!
//! Names follow the OpenTelemetry HTTP semantic conventions mapped to
//! Prometheus (`http.server.request.duration` becomes
//! `http_server_request_duration_seconds`); weir's own series and labels
//! start with `weir_`. `docs/observability.md` lists every series.
//!
//! Label cardinality is bounded twice. Label values that come from code
//! (method, status class, cache status, decision) are mapped onto small
//! fixed sets before they reach a metric. Values that come from config
//! (route, service, upstream, target) are bounded by the config, and each
//! family also caps its distinct label sets ([`DEFAULT_MAX_SERIES`]): past
//! the cap, new config-derived values are folded into `other` and counted
//! in `weir_metrics_series_folded_total`. Raw paths, client addresses and
//! request ids are never labels.
//!
//! Recording does not lock or allocate once a label set exists: a family is
//! an immutable map published with `arc_swap` and looked up with borrowed
//! `&str` keys; only the first sighting of a label set takes the slow path.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::Equivalent;
use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::MetricsConfig;
use crate::process::{PROCESS_METRICS, ProcessCollector};

/// Distinct label sets a family keeps before folding new ones into `other`.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// The value that replaces a config-derived label past the series cap.
pub const OTHER: &str = "other";

/// Config-derived label values longer than this are folded into `other`:
/// config ids are short, so a long one is a bug, not a name.
const MAX_LABEL_VALUE_LEN: usize = 128;

/// A static label pair, for series whose labels come from code.
type StaticLabel = [(&'static str, &'static str); 1];

// === public recording types ===

/// One finished request, as the proxy's log phase sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestMetrics<'a> {
    /// Matched route id; `""` when no route matched.
    pub route: &'a str,
    /// Service id; `""` when the route has none.
    pub service: &'a str,
    /// Upstream id; `""` when no upstream was chosen.
    pub upstream: &'a str,
    /// Request method (unknown methods count as `_OTHER`).
    pub method: &'a Method,
    /// Status sent to the client.
    pub status: u16,
    /// From the first request byte to the last response byte.
    pub duration: Duration,
    /// Time spent waiting for upstream response headers, over all attempts;
    /// `None` when no upstream was contacted.
    pub upstream_duration: Option<Duration>,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
}

/// One attempt to reach a target.
#[derive(Debug, Clone, Copy)]
pub struct AttemptMetrics<'a> {
    /// Upstream id.
    pub upstream: &'a str,
    /// Target address as configured (`host:port`).
    pub target: &'a str,
    /// How the attempt ended.
    pub outcome: AttemptOutcome,
    /// From sending the request to response headers (or the failure).
    pub duration: Duration,
}

/// How an attempt at a target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The target answered with this status.
    Status(u16),
    /// The connection could not be made.
    ConnectError,
    /// No response headers within the per-try timeout.
    Timeout,
    /// Anything else (reset, protocol error).
    Error,
}

impl AttemptOutcome {
    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Status(s) => status_class(s),
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Error => "error",
        }
    }
}

/// Why a request was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The previous target refused or could not be reached.
    ConnectError,
    /// The previous target timed out.
    Timeout,
    /// The previous target answered 502, 503 or 504.
    Status,
    /// The previous attempt failed otherwise (reset, protocol error).
    Error,
}

impl RetryReason {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectError => "connect_error",
            RetryReason::Timeout => "timeout",
            RetryReason::Status => "status",
            RetryReason::Error => "error",
        }
    }
}

/// A rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitDecision {
    /// Under the limit.
    Allowed,
    /// Over the limit: answered 429.
    Rejected,
}

impl RateLimitDecision {
    /// The `decision` label value (and access-log value).
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitDecision::Allowed => "allowed",
            RateLimitDecision::Rejected => "rejected",
        }
    }
}

/// What the response cache did for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from cache.
    Hit,
    /// Not in cache; fetched and possibly stored.
    Miss,
    /// In cache but expired; fetched again.
    Expired,
    /// Expired entry served while it is refreshed or the upstream fails.
    Stale,
    /// Expired entry confirmed fresh by the upstream (304).
    Revalidated,
    /// The request was not cacheable.
    Bypass,
}

impl CacheStatus {
    /// The `cache_status` label value (and access-log value).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Expired => "expired",
            CacheStatus::Stale => "stale",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// `1xx`..`5xx`; anything outside 100..=599 is `other`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => OTHER,
    }
}

/// The method label: the nine standard methods, else `_OTHER` (the
/// OpenTelemetry convention), so clients cannot invent series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// Exposition formats `/metrics` can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper asks for it (Prometheus does), else the
    /// Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

// === label-set families ===

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key<const N: usize>([Box<str>; N]);

/// A borrowed key: hashes exactly like [`Key`] (both hash as a slice of
/// `str`), so lookups need no allocation.
struct Lookup<'a, const N: usize>([&'a str; N]);

impl<const N: usize> Hash for Lookup<'_, N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl<const N: usize> Equivalent<Key<N>> for Lookup<'_, N> {
    #[inline]
    fn equivalent(&self, key: &Key<N>) -> bool {
        self.0
            .iter()
            .zip(key.0.iter())
            .all(|(a, b)| short_eq(a.as_bytes(), b.as_bytes()))
    }
}

/// Equality for short label values, inline. `str ==` calls libc's
/// `memcmp`, which measured ~30 ns a call on our machines (its AVX-512
/// variant); five of those were most of `record_request`'s cost.
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (mut wx, mut wy) = ([0u8; 8], [0u8; 8]);
        wx.copy_from_slice(x);
        wy.copy_from_slice(y);
        if wx != wy {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

type SeriesMap<const N: usize, V> = hashbrown::HashMap<Key<N>, Arc<V>>;

/// One exposed metric of a family whose series carry several metrics.
struct Column<V> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    get: fn(&V) -> &dyn EncodeMetric,
}

/// Series keyed by `N` label values, each holding a `V` (one metric or a
/// bundle recorded together). Reads are lock-free; inserts copy the map,
/// which is fine because inserts stop once every label set has been seen.
struct Table<const N: usize, V> {
    family: &'static str,
    labels: [&'static str; N],
    /// Which labels come from config and fold into `other` past the cap.
    fold: [bool; N],
    cap: usize,
    series: ArcSwap<SeriesMap<N, V>>,
    insert_lock: Mutex<()>,
    make: Box<dyn Fn() -> V + Send + Sync>,
    columns: Vec<Column<V>>,
    folded: Counter,
}

impl<const N: usize, V: Send + Sync + 'static> Table<N, V> {
    /// Calls `f` with the series for `values`, creating it (or folding it
    /// into `other`) on first sight.
    #[inline]
    fn with<R>(&self, values: [&str; N], f: impl FnOnce(&V) -> R) -> R {
        let values = self.sanitize(values);
        let map = self.series.load();
        if let Some(v) = map.get(&Lookup(values)) {
            return f(v);
        }
        if map.len() >= self.cap {
            self.folded.inc();
            let folded = self.folded_values(values);
            if let Some(v) = map.get(&Lookup(folded)) {
                return f(v);
            }
            drop(map);
            return f(&self.insert(folded, true));
        }
        drop(map);
        f(&self.insert(values, false))
    }

    fn sanitize<'a>(&self, mut values: [&'a str; N]) -> [&'a str; N] {
        for (v, fold) in values.iter_mut().zip(self.fold) {
            if fold && v.len() > MAX_LABEL_VALUE_LEN {
                *v = OTHER;
            }
        }
        values
    }

    fn folded_values<'a>(&self, mut values: [&'a str; N]) -> [&'a str; N] {
        for (v, fold) in values.iter_mut().zip(self.fold) {
            if fold {
                *v = OTHER;
            }
        }
        values
    }

    #[cold]
    fn insert(&self, values: [&str; N], folded: bool) -> Arc<V> {
        let _guard = self
            .insert_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.series.load_full();
        if let Some(v) = current.get(&Lookup(values)) {
            return v.clone();
        }
        // Another thread may have filled the family since the caller looked.
        let values = if !folded && current.len() >= self.cap {
            self.folded.inc();
            let f = self.folded_values(values);
            if let Some(v) = current.get(&Lookup(f)) {
                return v.clone();
            }
            f
        } else {
            values
        };
        let v = Arc::new((self.make)());
        let mut next = SeriesMap::clone(&current);
        next.insert(Key(values.map(Box::from)), v.clone());
        self.series.store(Arc::new(next));
        v
    }

    fn remove(&self, values: [&str; N]) {
        let _guard = self
            .insert_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.series.load_full();
        if current.contains_key(&Lookup(values)) {
            let mut next = SeriesMap::clone(&current);
            next.remove(&Lookup(values));
            self.series.store(Arc::new(next));
        }
    }

    fn len(&self) -> usize {
        self.series.load().len()
    }

    /// The metric names this family exposes.
    fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.name).collect()
    }
}

impl<const N: usize, V> fmt::Debug for Table<N, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("family", &self.family)
            .field("labels", &self.labels)
            .field("series", &self.series.load().len())
            .finish()
    }
}

impl<const N: usize, V: Send + Sync + 'static> Collector for Table<N, V> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let map = self.series.load_full();
        if map.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<(&Key<N>, &Arc<V>)> = map.iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for col in &self.columns {
            let mut metric = encoder.encode_descriptor(col.name, col.help, None, col.kind)?;
            for (key, v) in &rows {
                let labels: [(&str, &str); N] =
                    std::array::from_fn(|i| (self.labels[i], &*key.0[i]));
                let series = metric.encode_family(&labels)?;
                (col.get)(v).encode(series)?;
            }
        }
        Ok(())
    }
}

/// A counter with `N` labels, created by [`Metrics::counter_vec`]. Every
/// label value is treated as config-derived: bounded by the family cap.
#[derive(Clone, Debug)]
pub struct CounterVec<const N: usize>(Arc<Table<N, Counter>>);

impl<const N: usize> CounterVec<N> {
    /// Adds one to the series for `values` (in label order).
    pub fn inc(&self, values: [&str; N]) {
        self.0.with(values, |c| c.inc());
    }

    /// Adds `n` to the series for `values`.
    pub fn inc_by(&self, values: [&str; N], n: u64) {
        self.0.with(values, |c| c.inc_by(n));
    }
}

/// A gauge with `N` labels, created by [`Metrics::gauge_vec`].
#[derive(Clone, Debug)]
pub struct GaugeVec<const N: usize>(Arc<Table<N, Gauge>>);

impl<const N: usize> GaugeVec<N> {
    /// Sets the series for `values` (in label order).
    pub fn set(&self, values: [&str; N], v: i64) {
        self.0.with(values, |g| g.set(v));
    }

    /// Drops the series for `values` (a member left, a target was removed).
    pub fn remove(&self, values: [&str; N]) {
        self.0.remove(values);
    }
}

// === series bundles ===

/// Everything recorded once per request, under one label set.
struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    upstream_duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
}

/// Cache lookups and the bytes they served.
#[derive(Default)]
struct CacheSeries {
    requests: Counter,
    bytes: Counter,
}

fn counter_column<V>(
    name: &'static str,
    help: &'static str,
    get: fn(&V) -> &dyn EncodeMetric,
) -> Column<V> {
    Column {
        name,
        help,
        kind: MetricType::Counter,
        get,
    }
}

fn histogram_column<V>(
    name: &'static str,
    help: &'static str,
    get: fn(&V) -> &dyn EncodeMetric,
) -> Column<V> {
    Column {
        name,
        help,
        kind: MetricType::Histogram,
        get,
    }
}

fn as_metric<M: EncodeMetric>(m: &M) -> &dyn EncodeMetric {
    m
}

// === Metrics ===

/// Every metric weir exposes. Share it as `Arc<Metrics>`; all recording
/// methods take `&self`.
pub struct Metrics {
    enabled: bool,
    buckets: Arc<[f64]>,
    max_series: usize,
    registry: Mutex<Registry>,
    /// Names in use, so a late registration cannot shadow a series.
    names: Mutex<HashMap<&'static str, Box<dyn Any + Send + Sync>>>,
    folded: Family<StaticLabel, Counter>,

    requests: Arc<Table<5, RequestSeries>>,
    active_requests: Gauge,
    attempts: Arc<Table<3, Histogram>>,
    target_up: Arc<Table<2, Gauge>>,
    retries: Arc<Table<2, Counter>>,
    retry_budget_exhausted: Arc<Table<1, Counter>>,
    auth_failures: Arc<Table<2, Counter>>,
    ratelimit: Arc<Table<2, Counter>>,
    cache: Arc<Table<2, CacheSeries>>,
    access_log_lines: Counter,
    access_log_dropped: Family<StaticLabel, Counter>,
    spans_dropped: Counter,
    config_generation: Gauge,
    config_reloads: Family<StaticLabel, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .field("buckets", &self.buckets)
            .field("max_series", &self.max_series)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&MetricsConfig::default())
    }
}

/// Fallback when the configured buckets are unusable (config validation
/// rejects them first; this keeps a library caller from getting a histogram
/// with only `+Inf`).
fn sane_buckets(configured: &[f64]) -> Arc<[f64]> {
    let mut b: Vec<f64> = configured
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    b.sort_by(f64::total_cmp);
    b.dedup();
    if b.is_empty() {
        b = MetricsConfig::default().latency_buckets;
    }
    b.into()
}

impl Metrics {
    /// Builds every metric with the configured latency buckets and the
    /// default per-family series cap.
    pub fn new(config: &MetricsConfig) -> Metrics {
        Metrics::with_max_series(config, DEFAULT_MAX_SERIES)
    }

    /// Like [`Metrics::new`] with a different cap on distinct label sets
    /// per family (tests use a small one).
    pub fn with_max_series(config: &MetricsConfig, max_series: usize) -> Metrics {
        let buckets = sane_buckets(&config.latency_buckets);
        let max_series = max_series.max(1);
        let mut reg = Registry::default();
        let folded = Family::<StaticLabel, Counter>::default();
        let mut names: HashMap<&'static str, Box<dyn Any + Send + Sync>> = HashMap::new();

        let b = buckets.clone();
        let requests = Arc::new(Table {
            family: "http_server_request",
            labels: [
                "weir_route",
                "weir_service",
                "http_request_method",
                "http_response_status_class",
                "weir_upstream",
            ],
            fold: [true, true, false, false, true],
            cap: max_series,
            series: ArcSwap::from_pointee(SeriesMap::new()),
            insert_lock: Mutex::new(()),
            make: Box::new(move || RequestSeries {
                requests: Counter::default(),
                duration: Histogram::new(b.iter().copied()),
                upstream_duration: Histogram::new(b.iter().copied()),
                request_bytes: Counter::default(),
                response_bytes: Counter::default(),
            }),
            columns: vec![
                counter_column(
                    "weir_http_server_requests",
                    "Requests served, by route, method, status class and upstream.",
                    |s: &RequestSeries| as_metric(&s.requests),
                ),
                histogram_column(
                    "http_server_request_duration_seconds",
                    "Client-facing request duration, first request byte to last response byte.",
                    |s: &RequestSeries| as_metric(&s.duration),
                ),
                histogram_column(
                    "weir_http_server_upstream_duration_seconds",
                    "Part of the request spent waiting for upstream response headers, all attempts.",
                    |s: &RequestSeries| as_metric(&s.upstream_duration),
                ),
                counter_column(
                    "weir_http_server_request_body_bytes",
                    "Request body bytes received from clients.",
                    |s: &RequestSeries| as_metric(&s.request_bytes),
                ),
                counter_column(
                    "weir_http_server_response_body_bytes",
                    "Response body bytes sent to clients.",
                    |s: &RequestSeries| as_metric(&s.response_bytes),
                ),
            ],
            folded: folded
                .get_or_create(&[("family", "http_server_request")])
                .clone(),
        });

        let b = buckets.clone();
        let attempts = Arc::new(Table {
            family: "http_client_request",
            labels: ["weir_upstream", "weir_target", "outcome"],
            fold: [true, true, false],
            cap: max_series,
            series: ArcSwap::from_pointee(SeriesMap::new()),
            insert_lock: Mutex::new(()),
            make: Box::new(move || Histogram::new(b.iter().copied())),
            columns: vec![histogram_column(
                "http_client_request_duration_seconds",
                "Duration of each attempt at an upstream target, until response headers or failure.",
                as_metric::<Histogram>,
            )],
            folded: folded
                .get_or_create(&[("family", "http_client_request")])
                .clone(),
        });

        let target_up = Arc::new(Table {
            family: "weir_upstream_target_up",
            labels: ["weir_upstream", "weir_target"],
            fold: [true, true],
            cap: max_series,
            series: ArcSwap::from_pointee(SeriesMap::new()),
            insert_lock: Mutex::new(()),
            make: Box::new(Gauge::default),
            columns: vec![Column {
                name: "weir_upstream_target_up",
                help: "Whether this node sends traffic to the target (1) or has ejected it (0).",
                kind: MetricType::Gauge,
                get: as_metric::<Gauge>,
            }],
            folded: folded
                .get_or_create(&[("family", "weir_upstream_target_up")])
                .clone(),
        });

        let retries = Arc::new(new_counter_table(
            &folded,
            max_series,
            "weir_upstream_retries",
            "Requests sent again to another target, by upstream and reason.",
            ["weir_upstream", "reason"],
            [true, false],
        ));
        let retry_budget_exhausted = Arc::new(new_counter_table(
            &folded,
            max_series,
            "weir_upstream_retry_budget_exhausted",
            "Retries that were allowed by policy but refused by the retry budget.",
            ["weir_upstream"],
            [true],
        ));
        let auth_failures = Arc::new(new_counter_table(
            &folded,
            max_series,
            "weir_auth_failures",
            "Requests refused by an authentication plugin, by route and reason.",
            ["weir_route", "reason"],
            [true, false],
        ));
        let ratelimit = Arc::new(new_counter_table(
            &folded,
            max_series,
            "weir_ratelimit_decisions",
            "Rate-limit decisions, by route and decision (allowed, rejected).",
            ["weir_route", "decision"],
            [true, false],
        ));
        let cache = Arc::new(Table {
            family: "weir_cache",
            labels: ["weir_route", "cache_status"],
            fold: [true, false],
            cap: max_series,
            series: ArcSwap::from_pointee(SeriesMap::new()),
            insert_lock: Mutex::new(()),
            make: Box::new(CacheSeries::default),
            columns: vec![
                counter_column(
                    "weir_cache_requests",
                    "Cache lookups, by route and cache status (hit, miss, expired, stale, revalidated, bypass).",
                    |s: &CacheSeries| as_metric(&s.requests),
                ),
                counter_column(
                    "weir_cache_response_body_bytes",
                    "Response body bytes served, by route and cache status.",
                    |s: &CacheSeries| as_metric(&s.bytes),
                ),
            ],
            folded: folded.get_or_create(&[("family", "weir_cache")]).clone(),
        });

        let tables: [(Vec<&'static str>, Box<dyn Collector>); 9] = [
            (requests.names(), Box::new(requests.clone())),
            (attempts.names(), Box::new(attempts.clone())),
            (target_up.names(), Box::new(target_up.clone())),
            (retries.names(), Box::new(retries.clone())),
            (
                retry_budget_exhausted.names(),
                Box::new(retry_budget_exhausted.clone()),
            ),
            (auth_failures.names(), Box::new(auth_failures.clone())),
            (ratelimit.names(), Box::new(ratelimit.clone())),
            (cache.names(), Box::new(cache.clone())),
            (PROCESS_METRICS.to_vec(), Box::new(ProcessCollector)),
        ];
        for (metric_names, collector) in tables {
            for name in metric_names {
                names.insert(name, Box::new(()));
            }
            reg.register_collector(collector);
        }

        let active_requests = Gauge::default();
        let access_log_lines = Counter::default();
        let access_log_dropped = Family::<StaticLabel, Counter>::default();
        let spans_dropped = Counter::default();
        let config_generation = Gauge::default();
        let config_reloads = Family::<StaticLabel, Counter>::default();
        let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);

        let mut register = |name: &'static str, help: &'static str, m: Box<dyn RegisterMetric>| {
            names.insert(name, Box::new(()));
            m.register(&mut reg, name, help);
        };
        register(
            "http_server_active_requests",
            "Requests in flight on the proxy listener.",
            Box::new(active_requests.clone()),
        );
        register(
            "weir_access_log_lines",
            "Access-log lines written.",
            Box::new(access_log_lines.clone()),
        );
        register(
            "weir_access_log_dropped",
            "Access-log lines lost, by reason (queue_full, write_error).",
            Box::new(access_log_dropped.clone()),
        );
        register(
            "weir_trace_spans_dropped",
            "Spans dropped because the export queue was full or export failed.",
            Box::new(spans_dropped.clone()),
        );
        register(
            "weir_config_generation",
            "Generation of the config snapshot in use (1 = the first this process built).",
            Box::new(config_generation.clone()),
        );
        register(
            "weir_config_reloads",
            "Config reloads, by result (ok, failed).",
            Box::new(config_reloads.clone()),
        );
        register(
            "weir_metrics_series_folded",
            "Recordings folded into `other` because a family reached its series cap.",
            Box::new(folded.clone()),
        );
        register(
            "weir_build_info",
            "Always 1; the version label says which weir this is.",
            Box::new(build_info),
        );

        Metrics {
            enabled: config.enabled,
            buckets,
            max_series,
            registry: Mutex::new(reg),
            names: Mutex::new(names),
            folded,
            requests,
            active_requests,
            attempts,
            target_up,
            retries,
            retry_budget_exhausted,
            auth_failures,
            ratelimit,
            cache,
            access_log_lines,
            access_log_dropped,
            spans_dropped,
            config_generation,
            config_reloads,
        }
    }

    /// Whether `/metrics` should be served (`metrics.enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The latency histogram bucket bounds in use, in seconds.
    pub fn latency_buckets(&self) -> &[f64] {
        &self.buckets
    }

    // --- the request path ---

    /// Records one finished request. Call once, in the log phase.
    #[inline]
    pub fn record_request(&self, r: &RequestMetrics<'_>) {
        let labels = [
            r.route,
            r.service,
            method_label(r.method),
            status_class(r.status),
            r.upstream,
        ];
        self.requests.with(labels, |s| {
            s.requests.inc();
            s.duration.observe(r.duration.as_secs_f64());
            if let Some(u) = r.upstream_duration {
                s.upstream_duration.observe(u.as_secs_f64());
            }
            if r.bytes_in > 0 {
                s.request_bytes.inc_by(r.bytes_in);
            }
            if r.bytes_out > 0 {
                s.response_bytes.inc_by(r.bytes_out);
            }
        });
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn active_request(&self) -> ActiveRequest {
        self.active_requests.inc();
        ActiveRequest(self.active_requests.clone())
    }

    /// Records one attempt at a target (every try, including failed ones).
    #[inline]
    pub fn record_attempt(&self, a: &AttemptMetrics<'_>) {
        self.attempts
            .with([a.upstream, a.target, a.outcome.as_str()], |h| {
                h.observe(a.duration.as_secs_f64())
            });
    }

    /// Records that a request is being sent again.
    pub fn record_retry(&self, upstream: &str, reason: RetryReason) {
        self.retries.with([upstream, reason.as_str()], |c| c.inc());
    }

    /// Records a retry refused by the retry budget.
    pub fn record_retry_budget_exhausted(&self, upstream: &str) {
        self.retry_budget_exhausted.with([upstream], |c| c.inc());
    }

    /// Publishes whether this node currently sends traffic to a target.
    pub fn set_target_health(&self, upstream: &str, target: &str, up: bool) {
        self.target_up
            .with([upstream, target], |g| g.set(i64::from(up)));
    }

    /// Drops a target's health series (the target left the config).
    pub fn remove_target_health(&self, upstream: &str, target: &str) {
        self.target_up.remove([upstream, target]);
    }

    /// Records a request refused by authentication. `reason` is a fixed
    /// word chosen by the plugin (`missing`, `invalid`, `expired`, ...),
    /// never text from the request.
    pub fn record_auth_failure(&self, route: &str, reason: &'static str) {
        self.auth_failures.with([route, reason], |c| c.inc());
    }

    /// Records a rate-limit decision.
    pub fn record_ratelimit(&self, route: &str, decision: RateLimitDecision) {
        self.ratelimit.with([route, decision.as_str()], |c| c.inc());
    }

    /// Records a cache lookup and the response bytes it served.
    pub fn record_cache(&self, route: &str, status: CacheStatus, bytes: u64) {
        self.cache.with([route, status.as_str()], |s| {
            s.requests.inc();
            if bytes > 0 {
                s.bytes.inc_by(bytes);
            }
        });
    }

    // --- background work ---

    /// Counts an access-log line dropped because the queue was full.
    pub fn inc_access_log_dropped(&self) {
        self.access_log_dropped
            .get_or_create(&[("reason", "queue_full")])
            .inc();
    }

    /// Counts access-log lines lost to a write error.
    pub fn inc_access_log_write_errors(&self, n: u64) {
        self.access_log_dropped
            .get_or_create(&[("reason", "write_error")])
            .inc_by(n);
    }

    /// Counts access-log lines written.
    pub fn inc_access_log_lines(&self, n: u64) {
        self.access_log_lines.inc_by(n);
    }

    /// Counts spans the trace exporter dropped.
    pub fn inc_spans_dropped(&self, n: u64) {
        self.spans_dropped.inc_by(n);
    }

    /// Publishes the generation of the config snapshot in use.
    pub fn set_config_generation(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Counts a config reload attempt.
    pub fn record_config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.config_reloads
            .get_or_create(&[("result", result)])
            .inc();
    }

    // --- adding metrics from other crates ---

    /// Registers (or returns the already registered) counter `name`.
    /// Give the name without `_total`; the exposition adds it.
    ///
    /// # Panics
    /// If `name` is not a valid metric name or is already used by a metric
    /// of another kind: both are programming errors caught at start-up.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.extra(
            name,
            || {
                let c = Counter::default();
                (Box::new(c.clone()) as Box<dyn RegisterMetric>, c)
            },
            help,
        )
    }

    /// Registers (or returns) gauge `name`, e.g.
    /// `metrics.gauge("weir_cluster_members", "Live cluster members seen by this node.")`.
    ///
    /// # Panics
    /// As [`Metrics::counter`].
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.extra(
            name,
            || {
                let g = Gauge::default();
                (Box::new(g.clone()) as Box<dyn RegisterMetric>, g)
            },
            help,
        )
    }

    /// Registers (or returns) a histogram `name` over the latency buckets.
    ///
    /// # Panics
    /// As [`Metrics::counter`].
    pub fn latency_histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        let buckets = self.buckets.clone();
        self.extra(
            name,
            move || {
                let h = Histogram::new(buckets.iter().copied());
                (Box::new(h.clone()) as Box<dyn RegisterMetric>, h)
            },
            help,
        )
    }

    /// Registers (or returns) a counter with `N` labels whose values come
    /// from config or membership; the family is capped like the built-in
    /// ones.
    ///
    /// # Panics
    /// As [`Metrics::counter`].
    pub fn counter_vec<const N: usize>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
    ) -> CounterVec<N> {
        let folded = self.folded.get_or_create(&[("family", name)]).clone();
        let cap = self.max_series;
        self.extra(
            name,
            move || {
                let t = Arc::new(new_counter_table_with(
                    folded, cap, name, help, labels, [true; N],
                ));
                (
                    Box::new(CollectorMetric(t.clone())) as Box<dyn RegisterMetric>,
                    CounterVec(t),
                )
            },
            help,
        )
    }

    /// Registers (or returns) a gauge with `N` labels.
    ///
    /// # Panics
    /// As [`Metrics::counter`].
    pub fn gauge_vec<const N: usize>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
    ) -> GaugeVec<N> {
        let folded = self.folded.get_or_create(&[("family", name)]).clone();
        let cap = self.max_series;
        self.extra(
            name,
            move || {
                let t = Arc::new(Table {
                    family: name,
                    labels,
                    fold: [true; N],
                    cap,
                    series: ArcSwap::from_pointee(SeriesMap::new()),
                    insert_lock: Mutex::new(()),
                    make: Box::new(Gauge::default),
                    columns: vec![Column {
                        name,
                        help,
                        kind: MetricType::Gauge,
                        get: as_metric::<Gauge>,
                    }],
                    folded,
                });
                (
                    Box::new(CollectorMetric(t.clone())) as Box<dyn RegisterMetric>,
                    GaugeVec(t),
                )
            },
            help,
        )
    }

    fn extra<H: Clone + Send + Sync + 'static>(
        &self,
        name: &'static str,
        make: impl FnOnce() -> (Box<dyn RegisterMetric>, H),
        help: &'static str,
    ) -> H {
        assert!(
            valid_metric_name(name),
            "metric name `{name}` must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        );
        let name = name.strip_suffix("_total").unwrap_or(name);
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = names.get(name) {
            return existing
                .downcast_ref::<H>()
                .unwrap_or_else(|| {
                    panic!(
                        "metric `{name}` is already registered, as a built-in or as another kind"
                    )
                })
                .clone();
        }
        let (metric, handle) = make();
        metric.register(
            &mut self.registry.lock().unwrap_or_else(PoisonError::into_inner),
            name,
            help,
        );
        names.insert(name, Box::new(handle.clone()));
        handle
    }

    // --- exposition ---

    /// The Prometheus text exposition (format 0.0.4), process metrics
    /// included.
    pub fn encode(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }

    /// The OpenMetrics text exposition.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }

    /// Every family and series, read as data (the Prometheus protobuf
    /// model), for OTLP export: the same reading `/metrics` encodes.
    pub(crate) fn collect(
        &self,
    ) -> Result<
        Vec<prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily>,
        fmt::Error,
    > {
        let reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        prometheus_client::encoding::prometheus_protobuf::encode(&reg)
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::Prometheus => self.encode(),
            Format::OpenMetrics => self.encode_openmetrics(),
        }
    }

    /// Distinct label sets of the per-request family (for tests and
    /// self-checks).
    pub fn request_series(&self) -> usize {
        self.requests.len()
    }
}

/// Keeps `http_server_active_requests` raised while alive.
#[derive(Debug)]
pub struct ActiveRequest(Gauge);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn new_counter_table<const N: usize>(
    folded: &Family<StaticLabel, Counter>,
    cap: usize,
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    fold: [bool; N],
) -> Table<N, Counter> {
    let folded = folded.get_or_create(&[("family", name)]).clone();
    new_counter_table_with(folded, cap, name, help, labels, fold)
}

fn new_counter_table_with<const N: usize>(
    folded: Counter,
    cap: usize,
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    fold: [bool; N],
) -> Table<N, Counter> {
    Table {
        family: name,
        labels,
        fold,
        cap,
        series: ArcSwap::from_pointee(SeriesMap::new()),
        insert_lock: Mutex::new(()),
        make: Box::new(Counter::default),
        columns: vec![counter_column(name, help, as_metric::<Counter>)],
        folded,
    }
}

/// Something that can put itself into a registry under a name.
trait RegisterMetric {
    fn register(self: Box<Self>, reg: &mut Registry, name: &'static str, help: &'static str);
}

impl<M: prometheus_client::registry::Metric> RegisterMetric for M {
    fn register(self: Box<Self>, reg: &mut Registry, name: &'static str, help: &'static str) {
        // The registry ends help texts with a period of its own.
        reg.register(name, help.strip_suffix('.').unwrap_or(help), *self);
    }
}

/// A family that names its own metrics and is registered as a collector.
struct CollectorMetric<C>(Arc<C>);

impl<C: Collector> RegisterMetric for CollectorMetric<C> {
    fn register(self: Box<Self>, reg: &mut Registry, _: &'static str, _: &'static str) {
        reg.register_collector(Box::new(self.0));
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Rewrites OpenMetrics text into the Prometheus text format: counter
/// families are named with their `_total` suffix, and the `# UNIT` and
/// `# EOF` lines go. Everything weir emits is a counter, gauge or
/// histogram, whose samples read the same in both formats.
pub(crate) fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut lines = om.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let is_counter = lines
                .peek()
                .and_then(|l| l.strip_prefix("# TYPE "))
                .and_then(|t| t.strip_prefix(name))
                == Some(" counter");
            if is_counter {
                lines.next();
                out.push_str("# HELP ");
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(help);
                out.push_str("\n# TYPE ");
                out.push_str(name);
                out.push_str("_total counter\n");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

// === the process-wide instance ===

static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();

/// Builds the process-wide metrics from config; the first call wins and
/// later calls return the same instance.
pub fn init_global(config: &MetricsConfig) -> &'static Arc<Metrics> {
    GLOBAL.get_or_init(|| Arc::new(Metrics::new(config)))
}

/// The process-wide metrics (built with the default config if
/// [`init_global`] was not called first).
pub fn global() -> &'static Arc<Metrics> {
    GLOBAL.get_or_init(|| Arc::new(Metrics::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(route: &'a str, method: &'a Method, status: u16) -> RequestMetrics<'a> {
        RequestMetrics {
            route,
            service: "",
            upstream: "up",
            method,
            status,
            duration: Duration::from_millis(3),
            upstream_duration: Some(Duration::from_millis(2)),
            bytes_in: 10,
            bytes_out: 20,
        }
    }

    #[test]
    fn short_eq_matches_str_eq() {
        let words = [
            "",
            "a",
            "ab",
            "route-17",
            "route-18",
            "route-170",
            "a-rather-long-route-id-0",
            "a-rather-long-route-id-1",
        ];
        for a in words {
            for b in words {
                assert_eq!(short_eq(a.as_bytes(), b.as_bytes()), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn status_classes_are_bounded() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(599), "5xx");
        assert_eq!(status_class(0), "other");
        assert_eq!(status_class(600), "other");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_label(&odd), "_OTHER");
    }

    #[test]
    fn label_sets_past_the_cap_fold_into_other() {
        let m = Metrics::with_max_series(&MetricsConfig::default(), 3);
        for i in 0..50 {
            let route = format!("r{i}");
            m.record_request(&request(&route, &Method::GET, 200));
        }
        // Three real label sets, plus the folded one.
        assert_eq!(m.request_series(), 4);
        let text = m.encode();
        assert!(text.contains(r#"weir_http_server_requests_total{weir_route="other",weir_service="other",http_request_method="GET",http_response_status_class="2xx",weir_upstream="other"} 47"#), "{text}");
        assert!(
            text.contains(r#"weir_metrics_series_folded_total{family="http_server_request"} 47"#),
            "{text}"
        );
    }

    #[test]
    fn folding_keeps_code_bounded_labels() {
        let m = Metrics::with_max_series(&MetricsConfig::default(), 1);
        m.record_request(&request("a", &Method::GET, 200));
        m.record_request(&request("b", &Method::POST, 503));
        m.record_request(&request("c", &Method::POST, 503));
        let text = m.encode();
        assert!(text.contains(r#"weir_http_server_requests_total{weir_route="other",weir_service="other",http_request_method="POST",http_response_status_class="5xx",weir_upstream="other"} 2"#), "{text}");
    }

    #[test]
    fn over_long_values_fold_without_growing_the_family() {
        let m = Metrics::default();
        let long = "x".repeat(MAX_LABEL_VALUE_LEN + 1);
        m.record_request(&request(&long, &Method::GET, 200));
        let text = m.encode();
        assert!(!text.contains(&long));
        assert!(text.contains(r#"weir_route="other""#));
    }

    #[test]
    fn histograms_use_the_configured_buckets() {
        let cfg = MetricsConfig {
            enabled: true,
            latency_buckets: vec![0.01, 0.1, 1.0],
            ..MetricsConfig::default()
        };
        let m = Metrics::new(&cfg);
        m.record_request(&RequestMetrics {
            duration: Duration::from_millis(50),
            ..request("r", &Method::GET, 200)
        });
        let text = m.encode();
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_bucket"))
            .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(les, ["0.01", "0.1", "1.0", "+Inf"]);
        assert!(
            text.contains(
                r#"http_server_request_duration_seconds_bucket{le="0.01",weir_route="r""#
            )
        );
        let count_at = |le: &str| -> u64 {
            text.lines()
                .find(|l| {
                    l.starts_with("http_server_request_duration_seconds_bucket")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(count_at("0.01"), 0);
        assert_eq!(count_at("0.1"), 1);
        assert_eq!(count_at("+Inf"), 1);
    }

    #[test]
    fn unusable_buckets_fall_back_to_the_defaults() {
        let cfg = MetricsConfig {
            enabled: true,
            latency_buckets: vec![f64::NAN, -1.0],
            ..MetricsConfig::default()
        };
        let m = Metrics::new(&cfg);
        assert_eq!(
            m.latency_buckets(),
            &MetricsConfig::default().latency_buckets[..]
        );
    }

    #[test]
    fn counters_get_total_in_both_formats() {
        let m = Metrics::default();
        m.inc_access_log_dropped();
        let prom = m.encode();
        assert!(prom.contains("# TYPE weir_access_log_dropped_total counter\n"));
        assert!(prom.contains("weir_access_log_dropped_total{reason=\"queue_full\"} 1\n"));
        assert!(!prom.contains("# EOF"));
        let om = m.encode_openmetrics();
        assert!(om.contains("# TYPE weir_access_log_dropped counter\n"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn help_texts_end_with_one_period() {
        let m = Metrics::default();
        m.record_request(&request("r", &Method::GET, 200));
        let _ = m.counter("weir_test_things", "Things.");
        for line in m.encode().lines().filter(|l| l.starts_with("# HELP")) {
            assert!(line.ends_with('.') && !line.ends_with(".."), "{line}");
        }
    }

    #[test]
    fn format_negotiation_prefers_openmetrics_when_asked() {
        let prom_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prom_accept)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }

    #[test]
    fn extension_metrics_are_one_line_and_idempotent() {
        let m = Metrics::default();
        let members = m.gauge("weir_cluster_members", "Live cluster members.");
        members.set(3);
        let again = m.gauge("weir_cluster_members", "Live cluster members.");
        again.inc();
        let msgs = m.counter_vec("weir_gossip_messages", "Gossip messages.", ["direction"]);
        msgs.inc(["sent"]);
        let text = m.encode();
        assert!(text.contains("weir_cluster_members 4\n"), "{text}");
        assert!(
            text.contains("weir_gossip_messages_total{direction=\"sent\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    #[should_panic(expected = "is already registered")]
    fn a_built_in_name_cannot_be_registered_again() {
        let m = Metrics::default();
        let _ = m.counter("weir_http_server_requests_total", "again");
    }

    #[test]
    #[should_panic(expected = "is already registered")]
    fn a_name_cannot_change_kind() {
        let m = Metrics::default();
        let _ = m.gauge("weir_x", "x");
        let _ = m.counter("weir_x", "x");
    }

    #[test]
    fn active_requests_follow_the_guard() {
        let m = Metrics::default();
        let g = m.active_request();
        assert!(m.encode().contains("http_server_active_requests 1\n"));
        drop(g);
        assert!(m.encode().contains("http_server_active_requests 0\n"));
    }

    #[test]
    fn target_health_can_be_removed() {
        let m = Metrics::default();
        m.set_target_health("up", "10.0.0.1:80", true);
        m.set_target_health("up", "10.0.0.2:80", false);
        let text = m.encode();
        assert!(text.contains(
            r#"weir_upstream_target_up{weir_upstream="up",weir_target="10.0.0.1:80"} 1"#
        ));
        assert!(text.contains(
            r#"weir_upstream_target_up{weir_upstream="up",weir_target="10.0.0.2:80"} 0"#
        ));
        m.remove_target_health("up", "10.0.0.2:80");
        assert!(!m.encode().contains("10.0.0.2:80"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.set_target_health("a\"b\\c\nd", "t", true);
        assert!(m.encode().contains(r#"weir_upstream="a\"b\\c\nd""#));
    }
}
