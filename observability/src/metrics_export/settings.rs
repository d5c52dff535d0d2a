//! Effective OTLP metrics export settings: `observability.metrics.otlp`,
//! falling back to `observability.tracing` for the transport, overridden by
//! OpenTelemetry's standard environment variables.
//!
//! The precedence rules are the trace settings' (`trace/settings.rs`): a
//! signal variable (`…_METRICS_…`) beats the generic one, any variable beats
//! the file, an empty variable counts as unset, and a value that cannot be
//! used is an error naming the variable.

use std::collections::BTreeMap;
use std::time::Duration;

use super::MetricsExportError;
use crate::config::{NodeInfo, OtlpMetricsConfig, OtlpProtocol, TracingConfig};
use crate::trace::settings::{
    DEFAULT_GRPC_ENDPOINT, DEFAULT_HTTP_ENDPOINT, EnvVars, OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED, OTEL_SERVICE_NAME, check_endpoint, check_header,
    parse_bool, parse_key_values, parse_millis, parse_protocol, resource, upsert,
};

/// Collector URL for metrics, used exactly as given.
pub const OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// `grpc` or `http/protobuf`, for metrics.
pub const OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
/// `key=value,key2=value2` for metrics.
pub const OTEL_EXPORTER_OTLP_METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
/// Export timeout for metrics in milliseconds.
pub const OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT";
/// `otlp` or `none`.
pub const OTEL_METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
/// Time between two exports, in milliseconds.
pub const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// Longest an export may take, in milliseconds.
pub const OTEL_METRIC_EXPORT_TIMEOUT: &str = "OTEL_METRIC_EXPORT_TIMEOUT";

const METRICS_PATH: &str = "/v1/metrics";

/// Every variable `resolve` reads once export is on.
const ALL_VARS: &[&str] = &[
    OTEL_SDK_DISABLED,
    OTEL_METRICS_EXPORTER,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_METRICS_HEADERS,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
    OTEL_METRIC_EXPORT_INTERVAL,
    OTEL_METRIC_EXPORT_TIMEOUT,
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
];

/// Metrics export settings after config and environment were merged and
/// checked.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsExportSettings {
    /// For HTTP the full `…/v1/metrics` URL, for gRPC the collector's base
    /// URL.
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: OtlpProtocol,
    /// Headers sent with every export request, in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Resource attributes: the same as the traces'.
    pub resource: BTreeMap<String, String>,
    /// Time between two exports.
    pub interval: Duration,
    /// Give up on one export (refresh, collection and request) after this
    /// long.
    pub timeout: Duration,
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
        env.check_unicode(&[OTEL_SDK_DISABLED, OTEL_METRICS_EXPORTER])?;
        if parse_bool(env, OTEL_SDK_DISABLED)?.unwrap_or(false) {
            return Ok(None);
        }
        let asked = match env.get(OTEL_METRICS_EXPORTER) {
            None => false,
            Some("none") => return Ok(None),
            Some("otlp") => true,
            Some(other) => {
                return Err(MetricsExportError::env(
                    OTEL_METRICS_EXPORTER,
                    format!(
                        "`{}` is not supported; use `otlp` or `none` (Prometheus is served at \
                         /metrics on the admin listener)",
                        other.escape_debug()
                    ),
                ));
            }
        };
        let endpoint_vars = [
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
            OTEL_EXPORTER_OTLP_ENDPOINT,
        ];
        env.check_unicode(&endpoint_vars)?;
        if !cfg.enabled && !asked && env.first(&endpoint_vars).is_none() {
            return Ok(None);
        }
        env.check_unicode(ALL_VARS)?;

        let protocol = match env.first(&[
            OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ]) {
            Some((var, v)) => {
                parse_protocol(v).map_err(|reason| MetricsExportError::env(var, reason))?
            }
            None => cfg.protocol.unwrap_or(tracing.protocol),
        };
        let path = match protocol {
            OtlpProtocol::Grpc => None,
            OtlpProtocol::HttpProtobuf => Some(METRICS_PATH),
        };

        let file_endpoint = [
            ("metrics.otlp.endpoint", cfg.endpoint.as_deref()),
            ("tracing.endpoint", tracing.endpoint.as_deref()),
        ]
        .into_iter()
        .find_map(|(key, e)| e.map(str::trim).filter(|e| !e.is_empty()).map(|e| (key, e)));
        let endpoint = match (
            env.get(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT),
            env.get(OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(url), _) => check_endpoint(url, None)
                .map_err(|r| MetricsExportError::env(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, r))?,
            (None, Some(url)) => check_endpoint(url, path)
                .map_err(|r| MetricsExportError::env(OTEL_EXPORTER_OTLP_ENDPOINT, r))?,
            (None, None) => match file_endpoint {
                Some((key, url)) => {
                    check_endpoint(url, path).map_err(|r| MetricsExportError::config(key, r))?
                }
                None => {
                    let base = match protocol {
                        OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT,
                        OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
                    };
                    check_endpoint(base, path)
                        .map_err(|r| MetricsExportError::config("metrics.otlp.endpoint", r))?
                }
            },
        };

        // File headers first (the metrics section's, else the tracing
        // section's); the chosen variable replaces them key by key.
        let (key, file_headers) = if cfg.headers.is_empty() {
            ("tracing.headers", &tracing.headers)
        } else {
            ("metrics.otlp.headers", &cfg.headers)
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for (i, (k, v)) in file_headers.iter().enumerate() {
            let (k, v) = check_header(k, v)
                .map_err(|r| MetricsExportError::config(&format!("{key}[{i}]"), r))?;
            upsert(&mut headers, k, v);
        }
        if let Some((var, raw)) = env.first(&[
            OTEL_EXPORTER_OTLP_METRICS_HEADERS,
            OTEL_EXPORTER_OTLP_HEADERS,
        ]) {
            for (k, v) in
                parse_key_values(raw, "header").map_err(|r| MetricsExportError::env(var, r))?
            {
                let (k, v) = check_header(&k, &v).map_err(|r| MetricsExportError::env(var, r))?;
                upsert(&mut headers, k, v);
            }
        }

        let resource = resource(tracing, node, env)?;

        let interval =
            parse_millis(env, &[OTEL_METRIC_EXPORT_INTERVAL])?.unwrap_or(cfg.export_interval);
        if interval.is_zero() {
            return Err(MetricsExportError::config(
                "metrics.otlp.export_interval",
                "must be positive".into(),
            ));
        }
        let timeout = parse_millis(
            env,
            &[
                OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
                OTEL_EXPORTER_OTLP_TIMEOUT,
                OTEL_METRIC_EXPORT_TIMEOUT,
            ],
        )?
        .unwrap_or(cfg.export_timeout);
        if timeout.is_zero() {
            return Err(MetricsExportError::config(
                "metrics.otlp.export_timeout",
                "must be positive".into(),
            ));
        }

        Ok(Some(MetricsExportSettings {
            endpoint,
            protocol,
            headers,
            resource,
            interval,
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
