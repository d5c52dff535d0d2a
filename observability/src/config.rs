//! The `observability:` section of the config file.
//!
//! Plain data with serde derives and `deny_unknown_fields`, like the rest of
//! the config. OpenTelemetry's standard environment variables win over the
//! file where the specification says they do (see `trace.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Tracing, metrics and access-log settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// OTLP trace export.
    pub tracing: TracingConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// JSON access log.
    pub access_log: AccessLogConfig,
}

/// OTLP trace export. Off unless `enabled` or `OTEL_EXPORTER_OTLP_*ENDPOINT`
/// is set (and `OTEL_SDK_DISABLED` is not `true`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Export spans.
    pub enabled: bool,
    /// Collector endpoint, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318` (HTTP; `/v1/traces` is appended).
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Extra headers sent with each export (e.g. an API key).
    pub headers: Vec<(String, String)>,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Share of new traces sampled (0.0 to 1.0); a request that carries a
    /// sampled `traceparent` follows its parent.
    pub sample_ratio: f64,
    /// Spans waiting for export; when full, new spans are dropped and
    /// counted, never waited for.
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// How often the queue is flushed.
    #[serde(with = "humantime_serde")]
    pub scheduled_delay: Duration,
    /// Give up on one export after this long.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            headers: Vec::new(),
            service_name: "weir".to_string(),
            sample_ratio: 1.0,
            max_queue_size: 4096,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_millis(1000),
            export_timeout: Duration::from_secs(5),
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Prometheus metrics, served at `/metrics` on the admin listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Upper bounds of the latency histograms, in seconds.
    pub latency_buckets: Vec<f64>,
    /// Push the same series over OTLP (off by default).
    pub otlp: OtlpMetricsConfig,
}

/// OTLP metrics export: the series `/metrics` serves, pushed to a collector
/// on a timer. Off unless `enabled`, `OTEL_METRICS_EXPORTER=otlp` or an
/// `OTEL_EXPORTER_OTLP_*ENDPOINT` variable is set (and neither
/// `OTEL_METRICS_EXPORTER=none` nor `OTEL_SDK_DISABLED=true` is). Unset
/// transport fields take `observability.tracing`'s.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpMetricsConfig {
    /// Export metrics.
    pub enabled: bool,
    /// Collector base URL (`/v1/metrics` is appended for HTTP); defaults to
    /// `tracing.endpoint`, then to the protocol's local default.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; defaults to `tracing.protocol`.
    pub protocol: Option<OtlpProtocol>,
    /// Extra headers sent with each export; when empty, `tracing.headers`.
    pub headers: Vec<(String, String)>,
    /// Time between two exports.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
    /// Give up on one export after this long.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for OtlpMetricsConfig {
    fn default() -> Self {
        OtlpMetricsConfig {
            enabled: false,
            endpoint: None,
            protocol: None,
            headers: Vec::new(),
            export_interval: Duration::from_secs(60),
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            latency_buckets: vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
            otlp: OtlpMetricsConfig::default(),
        }
    }
}

/// JSON access log, one line per request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write the access log.
    pub enabled: bool,
    /// `stdout`, or a file path (appended to).
    pub target: AccessLogTarget,
    /// Fields to write, in order; empty means all.
    pub fields: Vec<AccessLogField>,
    /// Lines waiting to be written; when full, lines are dropped and
    /// counted rather than slowing requests.
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            target: AccessLogTarget::Stdout,
            fields: Vec::new(),
            buffer: 8192,
        }
    }
}

/// Where access-log lines go.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogTarget {
    /// Standard output.
    #[default]
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// A field of an access-log line.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogField {
    /// RFC 3339 time the request started.
    Time,
    /// `X-Request-Id`.
    RequestId,
    /// W3C trace id.
    TraceId,
    /// Client IP.
    ClientIp,
    /// Authenticated consumer.
    Consumer,
    /// Request method.
    Method,
    /// Host the client asked for.
    Host,
    /// Request path (no query: queries may carry secrets).
    Path,
    /// Matched route id.
    Route,
    /// Response status.
    Status,
    /// Request body bytes received.
    BytesIn,
    /// Response body bytes sent.
    BytesOut,
    /// Total duration in milliseconds.
    DurationMs,
    /// Time spent waiting for the upstream, in milliseconds.
    UpstreamMs,
    /// The target that answered.
    Upstream,
    /// Cache status.
    CacheStatus,
    /// Rate-limit decision.
    RatelimitDecision,
}

/// Where this node is, for resource attributes and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id (`service.instance.id`).
    pub node_id: String,
    /// Region (`cloud.region`).
    pub region: Option<String>,
    /// Admin address, for logs.
    pub admin: Option<SocketAddr>,
}

impl ObservabilityConfig {
    /// Problems as (field path below `observability`, reason).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let t = &self.tracing;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            p.push((
                "tracing.sample_ratio".into(),
                "must be between 0 and 1".into(),
            ));
        }
        if t.max_queue_size == 0 {
            p.push(("tracing.max_queue_size".into(), "must be at least 1".into()));
        }
        if t.max_export_batch_size == 0 || t.max_export_batch_size > t.max_queue_size {
            p.push((
                "tracing.max_export_batch_size".into(),
                "must be between 1 and max_queue_size".into(),
            ));
        }
        if let Some(e) = &t.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            p.push((
                "tracing.endpoint".into(),
                format!("`{e}` must start with http:// or https://"),
            ));
        }
        if t.service_name.is_empty() {
            p.push(("tracing.service_name".into(), "must not be empty".into()));
        }
        let b = &self.metrics.latency_buckets;
        if b.is_empty()
            || b.windows(2).any(|w| w[0] >= w[1])
            || b.iter().any(|x| !x.is_finite() || *x <= 0.0)
        {
            p.push((
                "metrics.latency_buckets".into(),
                "must be positive and strictly increasing".into(),
            ));
        }
        let o = &self.metrics.otlp;
        if o.enabled && !self.metrics.enabled {
            p.push((
                "metrics.otlp.enabled".into(),
                "needs metrics.enabled: with metrics off nothing is recorded to export".into(),
            ));
        }
        if let Some(e) = &o.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            p.push((
                "metrics.otlp.endpoint".into(),
                format!("`{e}` must start with http:// or https://"),
            ));
        }
        if o.export_interval.is_zero() {
            p.push((
                "metrics.otlp.export_interval".into(),
                "must be positive".into(),
            ));
        }
        if o.export_timeout.is_zero() {
            p.push((
                "metrics.otlp.export_timeout".into(),
                "must be positive".into(),
            ));
        }
        if self.access_log.buffer == 0 {
            p.push(("access_log.buffer".into(), "must be at least 1".into()));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_metrics_settings_are_checked_by_key() {
        let mut cfg = ObservabilityConfig::default();
        assert!(cfg.validate().is_empty());
        cfg.metrics.otlp = OtlpMetricsConfig {
            enabled: true,
            endpoint: Some("collector:4317".into()),
            export_interval: Duration::ZERO,
            export_timeout: Duration::ZERO,
            ..OtlpMetricsConfig::default()
        };
        cfg.metrics.enabled = false;
        let keys: Vec<String> = cfg.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "metrics.otlp.enabled",
                "metrics.otlp.endpoint",
                "metrics.otlp.export_interval",
                "metrics.otlp.export_timeout"
            ]
        );
    }

    #[test]
    fn the_otlp_section_parses_with_durations_and_a_protocol() {
        let cfg: ObservabilityConfig = serde_yaml_ng::from_str(
            "metrics:\n  otlp:\n    enabled: true\n    protocol: http/protobuf\n    export_interval: 15s\n",
        )
        .unwrap();
        assert!(cfg.metrics.otlp.enabled);
        assert_eq!(cfg.metrics.otlp.protocol, Some(OtlpProtocol::HttpProtobuf));
        assert_eq!(cfg.metrics.otlp.export_interval, Duration::from_secs(15));
        let bad =
            serde_yaml_ng::from_str::<ObservabilityConfig>("metrics:\n  otlp:\n    interval: 1s\n");
        assert!(bad.is_err());
    }
}
