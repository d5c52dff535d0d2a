//! Prometheus metrics machinery: one [`Metrics`] registry per process,
//! recorded into on the request path and encoded at scrape time.
//!
//! Owns the registry, the text expositions ([`Format`]), the capped
//! label-set families ([`SeriesTable`], [`CounterVec`], [`GaugeVec`]), the
//! shared label helpers ([`status_class`], [`method_label`]), the process
//! metrics, the series of this crate's own sinks (access log, span export)
//! and the reading the OTLP bridge exports. It does not own what the
//! gateway measures: the request, upstream, auth, rate-limit and cache
//! series and their label vocabularies are the gateway's catalogue
//! (`weir_node::metrics`), installed into a registry with
//! [`Metrics::catalogue`]. [`CacheStatus`] and [`RateLimitDecision`] stay
//! here because the access log writes them too.
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

use arc_swap::ArcSwap;
use hashbrown::Equivalent;
use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

// The metric types a catalogue records into.
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

use crate::config::MetricsConfig;
use crate::process::{PROCESS_METRICS, ProcessCollector};

/// Distinct label sets a family keeps before folding new ones into `other`.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// The value that replaces a config-derived label past the series cap.
pub const OTHER: &str = "other";

/// Config-derived label values longer than this are folded into `other`:
/// config ids are short, so a long one is a bug, not a name.
pub const MAX_LABEL_VALUE_LEN: usize = 128;

/// A static label pair, for series whose labels come from code.
type StaticLabel = [(&'static str, &'static str); 1];

// === label vocabularies ===

/// A rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitDecision {
    /// Under the limit.
    Allowed,
    /// Over the limit: answered 429.
    Rejected,
    /// Under the limit but past its soft threshold: admitted and flagged
    /// (access log only; the metric counts it as allowed).
    OverSoft,
    /// Over a limit in shadow mode: admitted, would have been rejected
    /// (access log only; the metric counts it as allowed).
    ShadowRejected,
}

impl RateLimitDecision {
    /// The `decision` label value (and access-log value).
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitDecision::Allowed => "allowed",
            RateLimitDecision::Rejected => "rejected",
            RateLimitDecision::OverSoft => "over_soft",
            RateLimitDecision::ShadowRejected => "shadow_rejected",
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

/// One exposed metric of a [`SeriesTable`] whose series carry several
/// metrics: its name (without `_total`), help text, kind, and where it
/// sits in the series' value.
pub struct Column<V> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    get: Getter<V>,
}

/// Picks one metric out of a series' value.
pub type Getter<V> = fn(&V) -> &dyn EncodeMetric;

impl<V> Column<V> {
    /// A counter column: `get` picks it out of the series' value, e.g.
    /// `|s: &Bundle| as_metric(&s.requests)`.
    pub fn counter(name: &'static str, help: &'static str, get: Getter<V>) -> Column<V> {
        Column::of(MetricType::Counter, name, help, get)
    }

    /// A histogram column.
    pub fn histogram(name: &'static str, help: &'static str, get: Getter<V>) -> Column<V> {
        Column::of(MetricType::Histogram, name, help, get)
    }

    /// A gauge column.
    pub fn gauge(name: &'static str, help: &'static str, get: Getter<V>) -> Column<V> {
        Column::of(MetricType::Gauge, name, help, get)
    }

    fn of(kind: MetricType, name: &'static str, help: &'static str, get: Getter<V>) -> Column<V> {
        Column {
            name,
            help,
            kind,
            get,
        }
    }
}

/// Series keyed by `N` label values, each holding a `V` (one metric or a
/// bundle recorded together), registered with [`Metrics::table`]. Reads
/// are lock-free; inserts copy the map, which is fine because inserts stop
/// once every label set has been seen.
pub struct SeriesTable<const N: usize, V> {
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

impl<const N: usize, V: Send + Sync + 'static> SeriesTable<N, V> {
    /// Calls `f` with the series for `values`, creating it (or folding it
    /// into `other`) on first sight.
    #[inline]
    pub fn with<R>(&self, values: [&str; N], f: impl FnOnce(&V) -> R) -> R {
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

    /// Drops the series for `values`, if any.
    pub fn remove(&self, values: [&str; N]) {
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

    /// Distinct label sets held, the folded one included.
    pub fn len(&self) -> usize {
        self.series.load().len()
    }

    /// Whether no series was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.series.load().is_empty()
    }

    /// The metric names this family exposes.
    fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.name).collect()
    }
}

impl<const N: usize, V> fmt::Debug for SeriesTable<N, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeriesTable")
            .field("family", &self.family)
            .field("labels", &self.labels)
            .field("series", &self.series.load().len())
            .finish()
    }
}

impl<const N: usize, V: Send + Sync + 'static> Collector for SeriesTable<N, V> {
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
pub struct CounterVec<const N: usize>(Arc<SeriesTable<N, Counter>>);

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
pub struct GaugeVec<const N: usize>(Arc<SeriesTable<N, Gauge>>);

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

/// A series' metric as the exposition sees it, for [`Column`] getters.
pub fn as_metric<M: EncodeMetric>(m: &M) -> &dyn EncodeMetric {
    m
}

// === Metrics ===

/// The registry every weir metric lives in. Share it as `Arc<Metrics>`;
/// all recording methods take `&self`.
pub struct Metrics {
    enabled: bool,
    buckets: Arc<[f64]>,
    max_series: usize,
    registry: Mutex<Registry>,
    /// Names in use, so a late registration cannot shadow a series.
    names: Mutex<HashMap<&'static str, Box<dyn Any + Send + Sync>>>,
    folded: Family<StaticLabel, Counter>,
    /// The embedding program's series, see [`Metrics::catalogue`].
    catalogue: OnceLock<Box<dyn Any + Send + Sync>>,

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

        for name in PROCESS_METRICS.iter().copied() {
            names.insert(name, Box::new(()));
        }
        reg.register_collector(Box::new(ProcessCollector));

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
            catalogue: OnceLock::new(),
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
                let t = Arc::new(SeriesTable {
                    family: name,
                    labels,
                    fold: [true; N],
                    cap,
                    series: ArcSwap::from_pointee(SeriesMap::new()),
                    insert_lock: Mutex::new(()),
                    make: Box::new(Gauge::default),
                    columns: vec![Column::gauge(name, help, as_metric::<Gauge>)],
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

    /// Registers a family whose series are keyed by `N` label values and
    /// each hold a `V`: one metric, or a bundle recorded together under one
    /// label set (a request counter and its duration histograms), exposed
    /// as one metric per column. `fold` says which labels come from config
    /// and fold into `other` past the series cap; labels from code never
    /// fold. A `weir_metrics_series_folded_total{family}` series is created
    /// at once.
    ///
    /// # Panics
    /// If a column's name is not a valid metric name or is already
    /// registered: both are programming errors caught at start-up.
    pub fn table<const N: usize, V: Send + Sync + 'static>(
        &self,
        family: &'static str,
        labels: [(&'static str, bool); N],
        make: impl Fn() -> V + Send + Sync + 'static,
        columns: Vec<Column<V>>,
    ) -> Arc<SeriesTable<N, V>> {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        for col in &columns {
            assert!(
                valid_metric_name(col.name),
                "metric name `{}` must match [a-zA-Z_:][a-zA-Z0-9_:]*",
                col.name
            );
            assert!(
                !names.contains_key(col.name),
                "metric `{}` is already registered, as a built-in or as another kind",
                col.name
            );
        }
        let table = Arc::new(SeriesTable {
            family,
            labels: labels.map(|(name, _)| name),
            fold: labels.map(|(_, fold)| fold),
            cap: self.max_series,
            series: ArcSwap::from_pointee(SeriesMap::new()),
            insert_lock: Mutex::new(()),
            make: Box::new(make),
            columns,
            folded: self.folded.get_or_create(&[("family", family)]).clone(),
        });
        for name in table.names() {
            names.insert(name, Box::new(()));
        }
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(Box::new(table.clone()));
        table
    }

    /// A table of plain counters named after its family (`name`, without
    /// `_total`), as [`Metrics::table`].
    ///
    /// # Panics
    /// As [`Metrics::table`].
    pub fn counter_table<const N: usize>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: [(&'static str, bool); N],
    ) -> Arc<SeriesTable<N, Counter>> {
        self.table(
            name,
            labels,
            Counter::default,
            vec![Column::counter(name, help, as_metric::<Counter>)],
        )
    }

    /// The series the embedding program defines on top of this machinery
    /// (the gateway's catalogue lives in `weir_node::metrics`): built by
    /// `build` on first use, the same value afterwards. Looking it up costs
    /// an atomic load and a type check, so recording through it stays
    /// lock-free.
    ///
    /// # Panics
    /// If a catalogue of another type was built first: one registry holds
    /// one catalogue, a programming error caught at start-up.
    pub fn catalogue<C: Any + Send + Sync>(&self, build: impl FnOnce(&Metrics) -> C) -> &C {
        self.catalogue
            .get_or_init(|| Box::new(build(self)))
            .downcast_ref()
            .expect("one registry holds one catalogue type")
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
}

fn new_counter_table_with<const N: usize>(
    folded: Counter,
    cap: usize,
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    fold: [bool; N],
) -> SeriesTable<N, Counter> {
    SeriesTable {
        family: name,
        labels,
        fold,
        cap,
        series: ArcSwap::from_pointee(SeriesMap::new()),
        insert_lock: Mutex::new(()),
        make: Box::new(Counter::default),
        columns: vec![Column::counter(name, help, as_metric::<Counter>)],
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
    fn a_name_cannot_change_kind() {
        let m = Metrics::default();
        let _ = m.gauge("weir_x", "x");
        let _ = m.counter("weir_x", "x");
    }
}
