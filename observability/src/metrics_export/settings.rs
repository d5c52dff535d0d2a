//! Effective OTLP metrics export settings: `observability.metrics.otlp`,
//! falling back to `observability.tracing` for the transport, overridden by
//! OpenTelemetry's standard environment variables.
//!
//! The transport and its precedence rules are the ones traces use
//! ([`crate::otlp`]); this file adds what only metrics have: the exporter
//! switch, the export interval and the metrics section's fallback to the
//! tracing section.

use std::collections::BTreeMap;
use std::time::Duration;

use super::MetricsExportError;
use crate::config::{NodeInfo, OtlpMetricsConfig, OtlpProtocol, TracingConfig};
use crate::otlp::{EnvVars, FileTransport, Signal, positive_millis, resolve_transport};
pub use crate::otlp::{
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_HEADERS,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, OTEL_EXPORTER_OTLP_METRICS_TIMEOUT, OTEL_METRICS_EXPORTER,
};

/// Time between two exports, in milliseconds.
pub const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// Longest an export may take, in milliseconds.
pub const OTEL_METRIC_EXPORT_TIMEOUT: &str = "OTEL_METRIC_EXPORT_TIMEOUT";

/// The metrics-only variables `resolve` reads once export is on, besides
/// the transport's.
const METRICS_VARS: &[&str] = &[OTEL_METRIC_EXPORT_INTERVAL, OTEL_METRIC_EXPORT_TIMEOUT];

/// Metrics export settings after config and environment were merged and
/// checked.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsExportSettings {
    /// For HTTP the full `…/v1/metrics` URL, for gRPC the collector's base
    /// URL.
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: OtlpProtocol,
    /// Time between two exports.
    pub interval: Duration,
    /// Give up on one export (refresh, collection and request) after this
    /// long.
    pub timeout: Duration,
    /// Headers sent with every export request, in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Resource attributes: the same as the traces'.
    pub resource: BTreeMap<String, String>,
}

impl MetricsExportSettings {
    /// Merges the config with `env`. `Ok(None)` means export is off: not
    /// asked for by `metrics.otlp.enabled`, `OTEL_METRICS_EXPORTER=otlp` or
    /// an endpoint variable, or turned off by `OTEL_METRICS_EXPORTER=none`
    /// or `OTEL_SDK_DISABLED=true`. When off, the other variables are not
    /// read.
    pub fn resolve(
        tracing: &TracingConfig,
        cfg: &OtlpMetricsConfig,
        node: &NodeInfo,
        env: &EnvVars,
    ) -> Result<Option<MetricsExportSettings>, MetricsExportError> {
        // The metrics section's transport, else the tracing section's.
        let file_headers = if cfg.headers.is_empty() {
            ("tracing.headers", tracing.headers.as_slice())
        } else {
            ("metrics.otlp.headers", cfg.headers.as_slice())
        };
        let file = FileTransport {
            enabled: cfg.enabled,
            protocol: cfg.protocol.unwrap_or(tracing.protocol),
            endpoints: &[
                ("metrics.otlp.endpoint", cfg.endpoint.as_deref()),
                ("tracing.endpoint", tracing.endpoint.as_deref()),
            ],
            headers: file_headers,
        };
        let Some(transport) =
            resolve_transport(Signal::Metrics, &file, tracing, node, env, METRICS_VARS)?
        else {
            return Ok(None);
        };

        let timeout = Signal::Metrics.export_timeout(
            env,
            OTEL_METRIC_EXPORT_TIMEOUT,
            ("metrics.otlp.export_timeout", cfg.export_timeout),
        )?;
        let interval = positive_millis(
            env,
            &[OTEL_METRIC_EXPORT_INTERVAL],
            ("metrics.otlp.export_interval", cfg.export_interval),
        )?;

        Ok(Some(MetricsExportSettings {
            endpoint: transport.endpoint,
            protocol: transport.protocol,
            interval,
            timeout,
            headers: transport.headers,
            resource: transport.resource,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{
        OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_PROTOCOL,
        OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED, OTEL_SERVICE_NAME,
    };

    fn node() -> NodeInfo {
        NodeInfo {
            node_id: "n1".into(),
            region: Some("eu-west".into()),
            admin: None,
        }
    }

    fn on() -> OtlpMetricsConfig {
        OtlpMetricsConfig {
            enabled: true,
            ..OtlpMetricsConfig::default()
        }
    }

    fn resolve(
        tracing: &TracingConfig,
        cfg: &OtlpMetricsConfig,
        env: &[(&str, &str)],
    ) -> Result<Option<MetricsExportSettings>, MetricsExportError> {
        MetricsExportSettings::resolve(
            tracing,
            cfg,
            &node(),
            &EnvVars::from_pairs(env.iter().copied()),
        )
    }

    /// One row of the precedence table: config, environment, and what must
    /// come out (`None`: export off).
    struct Row {
        what: &'static str,
        tracing: TracingConfig,
        metrics: OtlpMetricsConfig,
        env: &'static [(&'static str, &'static str)],
        want: Option<(&'static str, OtlpProtocol)>,
    }

    #[test]
    fn on_off_endpoint_and_protocol_precedence() {
        let http_tracing = TracingConfig {
            endpoint: Some("http://trace-file:4318".into()),
            protocol: OtlpProtocol::HttpProtobuf,
            ..TracingConfig::default()
        };
        let rows = [
            Row {
                what: "off by default",
                tracing: TracingConfig::default(),
                metrics: OtlpMetricsConfig::default(),
                env: &[],
                want: None,
            },
            Row {
                what: "tracing alone does not turn metrics on",
                tracing: TracingConfig {
                    enabled: true,
                    ..TracingConfig::default()
                },
                metrics: OtlpMetricsConfig::default(),
                env: &[],
                want: None,
            },
            Row {
                what: "a broken variable is not read while export is off",
                tracing: TracingConfig::default(),
                metrics: OtlpMetricsConfig::default(),
                env: &[(OTEL_METRIC_EXPORT_INTERVAL, "soon")],
                want: None,
            },
            Row {
                what: "enabled in the file: local default",
                tracing: TracingConfig::default(),
                metrics: on(),
                env: &[],
                want: Some(("http://localhost:4317", OtlpProtocol::Grpc)),
            },
            Row {
                what: "the exporter variable turns it on",
                tracing: TracingConfig::default(),
                metrics: OtlpMetricsConfig::default(),
                env: &[(OTEL_METRICS_EXPORTER, "otlp")],
                want: Some(("http://localhost:4317", OtlpProtocol::Grpc)),
            },
            Row {
                what: "the generic endpoint turns it on",
                tracing: TracingConfig::default(),
                metrics: OtlpMetricsConfig::default(),
                env: &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")],
                want: Some(("http://c:4317", OtlpProtocol::Grpc)),
            },
            Row {
                what: "the metrics endpoint turns it on and is used as is",
                tracing: TracingConfig::default(),
                metrics: OtlpMetricsConfig::default(),
                env: &[
                    (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "http://m:9/custom"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
                ],
                want: Some(("http://m:9/custom", OtlpProtocol::HttpProtobuf)),
            },
            Row {
                what: "none wins over the file and the endpoint",
                tracing: TracingConfig::default(),
                metrics: on(),
                env: &[
                    (OTEL_METRICS_EXPORTER, "none"),
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                ],
                want: None,
            },
            Row {
                what: "sdk disabled wins over everything",
                tracing: TracingConfig::default(),
                metrics: on(),
                env: &[(OTEL_SDK_DISABLED, "true"), (OTEL_METRICS_EXPORTER, "otlp")],
                want: None,
            },
            Row {
                what: "the tracing section's transport is the default",
                tracing: http_tracing.clone(),
                metrics: on(),
                env: &[],
                want: Some((
                    "http://trace-file:4318/v1/metrics",
                    OtlpProtocol::HttpProtobuf,
                )),
            },
            Row {
                what: "the metrics section beats the tracing section",
                tracing: http_tracing.clone(),
                metrics: OtlpMetricsConfig {
                    endpoint: Some("http://metrics-file:4317".into()),
                    protocol: Some(OtlpProtocol::Grpc),
                    ..on()
                },
                env: &[],
                want: Some(("http://metrics-file:4317", OtlpProtocol::Grpc)),
            },
            Row {
                what: "the generic variables beat the file; the path follows the protocol",
                tracing: http_tracing.clone(),
                metrics: on(),
                env: &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4318/prefix/"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
                ],
                want: Some((
                    "http://generic:4318/prefix/v1/metrics",
                    OtlpProtocol::HttpProtobuf,
                )),
            },
            Row {
                what: "the metrics variables beat the generic ones",
                tracing: http_tracing,
                metrics: on(),
                env: &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4318"),
                    (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "http://signal:4317"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
                    (OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, "grpc"),
                ],
                want: Some(("http://signal:4317", OtlpProtocol::Grpc)),
            },
        ];
        for row in rows {
            let got = resolve(&row.tracing, &row.metrics, row.env)
                .unwrap_or_else(|e| panic!("{}: {e}", row.what))
                .map(|s| (s.endpoint, s.protocol));
            let want = row.want.map(|(e, p)| (e.to_string(), p));
            assert_eq!(got, want, "{}", row.what);
        }
    }

    #[test]
    fn headers_interval_timeout_and_resource() {
        let tracing = TracingConfig {
            headers: vec![("X-Api-Key".into(), "trace-file".into())],
            service_name: "edge".into(),
            ..TracingConfig::default()
        };
        let s = resolve(&tracing, &on(), &[]).unwrap().unwrap();
        assert_eq!(s.headers, [("x-api-key".into(), "trace-file".into())]);
        assert_eq!(s.interval, Duration::from_secs(60));
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.resource["service.name"], "edge");
        assert_eq!(s.resource["service.instance.id"], "n1");
        assert_eq!(s.resource["cloud.region"], "eu-west");

        let metrics = OtlpMetricsConfig {
            headers: vec![("x-tenant".into(), "m".into())],
            ..on()
        };
        let s = resolve(
            &tracing,
            &metrics,
            &[
                (OTEL_EXPORTER_OTLP_HEADERS, "x-tenant=generic,x-extra=1"),
                (OTEL_METRIC_EXPORT_INTERVAL, "250"),
                (OTEL_METRIC_EXPORT_TIMEOUT, "700"),
                (OTEL_SERVICE_NAME, "from-env"),
                (OTEL_RESOURCE_ATTRIBUTES, "deployment.environment=prod"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.headers,
            [
                ("x-tenant".into(), "generic".into()),
                ("x-extra".into(), "1".into())
            ]
        );
        assert_eq!(s.interval, Duration::from_millis(250));
        assert_eq!(s.timeout, Duration::from_millis(700));
        assert_eq!(s.resource["service.name"], "from-env");
        assert_eq!(s.resource["deployment.environment"], "prod");

        let s = resolve(
            &tracing,
            &metrics,
            &[
                (OTEL_EXPORTER_OTLP_HEADERS, "x-tenant=generic"),
                (OTEL_EXPORTER_OTLP_METRICS_HEADERS, "x-tenant=signal"),
                (OTEL_METRIC_EXPORT_TIMEOUT, "700"),
                (OTEL_EXPORTER_OTLP_TIMEOUT, "800"),
                (OTEL_EXPORTER_OTLP_METRICS_TIMEOUT, "900"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.headers, [("x-tenant".into(), "signal".into())]);
        assert_eq!(s.timeout, Duration::from_millis(900));
    }

    #[test]
    fn bad_values_name_their_source() {
        let t = TracingConfig::default();
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[(OTEL_METRICS_EXPORTER, "prometheus")],
                OTEL_METRICS_EXPORTER,
            ),
            (&[(OTEL_SDK_DISABLED, "yes")], OTEL_SDK_DISABLED),
            (
                &[(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "collector:4317")],
                OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
            ),
            (
                &[
                    (OTEL_METRICS_EXPORTER, "otlp"),
                    (OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, "http/json"),
                ],
                OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
            ),
            (
                &[
                    (OTEL_METRICS_EXPORTER, "otlp"),
                    (OTEL_METRIC_EXPORT_INTERVAL, "0"),
                ],
                OTEL_METRIC_EXPORT_INTERVAL,
            ),
            (
                &[
                    (OTEL_METRICS_EXPORTER, "otlp"),
                    (OTEL_EXPORTER_OTLP_METRICS_HEADERS, "a=1,secret"),
                ],
                OTEL_EXPORTER_OTLP_METRICS_HEADERS,
            ),
        ];
        for (env, var) in cases {
            let e = resolve(&t, &OtlpMetricsConfig::default(), env)
                .expect_err(var)
                .to_string();
            assert!(e.contains(var), "{var}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let cfg = OtlpMetricsConfig {
            endpoint: Some("ftp://x".into()),
            ..on()
        };
        let e = resolve(&t, &cfg, &[]).unwrap_err().to_string();
        assert!(e.contains("metrics.otlp.endpoint"), "{e}");
        let tracing = TracingConfig {
            endpoint: Some("https://x:4317".into()),
            ..TracingConfig::default()
        };
        let e = resolve(&tracing, &on(), &[]).unwrap_err().to_string();
        assert!(e.contains("tracing.endpoint"), "{e}");
    }
}
