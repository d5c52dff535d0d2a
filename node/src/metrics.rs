//! The gateway's metric catalogue: the series the request path, the
//! upstream pools and the plugins record (`weir_http_server_*`,
//! `http_server_*`, `http_client_*`, `weir_upstream_*`, `weir_auth_*`,
//! `weir_ratelimit_*`, `weir_cache_*`), their label vocabularies and the
//! recording API, [`GatewayMetrics`].
//!
//! The machinery (the registry, capped label-set families, exposition, the
//! OTLP bridge) is `weir_observability::metrics`; this file only names what
//! the gateway measures and installs it into a registry as that registry's
//! catalogue, on first use or at start-up through [`init_global`]. The
//! cluster's series are published by `cluster_metrics`. Names, labels and
//! help texts are listed in `docs/observability.md`.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use weir_observability::config::MetricsConfig;
pub use weir_observability::metrics::{CacheStatus, Metrics, RateLimitDecision};
use weir_observability::metrics::{
    Column, Counter, Gauge, Histogram, SeriesTable, as_metric, method_label, status_class,
};

// === what a recording says ===

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

// === the catalogue ===

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

/// The gateway's series in one registry, built once by
/// [`Gateway::register`].
pub struct Gateway {
    requests: Arc<SeriesTable<5, RequestSeries>>,
    active_requests: Gauge,
    attempts: Arc<SeriesTable<3, Histogram>>,
    target_up: Arc<SeriesTable<2, Gauge>>,
    retries: Arc<SeriesTable<2, Counter>>,
    retry_budget_exhausted: Arc<SeriesTable<1, Counter>>,
    auth_failures: Arc<SeriesTable<2, Counter>>,
    ratelimit: Arc<SeriesTable<2, Counter>>,
    limit_decisions: Arc<SeriesTable<4, Counter>>,
    cache: Arc<SeriesTable<2, CacheSeries>>,
}

impl Gateway {
    /// Registers every gateway series in `m`.
    ///
    /// # Panics
    /// If one of the names is taken already (see [`Metrics::table`]).
    fn register(m: &Metrics) -> Gateway {
        let b: Arc<[f64]> = m.latency_buckets().into();
        let requests = m.table(
            "http_server_request",
            [
                ("weir_route", true),
                ("weir_service", true),
                ("http_request_method", false),
                ("http_response_status_class", false),
                ("weir_upstream", true),
            ],
            move || RequestSeries {
                requests: Counter::default(),
                duration: Histogram::new(b.iter().copied()),
                upstream_duration: Histogram::new(b.iter().copied()),
                request_bytes: Counter::default(),
                response_bytes: Counter::default(),
            },
            vec![
                Column::counter(
                    "weir_http_server_requests",
                    "Requests served, by route, method, status class and upstream.",
                    |s: &RequestSeries| as_metric(&s.requests),
                ),
                Column::histogram(
                    "http_server_request_duration_seconds",
                    "Client-facing request duration, first request byte to last response byte.",
                    |s: &RequestSeries| as_metric(&s.duration),
                ),
                Column::histogram(
                    "weir_http_server_upstream_duration_seconds",
                    "Part of the request spent waiting for upstream response headers, all attempts.",
                    |s: &RequestSeries| as_metric(&s.upstream_duration),
                ),
                Column::counter(
                    "weir_http_server_request_body_bytes",
                    "Request body bytes received from clients.",
                    |s: &RequestSeries| as_metric(&s.request_bytes),
                ),
                Column::counter(
                    "weir_http_server_response_body_bytes",
                    "Response body bytes sent to clients.",
                    |s: &RequestSeries| as_metric(&s.response_bytes),
                ),
            ],
        );

        let b: Arc<[f64]> = m.latency_buckets().into();
        let attempts = m.table(
            "http_client_request",
            [
                ("weir_upstream", true),
                ("weir_target", true),
                ("outcome", false),
            ],
            move || Histogram::new(b.iter().copied()),
            vec![Column::histogram(
                "http_client_request_duration_seconds",
                "Duration of each attempt at an upstream target, until response headers or failure.",
                as_metric::<Histogram>,
            )],
        );

        let target_up = m.table(
            "weir_upstream_target_up",
            [("weir_upstream", true), ("weir_target", true)],
            Gauge::default,
            vec![Column::gauge(
                "weir_upstream_target_up",
                "Whether this node sends traffic to the target (1) or has ejected it (0).",
                as_metric::<Gauge>,
            )],
        );

        let retries = m.counter_table(
            "weir_upstream_retries",
            "Requests sent again to another target, by upstream and reason.",
            [("weir_upstream", true), ("reason", false)],
        );
        let retry_budget_exhausted = m.counter_table(
            "weir_upstream_retry_budget_exhausted",
            "Retries that were allowed by policy but refused by the retry budget.",
            [("weir_upstream", true)],
        );
        let auth_failures = m.counter_table(
            "weir_auth_failures",
            "Requests refused by an authentication plugin, by route and reason.",
            [("weir_route", true), ("reason", false)],
        );
        let ratelimit = m.counter_table(
            "weir_ratelimit_decisions",
            "Rate-limit decisions, by route and decision (allowed, rejected).",
            [("weir_route", true), ("decision", false)],
        );
        let limit_decisions = m.counter_table(
            "weir_ratelimit_limit_decisions",
            "Decisions of each limit-count and limit-req limit, by route, limit, mode (enforce, shadow) and decision (admitted, over_soft, rejected); in shadow mode, rejected counts the requests that would have been rejected.",
            [
                ("weir_route", true),
                ("weir_limit", true),
                ("mode", false),
                ("decision", false),
            ],
        );
        let cache = m.table(
            "weir_cache",
            [("weir_route", true), ("cache_status", false)],
            CacheSeries::default,
            vec![
                Column::counter(
                    "weir_cache_requests",
                    "Cache lookups, by route and cache status (hit, miss, expired, stale, revalidated, bypass).",
                    |s: &CacheSeries| as_metric(&s.requests),
                ),
                Column::counter(
                    "weir_cache_response_body_bytes",
                    "Response body bytes served, by route and cache status.",
                    |s: &CacheSeries| as_metric(&s.bytes),
                ),
            ],
        );

        let active_requests = m.gauge(
            "http_server_active_requests",
            "Requests in flight on the proxy listener.",
        );

        Gateway {
            requests,
            active_requests,
            attempts,
            target_up,
            retries,
            retry_budget_exhausted,
            auth_failures,
            ratelimit,
            limit_decisions,
            cache,
        }
    }
}

// === recording ===

/// Recording the gateway's series into a registry. The first call on a
/// registry installs the catalogue there ([`Metrics::catalogue`]); every
/// later one is lock-free and, once its label set exists, allocation-free.
pub trait GatewayMetrics {
    /// The gateway's series in this registry, installed on first use.
    fn gateway(&self) -> &Gateway;

    /// Records one finished request. Call once, in the log phase.
    fn record_request(&self, r: &RequestMetrics<'_>);

    /// Counts a request in flight until the returned guard is dropped.
    fn active_request(&self) -> ActiveRequest;

    /// Records one attempt at a target (every try, including failed ones).
    fn record_attempt(&self, a: &AttemptMetrics<'_>);

    /// Records that a request is being sent again.
    fn record_retry(&self, upstream: &str, reason: RetryReason);

    /// Records a retry refused by the retry budget.
    fn record_retry_budget_exhausted(&self, upstream: &str);

    /// Publishes whether this node currently sends traffic to a target.
    fn set_target_health(&self, upstream: &str, target: &str, up: bool);

    /// Drops a target's health series (the target left the config).
    fn remove_target_health(&self, upstream: &str, target: &str);

    /// Records a request refused by authentication. `reason` is a fixed
    /// word chosen by the plugin (`missing`, `invalid`, `expired`, ...),
    /// never text from the request.
    fn record_auth_failure(&self, route: &str, reason: &'static str);

    /// Records a rate-limit decision.
    fn record_ratelimit(&self, route: &str, decision: RateLimitDecision);

    /// Records what one limit made of a request: `limit` names it
    /// (`<owner>/<plugin>`, e.g. `route:api/limit-count`, bounded by the
    /// config).
    fn record_limit_decision(
        &self,
        route: &str,
        limit: &str,
        mode: weir_limits::Mode,
        outcome: weir_limits::Outcome,
    );

    /// Records a cache lookup and the response bytes it served.
    fn record_cache(&self, route: &str, status: CacheStatus, bytes: u64);

    /// Distinct label sets of the per-request family (for tests and
    /// self-checks).
    fn request_series(&self) -> usize;
}

impl GatewayMetrics for Metrics {
    #[inline]
    fn gateway(&self) -> &Gateway {
        self.catalogue(Gateway::register)
    }

    #[inline]
    fn record_request(&self, r: &RequestMetrics<'_>) {
        let labels = [
            r.route,
            r.service,
            method_label(r.method),
            status_class(r.status),
            r.upstream,
        ];
        self.gateway().requests.with(labels, |s| {
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

    fn active_request(&self) -> ActiveRequest {
        let g = &self.gateway().active_requests;
        g.inc();
        ActiveRequest(g.clone())
    }

    #[inline]
    fn record_attempt(&self, a: &AttemptMetrics<'_>) {
        self.gateway()
            .attempts
            .with([a.upstream, a.target, a.outcome.as_str()], |h| {
                h.observe(a.duration.as_secs_f64())
            });
    }

    fn record_retry(&self, upstream: &str, reason: RetryReason) {
        self.gateway()
            .retries
            .with([upstream, reason.as_str()], |c| c.inc());
    }

    fn record_retry_budget_exhausted(&self, upstream: &str) {
        self.gateway()
            .retry_budget_exhausted
            .with([upstream], |c| c.inc());
    }

    fn set_target_health(&self, upstream: &str, target: &str, up: bool) {
        self.gateway()
            .target_up
            .with([upstream, target], |g| g.set(i64::from(up)));
    }

    fn remove_target_health(&self, upstream: &str, target: &str) {
        self.gateway().target_up.remove([upstream, target]);
    }

    fn record_auth_failure(&self, route: &str, reason: &'static str) {
        self.gateway()
            .auth_failures
            .with([route, reason], |c| c.inc());
    }

    fn record_ratelimit(&self, route: &str, decision: RateLimitDecision) {
        self.gateway()
            .ratelimit
            .with([route, decision.as_str()], |c| c.inc());
    }

    fn record_limit_decision(
        &self,
        route: &str,
        limit: &str,
        mode: weir_limits::Mode,
        outcome: weir_limits::Outcome,
    ) {
        self.gateway()
            .limit_decisions
            .with([route, limit, mode.as_str(), outcome.as_str()], |c| c.inc());
    }

    fn record_cache(&self, route: &str, status: CacheStatus, bytes: u64) {
        self.gateway().cache.with([route, status.as_str()], |s| {
            s.requests.inc();
            if bytes > 0 {
                s.bytes.inc_by(bytes);
            }
        });
    }

    fn request_series(&self) -> usize {
        self.gateway().requests.len()
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

// === the process-wide instance ===

/// Builds the process-wide registry from config with the gateway's series
/// in it; the first call wins and later calls return the same instance.
pub fn init_global(config: &MetricsConfig) -> &'static Arc<Metrics> {
    let m = weir_observability::metrics::init_global(config);
    m.gateway();
    m
}

/// The process-wide registry with the gateway's series in it (built with
/// the default config if [`init_global`] was not called first).
pub fn global() -> &'static Arc<Metrics> {
    let m = weir_observability::metrics::global();
    m.gateway();
    m
}

#[cfg(test)]
mod tests {
    use weir_observability::metrics::MAX_LABEL_VALUE_LEN;

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
    fn help_texts_end_with_one_period() {
        let m = Metrics::default();
        m.record_request(&request("r", &Method::GET, 200));
        let _ = m.counter("weir_test_things", "Things.");
        for line in m.encode().lines().filter(|l| l.starts_with("# HELP")) {
            assert!(line.ends_with('.') && !line.ends_with(".."), "{line}");
        }
    }

    #[test]
    #[should_panic(expected = "is already registered")]
    fn a_built_in_name_cannot_be_registered_again() {
        let m = Metrics::default();
        m.gateway();
        let _ = m.counter("weir_http_server_requests_total", "again");
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
