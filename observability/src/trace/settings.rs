//! Effective trace settings: the config file's `observability.tracing`
//! section, overridden by OpenTelemetry's standard environment variables.
//!
//! The transport (endpoint, protocol, headers, timeout, resource) and its
//! precedence rules are shared with metrics export and live in
//! [`crate::otlp`]; this file adds what only traces have: the sampler and
//! the batch processor's limits.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::TraceError;
use crate::config::{NodeInfo, OtlpProtocol, TracingConfig};
pub use crate::otlp::{
    EnvVars, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME,
};
use crate::otlp::{ExportError, FileTransport, Signal, positive_millis, resolve_transport};

/// Sampler name.
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// Sampler argument (the ratio of the ratio samplers).
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// Batch processor queue size.
pub const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// Spans per export request.
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// Delay between two exports, in milliseconds.
pub const OTEL_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// Export timeout of the batch processor, in milliseconds.
pub const OTEL_BSP_EXPORT_TIMEOUT: &str = "OTEL_BSP_EXPORT_TIMEOUT";

/// The trace-only variables `resolve` reads once tracing is on, besides
/// the transport's.
const TRACE_VARS: &[&str] = &[
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
    OTEL_BSP_EXPORT_TIMEOUT,
];

/// Which sampler decides whether a new trace is recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSpec {
    /// `always_on`: every trace, ignoring the parent's decision.
    AlwaysOn,
    /// `always_off`: no trace; context is still propagated.
    AlwaysOff,
    /// `traceidratio`: this share of traces, ignoring the parent.
    TraceIdRatio(f64),
    /// `parentbased_always_on`: follow the parent; sample roots.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: follow the parent; drop roots.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: follow the parent; sample this share
    /// of roots. weir's default, with `tracing.sample_ratio`.
    ParentBasedTraceIdRatio(f64),
}

impl fmt::Display for SamplerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplerSpec::AlwaysOn => f.write_str("always_on"),
            SamplerSpec::AlwaysOff => f.write_str("always_off"),
            SamplerSpec::TraceIdRatio(r) => write!(f, "traceidratio({r})"),
            SamplerSpec::ParentBasedAlwaysOn => f.write_str("parentbased_always_on"),
            SamplerSpec::ParentBasedAlwaysOff => f.write_str("parentbased_always_off"),
            SamplerSpec::ParentBasedTraceIdRatio(r) => write!(f, "parentbased_traceidratio({r})"),
        }
    }
}

/// Trace export settings after config and environment were merged and
/// checked. Built by [`TraceSettings::resolve`]; `Tracing::init` builds the
/// exporter from it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The URL export requests go to: for HTTP the full `…/v1/traces` URL,
    /// for gRPC the collector's base URL.
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: OtlpProtocol,
    /// Headers sent with every export request, in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Resource attributes, `service.name` included.
    pub resource: BTreeMap<String, String>,
    /// Sampler for new spans.
    pub sampler: SamplerSpec,
    /// Spans waiting for export before new ones are dropped.
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// How often the queue is flushed.
    pub scheduled_delay: Duration,
    /// Give up on one export request after this long.
    pub export_timeout: Duration,
}

impl TraceSettings {
    /// Merges `cfg` with `env`. `Ok(None)` means tracing is off: neither
    /// `tracing.enabled` nor an endpoint variable asked for it, or
    /// `OTEL_SDK_DISABLED=true`. When tracing is off the other variables
    /// are not looked at, so a stray `OTEL_*` meant for another program
    /// never stops weir from starting.
    pub fn resolve(
        cfg: &TracingConfig,
        node: &NodeInfo,
        env: &EnvVars,
    ) -> Result<Option<TraceSettings>, TraceError> {
        let file = FileTransport {
            enabled: cfg.enabled,
            protocol: cfg.protocol,
            endpoints: &[("tracing.endpoint", cfg.endpoint.as_deref())],
            headers: ("tracing.headers", &cfg.headers),
        };
        let Some(transport) = resolve_transport(Signal::Traces, &file, cfg, node, env, TRACE_VARS)?
        else {
            return Ok(None);
        };
        let sampler = sampler(cfg, env)?;

        let max_queue_size = match parse_number(env, OTEL_BSP_MAX_QUEUE_SIZE)? {
            Some(n) => n,
            None => cfg.max_queue_size,
        };
        if max_queue_size == 0 {
            return Err(match env.get(OTEL_BSP_MAX_QUEUE_SIZE) {
                Some(_) => ExportError::env(OTEL_BSP_MAX_QUEUE_SIZE, "must be at least 1".into()),
                None => ExportError::config("tracing.max_queue_size", "must be at least 1".into()),
            });
        }
        let max_export_batch_size = match parse_number(env, OTEL_BSP_MAX_EXPORT_BATCH_SIZE)? {
            Some(n) => n,
            None => cfg.max_export_batch_size,
        };
        if max_export_batch_size == 0 || max_export_batch_size > max_queue_size {
            let reason = format!("must be between 1 and the queue size ({max_queue_size})");
            return Err(match env.get(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) {
                Some(_) => ExportError::env(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, reason),
                None => ExportError::config("tracing.max_export_batch_size", reason),
            });
        }
        let scheduled_delay = positive_millis(
            env,
            &[OTEL_BSP_SCHEDULE_DELAY],
            ("tracing.scheduled_delay", cfg.scheduled_delay),
        )?;
        let export_timeout = Signal::Traces.export_timeout(
            env,
            OTEL_BSP_EXPORT_TIMEOUT,
            ("tracing.export_timeout", cfg.export_timeout),
        )?;

        Ok(Some(TraceSettings {
            endpoint: transport.endpoint,
            protocol: transport.protocol,
            headers: transport.headers,
            resource: transport.resource,
            sampler,
            max_queue_size,
            max_export_batch_size,
            scheduled_delay,
            export_timeout,
        }))
    }

    /// `service.name` as exported.
    pub fn service_name(&self) -> &str {
        self.resource.get("service.name").map_or("", |s| s.as_str())
    }
}

/// The sampler: `OTEL_TRACES_SAMPLER` (with `OTEL_TRACES_SAMPLER_ARG`), or
/// else parent-based ratio sampling with `tracing.sample_ratio`, whose
/// ratio `OTEL_TRACES_SAMPLER_ARG` alone may also set.
fn sampler(cfg: &TracingConfig, env: &EnvVars) -> Result<SamplerSpec, TraceError> {
    let arg = env.get(OTEL_TRACES_SAMPLER_ARG);
    match env.get(OTEL_TRACES_SAMPLER) {
        Some(name) => parse_sampler(name, arg),
        None => {
            let ratio = match arg {
                Some(a) => parse_ratio(a)?,
                None => {
                    let r = cfg.sample_ratio;
                    if !(0.0..=1.0).contains(&r) {
                        return Err(ExportError::config(
                            "tracing.sample_ratio",
                            "must be between 0 and 1".into(),
                        ));
                    }
                    r
                }
            };
            Ok(SamplerSpec::ParentBasedTraceIdRatio(ratio))
        }
    }
}

/// Parses an `OTEL_TRACES_SAMPLER` value and its argument. The argument is
/// read only by the ratio samplers (a missing one means 1.0) and, as the
/// specification says, ignored by the others.
pub fn parse_sampler(name: &str, arg: Option<&str>) -> Result<SamplerSpec, TraceError> {
    let ratio = || arg.map_or(Ok(1.0), parse_ratio);
    Ok(match name.trim() {
        "always_on" => SamplerSpec::AlwaysOn,
        "always_off" => SamplerSpec::AlwaysOff,
        "traceidratio" => SamplerSpec::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerSpec::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerSpec::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerSpec::ParentBasedTraceIdRatio(ratio()?),
        other => {
            return Err(ExportError::env(
                OTEL_TRACES_SAMPLER,
                format!(
                    "`{}` is not a supported sampler (always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off, parentbased_traceidratio)",
                    other.escape_debug()
                ),
            ));
        }
    })
}

fn parse_ratio(raw: &str) -> Result<f64, TraceError> {
    match raw.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(ExportError::env(
            OTEL_TRACES_SAMPLER_ARG,
            format!("`{}` is not a ratio between 0 and 1", raw.escape_debug()),
        )),
    }
}

fn parse_number(env: &EnvVars, var: &'static str) -> Result<Option<usize>, TraceError> {
    env.get(var)
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                ExportError::env(var, format!("`{}` is not a whole number", v.escape_debug()))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> TracingConfig {
        TracingConfig {
            enabled: true,
            ..TracingConfig::default()
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            node_id: "n1".into(),
            region: Some("eu-west".into()),
            admin: None,
        }
    }

    fn resolve(
        cfg: &TracingConfig,
        env: &[(&str, &str)],
    ) -> Result<Option<TraceSettings>, TraceError> {
        TraceSettings::resolve(cfg, &node(), &EnvVars::from_pairs(env.iter().copied()))
    }

    fn settings(cfg: &TracingConfig, env: &[(&str, &str)]) -> TraceSettings {
        resolve(cfg, env).expect("valid").expect("enabled")
    }

    fn error(cfg: &TracingConfig, env: &[(&str, &str)]) -> String {
        resolve(cfg, env).expect_err("invalid").to_string()
    }

    #[test]
    fn off_by_default_and_nothing_else_is_read() {
        let cfg = TracingConfig::default();
        assert_eq!(resolve(&cfg, &[]).unwrap(), None);
        // A broken variable for a feature that is off does not stop weir.
        assert_eq!(
            resolve(&cfg, &[(OTEL_TRACES_SAMPLER, "bogus")]).unwrap(),
            None
        );
    }

    #[test]
    fn an_endpoint_variable_turns_tracing_on() {
        let cfg = TracingConfig::default();
        let s = settings(&cfg, &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")]);
        assert_eq!(s.endpoint, "http://c:4317");
        let s = settings(
            &cfg,
            &[(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://c:4317")],
        );
        assert_eq!(s.endpoint, "http://c:4317");
    }

    #[test]
    fn sdk_disabled_wins_over_everything() {
        let env = [
            (OTEL_SDK_DISABLED, "TRUE"),
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
        ];
        assert_eq!(resolve(&enabled(), &env).unwrap(), None);
        let env = [(OTEL_SDK_DISABLED, "false")];
        assert!(resolve(&enabled(), &env).unwrap().is_some());
        let e = error(&enabled(), &[(OTEL_SDK_DISABLED, "yes")]);
        assert!(e.contains("OTEL_SDK_DISABLED"), "{e}");
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let s = settings(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_PROTOCOL, "  "), (OTEL_SDK_DISABLED, "")],
        );
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            resolve(
                &TracingConfig::default(),
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "")]
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn default_endpoints_follow_the_protocol() {
        assert_eq!(settings(&enabled(), &[]).endpoint, "http://localhost:4317");
        let s = settings(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")],
        );
        assert_eq!(s.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn endpoint_precedence_and_the_traces_path() {
        let cfg = TracingConfig {
            endpoint: Some("http://file:4318".into()),
            protocol: OtlpProtocol::HttpProtobuf,
            ..enabled()
        };
        // The file's endpoint is a base URL.
        assert_eq!(settings(&cfg, &[]).endpoint, "http://file:4318/v1/traces");
        // The generic variable beats the file and gets the path appended,
        // after its own path, without doubling a slash.
        let s = settings(
            &cfg,
            &[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4318/prefix/")],
        );
        assert_eq!(s.endpoint, "http://generic:4318/prefix/v1/traces");
        // The signal variable beats both and is used as is.
        let s = settings(
            &cfg,
            &[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4318"),
                (
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    "http://signal:9999/custom",
                ),
            ],
        );
        assert_eq!(s.endpoint, "http://signal:9999/custom");
        // gRPC has no path to append.
        let s = settings(
            &cfg,
            &[
                (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4317"),
            ],
        );
        assert_eq!(s.endpoint, "http://generic:4317");
    }

    #[test]
    fn bad_endpoints_name_their_source() {
        let e = error(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4317")],
        );
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && e.contains("http://"),
            "{e}"
        );
        let e = error(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://")],
        );
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{e}");
        let e = error(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4317")],
        );
        assert!(e.contains("https is not supported"), "{e}");
        let cfg = TracingConfig {
            endpoint: Some("ftp://x".into()),
            ..enabled()
        };
        let e = error(&cfg, &[]);
        assert!(e.contains("tracing.endpoint"), "{e}");
    }

    #[test]
    fn protocol_precedence() {
        let cfg = TracingConfig {
            protocol: OtlpProtocol::HttpProtobuf,
            ..enabled()
        };
        assert_eq!(settings(&cfg, &[]).protocol, OtlpProtocol::HttpProtobuf);
        let s = settings(&cfg, &[(OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")]);
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        let s = settings(
            &cfg,
            &[
                (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
                (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
            ],
        );
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        let e = error(&cfg, &[(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/json")]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && e.contains("not supported"),
            "{e}"
        );
        let e = error(&cfg, &[(OTEL_EXPORTER_OTLP_PROTOCOL, "udp")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }

    #[test]
    fn header_precedence_merges_by_name() {
        let cfg = TracingConfig {
            headers: vec![
                ("X-Api-Key".into(), "file".into()),
                ("x-tenant".into(), "t1".into()),
            ],
            ..enabled()
        };
        let s = settings(&cfg, &[]);
        assert_eq!(
            s.headers,
            [
                ("x-api-key".into(), "file".into()),
                ("x-tenant".into(), "t1".into())
            ]
        );
        // The generic variable overrides the file per name.
        let s = settings(
            &cfg,
            &[(
                OTEL_EXPORTER_OTLP_HEADERS,
                "x-api-key=generic, x-extra = a%20b",
            )],
        );
        assert_eq!(
            s.headers,
            [
                ("x-api-key".into(), "generic".into()),
                ("x-tenant".into(), "t1".into()),
                ("x-extra".into(), "a b".into()),
            ]
        );
        // The signal variable replaces the generic one entirely.
        let s = settings(
            &cfg,
            &[
                (OTEL_EXPORTER_OTLP_HEADERS, "x-api-key=generic,x-extra=1"),
                (OTEL_EXPORTER_OTLP_TRACES_HEADERS, "x-api-key=signal"),
            ],
        );
        assert_eq!(
            s.headers,
            [
                ("x-api-key".into(), "signal".into()),
                ("x-tenant".into(), "t1".into())
            ]
        );
    }

    #[test]
    fn bad_headers_name_the_variable_but_not_the_secret() {
        let e = error(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_HEADERS, "a=1,supersecret")],
        );
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_HEADERS") && e.contains("header 2"),
            "{e}"
        );
        assert!(!e.contains("supersecret"), "{e}");
        let e = error(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_TRACES_HEADERS, "bad name=1")],
        );
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_HEADERS"), "{e}");
        let e = error(&enabled(), &[(OTEL_EXPORTER_OTLP_HEADERS, "k=%zz")]);
        assert!(e.contains("%-escape"), "{e}");
        let e = error(
            &enabled(),
            &[(OTEL_EXPORTER_OTLP_HEADERS, "k=line%0Abreak")],
        );
        assert!(
            e.contains("not a valid header value") && !e.contains("break"),
            "{e}"
        );
    }

    #[test]
    fn resource_attributes_and_service_name_precedence() {
        let s = settings(&enabled(), &[]);
        assert_eq!(s.resource["service.name"], "weir");
        assert_eq!(s.resource["service.instance.id"], "n1");
        assert_eq!(s.resource["cloud.region"], "eu-west");
        assert_eq!(s.resource["service.version"], env!("CARGO_PKG_VERSION"));

        let cfg = TracingConfig {
            service_name: "edge".into(),
            ..enabled()
        };
        assert_eq!(settings(&cfg, &[]).service_name(), "edge");
        let s = settings(
            &cfg,
            &[(
                OTEL_RESOURCE_ATTRIBUTES,
                "service.name=from-attrs,deployment.environment=prod%2Feu",
            )],
        );
        assert_eq!(s.service_name(), "from-attrs");
        assert_eq!(s.resource["deployment.environment"], "prod/eu");
        let s = settings(
            &cfg,
            &[
                (OTEL_RESOURCE_ATTRIBUTES, "service.name=from-attrs"),
                (OTEL_SERVICE_NAME, "from-name"),
            ],
        );
        assert_eq!(s.service_name(), "from-name");
        let e = error(&cfg, &[(OTEL_RESOURCE_ATTRIBUTES, "a=1,=2")]);
        assert!(
            e.contains("OTEL_RESOURCE_ATTRIBUTES") && e.contains("attribute 2"),
            "{e}"
        );
    }

    #[test]
    fn sampler_parsing() {
        assert_eq!(
            parse_sampler("always_on", None).unwrap(),
            SamplerSpec::AlwaysOn
        );
        assert_eq!(
            parse_sampler("always_off", Some("0.5")).unwrap(),
            SamplerSpec::AlwaysOff
        );
        assert_eq!(
            parse_sampler("traceidratio", Some("0.25")).unwrap(),
            SamplerSpec::TraceIdRatio(0.25)
        );
        assert_eq!(
            parse_sampler("traceidratio", None).unwrap(),
            SamplerSpec::TraceIdRatio(1.0)
        );
        assert_eq!(
            parse_sampler("parentbased_always_on", None).unwrap(),
            SamplerSpec::ParentBasedAlwaysOn
        );
        assert_eq!(
            parse_sampler("parentbased_always_off", None).unwrap(),
            SamplerSpec::ParentBasedAlwaysOff
        );
        assert_eq!(
            parse_sampler("parentbased_traceidratio", Some(" 0 ")).unwrap(),
            SamplerSpec::ParentBasedTraceIdRatio(0.0)
        );
        for bad in ["1.5", "-0.1", "NaN", "half"] {
            let e = parse_sampler("traceidratio", Some(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
        }
        for bad in [
            "jaeger_remote",
            "xray",
            "AlwaysOn",
            "parentbased_jaeger_remote",
        ] {
            let e = parse_sampler(bad, None).unwrap_err().to_string();
            assert!(e.contains("OTEL_TRACES_SAMPLER") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn sampler_precedence() {
        let cfg = TracingConfig {
            sample_ratio: 0.1,
            ..enabled()
        };
        assert_eq!(
            settings(&cfg, &[]).sampler,
            SamplerSpec::ParentBasedTraceIdRatio(0.1)
        );
        // The argument alone sets the ratio of the default sampler.
        let s = settings(&cfg, &[(OTEL_TRACES_SAMPLER_ARG, "0.5")]);
        assert_eq!(s.sampler, SamplerSpec::ParentBasedTraceIdRatio(0.5));
        let s = settings(
            &cfg,
            &[
                (OTEL_TRACES_SAMPLER, "always_on"),
                (OTEL_TRACES_SAMPLER_ARG, "0.5"),
            ],
        );
        assert_eq!(s.sampler, SamplerSpec::AlwaysOn);
        let bad = TracingConfig {
            sample_ratio: 2.0,
            ..enabled()
        };
        assert!(error(&bad, &[]).contains("tracing.sample_ratio"));
    }

    #[test]
    fn batch_and_timeout_precedence() {
        let cfg = TracingConfig {
            max_queue_size: 100,
            max_export_batch_size: 10,
            ..enabled()
        };
        let s = settings(&cfg, &[]);
        assert_eq!((s.max_queue_size, s.max_export_batch_size), (100, 10));
        assert_eq!(s.export_timeout, Duration::from_secs(5));
        let s = settings(
            &cfg,
            &[
                (OTEL_BSP_MAX_QUEUE_SIZE, "50"),
                (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "5"),
                (OTEL_BSP_SCHEDULE_DELAY, "250"),
                (OTEL_BSP_EXPORT_TIMEOUT, "700"),
                (OTEL_EXPORTER_OTLP_TIMEOUT, "800"),
            ],
        );
        assert_eq!((s.max_queue_size, s.max_export_batch_size), (50, 5));
        assert_eq!(s.scheduled_delay, Duration::from_millis(250));
        assert_eq!(s.export_timeout, Duration::from_millis(800));
        let s = settings(
            &cfg,
            &[
                (OTEL_EXPORTER_OTLP_TIMEOUT, "800"),
                (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "900"),
            ],
        );
        assert_eq!(s.export_timeout, Duration::from_millis(900));

        let e = error(&cfg, &[(OTEL_BSP_MAX_QUEUE_SIZE, "5")]);
        assert!(e.contains("tracing.max_export_batch_size"), "{e}");
        let e = error(&cfg, &[(OTEL_BSP_MAX_QUEUE_SIZE, "lots")]);
        assert!(e.contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{e}");
        let e = error(&cfg, &[(OTEL_EXPORTER_OTLP_TIMEOUT, "0")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{e}");
        let e = error(&cfg, &[(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "5s")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"), "{e}");
    }
}
