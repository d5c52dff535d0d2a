//! The log phase: what the data path reports about each request.
//!
//! [`Telemetry`] holds the process-wide sinks (Prometheus metrics, the
//! OTLP tracer, the JSON access log), built once at start-up from the
//! `observability:` section. For each request the proxy opens a
//! [`RequestLog`]: it carries the SERVER span, the start time and what the
//! request learns on its way (route, upstream, target, upstream wait), and
//! it is closed exactly once — when the response body has been sent or
//! dropped — which records the request metrics, ends the span and queues the
//! access-log line. When every sink is off no `RequestLog` exists at all.
//! [`LoggedBody`] is the response-body layer that counts the bytes sent
//! and closes the log with the body.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::metrics::{self, ActiveRequest, CacheStatus, GatewayMetrics, Metrics, RequestMetrics};
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::time::Instant;
use weir_observability::access_log::{AccessLog, AccessRecord};
use weir_observability::config::{NodeInfo, ObservabilityConfig};
use weir_observability::metrics_export::{MetricsExport, MetricsExportSettings};
use weir_observability::trace::{EnvVars, RequestInfo, RequestSpan, Tracing};

use crate::body::BodySlot;
use crate::conn::ConnInfo;
use crate::snapshot::Snapshot;

mod body;
pub use body::LoggedBody;

/// The process-wide observability sinks.
#[derive(Default)]
pub struct Telemetry {
    metrics: Option<Arc<Metrics>>,
    tracing: Tracing,
    /// OTLP push of the same series (off unless configured).
    metrics_export: MetricsExport,
    access_log: Option<AccessLog>,
    /// `(upstream, target)` pairs whose health gauge is published, so a
    /// target that leaves the config loses its series.
    health_series: Mutex<HashSet<(String, String)>>,
    /// Spans dropped or lost by the exporter already added to the metrics.
    spans_dropped_seen: AtomicU64,
    /// This node's id, the one its spans, metrics, logs, `/v1/status` and
    /// the CLI show (empty for telemetry built without a node).
    node_id: Arc<str>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &self.metrics.is_some())
            .field("tracing", &self.tracing)
            .field("metrics_export", &self.metrics_export)
            .field("access_log", &self.access_log)
            .finish()
    }
}

impl Telemetry {
    /// Starts the sinks the config turns on. Metrics go to the process-wide
    /// registry ([`metrics::init_global`]) that `/metrics` serves.
    pub fn start(config: &ObservabilityConfig, node: &NodeInfo) -> anyhow::Result<Telemetry> {
        // Always built, so `/metrics` knows whether it is switched off.
        let registry = metrics::init_global(&config.metrics);
        let metrics = config.metrics.enabled.then(|| registry.clone());
        let tracing = Tracing::init(&config.tracing, node)
            .map_err(|e| anyhow::anyhow!("observability.tracing: {e}"))?;
        // Nothing is recorded with metrics off, so there is nothing to push.
        let metrics_export = match &metrics {
            Some(m) => MetricsExport::init(
                &config.tracing,
                &config.metrics.otlp,
                node,
                m.clone(),
                &tracing,
            )
            .map_err(|e| anyhow::anyhow!("observability.metrics.otlp: {e}"))?,
            None => {
                // The file cannot ask for this (validation refuses it), the
                // environment can: say why nothing is pushed.
                let asked = MetricsExportSettings::resolve(
                    &config.tracing,
                    &config.metrics.otlp,
                    node,
                    &EnvVars::from_process(),
                );
                if matches!(asked, Ok(Some(_))) {
                    tracing::warn!(
                        "otlp metrics export is asked for by the environment but \
                         observability.metrics.enabled is false: nothing is recorded, so nothing \
                         is exported"
                    );
                }
                MetricsExport::disabled()
            }
        };
        let access_log = AccessLog::from_config(&config.access_log, metrics.clone())
            .map_err(|e| anyhow::anyhow!("observability.access_log.target: {e}"))?;
        Ok(Telemetry {
            metrics,
            tracing,
            metrics_export,
            access_log,
            node_id: Arc::from(node.node_id.as_str()),
            ..Telemetry::default()
        })
    }

    /// This node's id (see [`node_info`]).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The metrics registry, when metrics are on.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// The tracer (disabled when tracing is off).
    pub fn tracing(&self) -> &Tracing {
        &self.tracing
    }

    /// The OTLP metrics push (disabled when off).
    pub fn metrics_export(&self) -> &MetricsExport {
        &self.metrics_export
    }

    /// Opens the log of one request; `None` when every sink is off.
    pub fn begin<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        conn: &ConnInfo,
    ) -> Option<Box<RequestLog>> {
        if self.metrics.is_none() && !self.tracing.is_enabled() && self.access_log.is_none() {
            return None;
        }
        let span = self
            .tracing
            .start_request(&RequestInfo::new(req, conn.client, conn.proto));
        let record = self
            .access_log
            .as_ref()
            .map(|_| AccessRecord::from_request(req, conn.client.ip()));
        Some(Box::new(RequestLog {
            tel: self.clone(),
            start: Instant::now(),
            method: req.method().clone(),
            route: None,
            service: None,
            upstream: None,
            target: None,
            upstream_time: None,
            body: None,
            status: 0,
            bytes_out: 0,
            span,
            record,
            cache: None,
            _active: self.metrics.as_ref().map(|m| m.active_request()),
        }))
    }

    /// Brings the series that are read rather than counted up to date:
    /// target health and spans dropped by the exporter. Called before each
    /// `/metrics` scrape.
    pub fn refresh(&self, snap: &Snapshot) {
        let Some(m) = &self.metrics else { return };
        m.set_config_generation(snap.generation());
        let dropped = self.tracing.dropped_spans() + self.tracing.failed_spans();
        let seen = self.spans_dropped_seen.swap(dropped, Ordering::Relaxed);
        if dropped > seen {
            m.inc_spans_dropped(dropped - seen);
        }
        let now = crate::clock::mono_ms();
        let mut published = self
            .health_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut current = HashSet::with_capacity(published.len());
        for up in snap.upstreams.values() {
            for (i, t) in up.targets.iter().enumerate() {
                m.set_target_health(&up.id, &t.addr, up.is_up(i, now));
                current.insert((up.id.clone(), t.addr.clone()));
            }
        }
        for (up, target) in published.difference(&current) {
            m.remove_target_health(up, target);
        }
        *published = current;
    }

    /// Flushes the access log, pushes the metrics one last time and
    /// flushes the span queue; for shutdown.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(log) = &self.access_log {
            log.shutdown(timeout);
        }
        // Before tracing: the metrics task may run on its export thread.
        self.metrics_export.shutdown();
        self.tracing.shutdown();
    }
}

/// What is known about one request so far; reported when dropped.
pub struct RequestLog {
    tel: Arc<Telemetry>,
    start: Instant,
    method: Method,
    route: Option<Arc<str>>,
    service: Option<Arc<str>>,
    upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Index of the target that answered.
    target: Option<usize>,
    /// Time spent waiting for response heads, over all attempts.
    upstream_time: Option<Duration>,
    body: Option<Arc<BodySlot>>,
    status: u16,
    bytes_out: u64,
    /// The SERVER span.
    pub span: RequestSpan,
    record: Option<AccessRecord>,
    /// What the cache plugin made of the request, written in its log
    /// phase (which ends before this log closes).
    cache: Option<CacheSlot>,
    _active: Option<ActiveRequest>,
}

/// Where the proxy-cache plugin leaves its verdict (`HIT`, `MISS`, …) for
/// the request's log: the plugin's per-request state lives in the
/// plugin context, which the response body owns and drops before the log
/// is closed, so the verdict is passed on through this shared cell.
#[derive(Clone, Default)]
pub struct CacheSlot(Arc<Mutex<Option<CacheStatus>>>);

impl CacheSlot {
    /// Notes the cache's verdict; the last one written wins.
    pub fn set(&self, status: CacheStatus) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    fn get(&self) -> Option<CacheStatus> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RequestLog {
    /// Notes the matched route (and its path template, for `http.route`).
    pub fn set_route(
        &mut self,
        id: &Arc<str>,
        service: Option<&Arc<str>>,
        template: Option<&Arc<str>>,
    ) {
        self.route = Some(id.clone());
        self.service = service.cloned();
        if self.span.is_recording() {
            // Shared with the snapshot, not copied.
            if let Some(t) = template {
                self.span.set_route(t.clone());
            }
            self.span.set_route_id(id.clone());
            if let Some(s) = service {
                self.span.set_service_id(s.clone());
            }
        }
    }

    /// Notes the authenticated consumer (`weir.consumer`, access log).
    pub fn set_consumer(&mut self, name: &Arc<str>) {
        self.span.set_consumer(name.clone());
        if let Some(r) = &mut self.record {
            r.consumer = Some(name.clone());
        }
    }

    /// Notes what the rate limits made of the request (`ratelimit_decision`
    /// in the access log and on the span).
    pub fn set_ratelimit_decision(&mut self, d: crate::metrics::RateLimitDecision) {
        self.span.set_ratelimit_decision(d.as_str());
        if let Some(r) = &mut self.record {
            r.ratelimit_decision = Some(d);
        }
    }

    /// The cell a cache plugin reports its verdict into (`cache_status`
    /// in the access log, `weir.cache.status` on the span).
    pub fn cache_slot(&mut self) -> CacheSlot {
        self.cache.get_or_insert_with(CacheSlot::default).clone()
    }

    /// Notes the upstream the request goes to.
    pub fn set_upstream(&mut self, up: &Arc<crate::upstream::Upstream>) {
        self.upstream = Some(up.clone());
    }

    /// Notes the client's request body, whose size is read at the end.
    pub fn set_body(&mut self, body: &Arc<BodySlot>) {
        self.body = Some(body.clone());
    }

    /// Adds one attempt's wait for a response head.
    pub fn add_upstream_time(&mut self, d: Duration) {
        self.upstream_time = Some(self.upstream_time.unwrap_or_default() + d);
    }

    /// Notes the target whose response is sent.
    pub fn set_target(&mut self, idx: usize) {
        self.target = Some(idx);
    }

    /// Notes the status sent to the client.
    pub fn set_status(&mut self, status: StatusCode, request_id: &HeaderValue) {
        self.status = status.as_u16();
        if let Some(r) = &mut self.record {
            r.request_id = request_id.to_str().ok().map(str::to_string);
        }
    }

    /// Marks the request as failed for a reason of the gateway's own
    /// (`error.type`).
    pub fn set_error_type(&mut self, error_type: &str) {
        self.span.set_error_type(error_type);
    }

    /// Counts response body bytes sent.
    #[inline]
    pub fn add_bytes_out(&mut self, n: u64) {
        self.bytes_out += n;
    }

    /// The metrics registry, when metrics are on.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.tel.metrics.as_deref()
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let duration = self.start.elapsed();
        if self.status == 0 {
            // No response was sent: the client went away first (nginx's 499).
            self.status = 499;
            self.span.set_error_type("client_closed_request");
        }
        let bytes_in = self.body.as_ref().map_or(0, |b| b.received());
        let cache_status = self.cache.as_ref().and_then(CacheSlot::get);
        if let Some(c) = cache_status {
            self.span.set_cache_status(c.as_str());
        }
        let upstream_id = self.upstream.as_ref().map(|u| u.id.as_str());
        if let Some(m) = &self.tel.metrics {
            m.record_request(&RequestMetrics {
                route: self.route.as_deref().unwrap_or(""),
                service: self.service.as_deref().unwrap_or(""),
                upstream: upstream_id.unwrap_or(""),
                method: &self.method,
                status: self.status,
                duration,
                upstream_duration: self.upstream_time,
                bytes_in,
                bytes_out: self.bytes_out,
            });
        }
        if let (Some(log), Some(mut r)) = (&self.tel.access_log, self.record.take()) {
            if let Some(id) = self.span.trace_id() {
                r.trace_id = Some(id.to_string());
            }
            r.route = self.route.clone();
            r.cache_status = cache_status;
            r.status = self.status;
            r.bytes_in = bytes_in;
            r.bytes_out = self.bytes_out;
            r.duration = duration;
            r.upstream_duration = self.upstream_time;
            r.upstream = match (&self.upstream, self.target) {
                (Some(u), Some(i)) => u.targets.get(i).map(|t| t.addr.clone()),
                _ => None,
            };
            log.log(r);
        }
        let span = std::mem::replace(&mut self.span, RequestSpan::none());
        span.end(StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY));
    }
}

/// Who this node is, for resource attributes and span attributes: the
/// cluster's node id and region when it is a member of a gossip cluster,
/// else its host name, with `-<admin port>` when that is not the default
/// 9180 (nor 0), as a gossip node id is formed, so a node keeps its id when
/// it later joins a cluster.
pub fn node_info(cfg: &crate::config::Config) -> NodeInfo {
    let admin = cfg.settings.admin_listen;
    if let Some(c) = &cfg.cluster {
        return NodeInfo {
            node_id: crate::cluster::resolve_node_id(c),
            region: Some(c.region.clone()).filter(|r| !r.is_empty()),
            admin: Some(admin),
        };
    }
    let host = crate::cluster::host_name();
    NodeInfo {
        node_id: match admin.port() {
            0 | 9180 => host,
            port => format!("{host}-{port}"),
        },
        region: None,
        admin: Some(admin),
    }
}
