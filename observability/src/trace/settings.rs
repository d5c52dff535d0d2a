//! Effective trace settings: the config file's `observability.tracing`
//! section, overridden by OpenTelemetry's standard environment variables.
//!
//! Everything here is a pure function of a [`TracingConfig`], a
//! [`NodeInfo`] and an [`EnvVars`] map, so precedence is tested without
//! touching the process environment. Precedence follows the OpenTelemetry
//! specification: a signal-specific variable (`…_TRACES_…`) beats the
//! generic one, and any variable beats the file. A variable that is set but
//! empty counts as unset, as the specification says; any other value that
//! cannot be used is an error naming the variable, never silently dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use http::uri::{Scheme, Uri};

use super::TraceError;
use crate::config::{NodeInfo, OtlpProtocol, TracingConfig};

/// `OTEL_SDK_DISABLED`: `true` turns tracing off whatever else is set.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// Collector base URL; `/v1/traces` is appended for HTTP.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Collector URL for traces, used exactly as given.
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `grpc` or `http/protobuf`.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `grpc` or `http/protobuf`, for traces.
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `key=value,key2=value2`, values URL-encoded.
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// `key=value,key2=value2` for traces.
pub const OTEL_EXPORTER_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// Export timeout in milliseconds.
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// Export timeout for traces in milliseconds.
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `service.name`.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `key=value,…` resource attributes, values URL-encoded.
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
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

pub(crate) const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
pub(crate) const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const TRACES_PATH: &str = "/v1/traces";

/// The environment as `init` sees it: only `OTEL_*` variables, empty
/// values already dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvVars {
    vars: BTreeMap<String, String>,
    /// Names whose values are not valid Unicode: an error once read.
    not_unicode: BTreeSet<String>,
}

impl EnvVars {
    /// The `OTEL_*` variables of this process.
    pub fn from_process() -> EnvVars {
        let mut env = EnvVars::default();
        for (k, v) in std::env::vars_os() {
            let Ok(k) = k.into_string() else { continue };
            if !k.starts_with("OTEL_") {
                continue;
            }
            match v.into_string() {
                Ok(v) if v.trim().is_empty() => {}
                Ok(v) => {
                    env.vars.insert(k, v);
                }
                Err(_) => {
                    env.not_unicode.insert(k);
                }
            }
        }
        env
    }

    /// A map for tests and embedding: `[("OTEL_SERVICE_NAME", "api")]`.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> EnvVars
    where
        K: Into<String>,
        V: Into<String>,
    {
        EnvVars {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .filter(|(_, v)| !v.trim().is_empty())
                .collect(),
            not_unicode: BTreeSet::new(),
        }
    }

    /// The value of a set, non-empty variable, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|v| v.trim())
    }

    /// Whether no variable is set.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty() && self.not_unicode.is_empty()
    }

    /// The first set variable of `names`, with its name.
    pub(crate) fn first<'a>(&'a self, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
        names.iter().find_map(|n| self.get(n).map(|v| (*n, v)))
    }

    /// Fails on the first of `names` whose value is not Unicode.
    pub(crate) fn check_unicode(&self, names: &[&'static str]) -> Result<(), TraceError> {
        match names.iter().find(|n| self.not_unicode.contains(**n)) {
            Some(n) => Err(TraceError::env(n, "the value is not valid Unicode".into())),
            None => Ok(()),
        }
    }
}

/// Every variable `resolve` reads.
const ALL_VARS: &[&str] = &[
    OTEL_SDK_DISABLED,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
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
        env.check_unicode(&[OTEL_SDK_DISABLED])?;
        if parse_bool(env, OTEL_SDK_DISABLED)?.unwrap_or(false) {
            return Ok(None);
        }
        let endpoint_vars = [
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            OTEL_EXPORTER_OTLP_ENDPOINT,
        ];
        env.check_unicode(&endpoint_vars)?;
        if !cfg.enabled && env.first(&endpoint_vars).is_none() {
            return Ok(None);
        }
        env.check_unicode(ALL_VARS)?;

        let protocol = match env.first(&[
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ]) {
            Some((var, v)) => parse_protocol(v).map_err(|reason| TraceError::env(var, reason))?,
            None => cfg.protocol,
        };

        let endpoint = match (
            env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
            env.get(OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(url), _) => check_endpoint(url, None)
                .map_err(|r| TraceError::env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, r))?,
            (None, Some(url)) => check_endpoint(url, traces_path(protocol))
                .map_err(|r| TraceError::env(OTEL_EXPORTER_OTLP_ENDPOINT, r))?,
            (None, None) => match cfg.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
                Some(url) => check_endpoint(url.trim(), traces_path(protocol))
                    .map_err(|r| TraceError::config("tracing.endpoint", r))?,
                None => {
                    let base = match protocol {
                        OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT,
                        OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
                    };
                    check_endpoint(base, traces_path(protocol))
                        .map_err(|r| TraceError::config("tracing.endpoint", r))?
                }
            },
        };

        // File headers first; the chosen variable replaces them key by key.
        let mut headers: Vec<(String, String)> = Vec::new();
        for (i, (k, v)) in cfg.headers.iter().enumerate() {
            let (k, v) = check_header(k, v)
                .map_err(|r| TraceError::config(&format!("tracing.headers[{i}]"), r))?;
            upsert(&mut headers, k, v);
        }
        if let Some((var, raw)) = env.first(&[
            OTEL_EXPORTER_OTLP_TRACES_HEADERS,
            OTEL_EXPORTER_OTLP_HEADERS,
        ]) {
            for (k, v) in parse_key_values(raw, "header").map_err(|r| TraceError::env(var, r))? {
                let (k, v) = check_header(&k, &v).map_err(|r| TraceError::env(var, r))?;
                upsert(&mut headers, k, v);
            }
        }

        let resource = resource(cfg, node, env)?;
        let sampler = sampler(cfg, env)?;

        let max_queue_size = match parse_number(env, OTEL_BSP_MAX_QUEUE_SIZE)? {
            Some(n) => n,
            None => cfg.max_queue_size,
        };
        if max_queue_size == 0 {
            return Err(match env.get(OTEL_BSP_MAX_QUEUE_SIZE) {
                Some(_) => TraceError::env(OTEL_BSP_MAX_QUEUE_SIZE, "must be at least 1".into()),
                None => TraceError::config("tracing.max_queue_size", "must be at least 1".into()),
            });
        }
        let max_export_batch_size = match parse_number(env, OTEL_BSP_MAX_EXPORT_BATCH_SIZE)? {
            Some(n) => n,
            None => cfg.max_export_batch_size,
        };
        if max_export_batch_size == 0 || max_export_batch_size > max_queue_size {
            let reason = format!("must be between 1 and the queue size ({max_queue_size})");
            return Err(match env.get(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) {
                Some(_) => TraceError::env(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, reason),
                None => TraceError::config("tracing.max_export_batch_size", reason),
            });
        }
        let scheduled_delay =
            parse_millis(env, &[OTEL_BSP_SCHEDULE_DELAY])?.unwrap_or(cfg.scheduled_delay);
        if scheduled_delay.is_zero() {
            return Err(TraceError::config(
                "tracing.scheduled_delay",
                "must be positive".into(),
            ));
        }
        let export_timeout = parse_millis(
            env,
            &[
                OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
                OTEL_EXPORTER_OTLP_TIMEOUT,
                OTEL_BSP_EXPORT_TIMEOUT,
            ],
        )?
        .unwrap_or(cfg.export_timeout);
        if export_timeout.is_zero() {
            return Err(TraceError::config(
                "tracing.export_timeout",
                "must be positive".into(),
            ));
        }

        Ok(Some(TraceSettings {
            endpoint,
            protocol,
            headers,
            resource,
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

fn traces_path(protocol: OtlpProtocol) -> Option<&'static str> {
    match protocol {
        OtlpProtocol::Grpc => None,
        OtlpProtocol::HttpProtobuf => Some(TRACES_PATH),
    }
}

pub(crate) fn upsert(list: &mut Vec<(String, String)>, k: String, v: String) {
    match list.iter_mut().find(|(name, _)| *name == k) {
        Some(slot) => slot.1 = v,
        None => list.push((k, v)),
    }
}

/// Resource attributes: weir's own, then `OTEL_RESOURCE_ATTRIBUTES`, then
/// the service name (`OTEL_SERVICE_NAME` beats `service.name` from
/// `OTEL_RESOURCE_ATTRIBUTES`, which beats the file).
pub(crate) fn resource(
    cfg: &TracingConfig,
    node: &NodeInfo,
    env: &EnvVars,
) -> Result<BTreeMap<String, String>, TraceError> {
    let mut attrs = BTreeMap::new();
    if cfg.service_name.trim().is_empty() {
        return Err(TraceError::config(
            "tracing.service_name",
            "must not be empty".into(),
        ));
    }
    attrs.insert("service.name".to_string(), cfg.service_name.clone());
    attrs.insert(
        "service.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    if !node.node_id.is_empty() {
        attrs.insert("service.instance.id".to_string(), node.node_id.clone());
    }
    if let Some(region) = node.region.as_ref().filter(|r| !r.is_empty()) {
        attrs.insert("cloud.region".to_string(), region.clone());
    }
    if let Some(raw) = env.get(OTEL_RESOURCE_ATTRIBUTES) {
        for (k, v) in parse_key_values(raw, "attribute")
            .map_err(|r| TraceError::env(OTEL_RESOURCE_ATTRIBUTES, r))?
        {
            attrs.insert(k, v);
        }
    }
    if let Some(name) = env.get(OTEL_SERVICE_NAME) {
        attrs.insert("service.name".to_string(), name.to_string());
    }
    Ok(attrs)
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
                        return Err(TraceError::config(
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
            return Err(TraceError::env(
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
        _ => Err(TraceError::env(
            OTEL_TRACES_SAMPLER_ARG,
            format!("`{}` is not a ratio between 0 and 1", raw.escape_debug()),
        )),
    }
}

pub(crate) fn parse_bool(env: &EnvVars, var: &'static str) -> Result<Option<bool>, TraceError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(TraceError::env(
            var,
            format!("`{}` is not `true` or `false`", v.escape_debug()),
        )),
    }
}

fn parse_number(env: &EnvVars, var: &'static str) -> Result<Option<usize>, TraceError> {
    env.get(var)
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                TraceError::env(var, format!("`{}` is not a whole number", v.escape_debug()))
            })
        })
        .transpose()
}

pub(crate) fn parse_millis(
    env: &EnvVars,
    vars: &[&'static str],
) -> Result<Option<Duration>, TraceError> {
    let Some((var, v)) = env.first(vars) else {
        return Ok(None);
    };
    match v.parse::<u64>() {
        Ok(0) => Err(TraceError::env(
            var,
            "must be a positive number of milliseconds".into(),
        )),
        Ok(ms) => Ok(Some(Duration::from_millis(ms))),
        Err(_) => Err(TraceError::env(
            var,
            format!("`{}` is not a number of milliseconds", v.escape_debug()),
        )),
    }
}

pub(crate) fn parse_protocol(raw: &str) -> Result<OtlpProtocol, String> {
    match raw {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err("`http/json` is not supported; use `grpc` or `http/protobuf`".into()),
        other => Err(format!(
            "`{}` is not a protocol; use `grpc` or `http/protobuf`",
            other.escape_debug()
        )),
    }
}

/// Checks a collector URL and, for the generic and file endpoints over
/// HTTP, appends the signal's path (`/v1/traces`, `/v1/metrics`) to its
/// path as the specification says.
pub(crate) fn check_endpoint(raw: &str, append: Option<&str>) -> Result<String, String> {
    let uri: Uri = raw
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", raw.escape_debug()))?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => {}
        Some(s) if *s == Scheme::HTTPS => {
            return Err(format!(
                "`{raw}`: https is not supported yet; export to a collector on the same host or \
                 network over http"
            ));
        }
        _ => return Err(format!("`{}` must start with http://", raw.escape_debug())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{raw}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{raw}` must not have a query"));
    }
    Ok(match append {
        None => raw.to_string(),
        Some(path) => {
            let base = raw.trim_end_matches('/');
            // `http://h:4318` parses with path `/`; anything else is a prefix.
            format!("{base}{path}")
        }
    })
}

pub(crate) fn check_header(name: &str, value: &str) -> Result<(String, String), String> {
    let name = name.trim().to_ascii_lowercase();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "`{}` is not a valid header name",
            name.escape_debug()
        ));
    }
    // Never echo the value: export headers usually carry credentials.
    if http::HeaderValue::from_str(value).is_err() {
        return Err(format!(
            "the value of header `{name}` is not a valid header value"
        ));
    }
    Ok((name, value.to_string()))
}

/// Parses the W3C-baggage-like list of the OTLP header and resource
/// variables: `key=value` pairs separated by commas, whitespace trimmed,
/// values percent-decoded. Errors give the 1-based position, not the value,
/// which may be a secret.
pub(crate) fn parse_key_values(raw: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, item) in raw.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let n = i + 1;
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("{what} {n} is not `key=value`"));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{what} {n} has an empty key"));
        }
        let k = percent_decode(k).ok_or_else(|| format!("{what} {n} has a bad %-escape"))?;
        let v = percent_decode(v.trim())
            .ok_or_else(|| format!("{what} `{k}` has a bad %-escape in its value"))?;
        out.push((k, v));
    }
    Ok(out)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are
/// not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb%3d").as_deref(), Some("a,b="));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("50%"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    proptest::proptest! {
        #[test]
        fn key_value_lists_never_panic(raw in "\\PC{0,64}") {
            let _ = parse_key_values(&raw, "header");
        }

        #[test]
        fn encoded_values_round_trip(v in "[ -~]{0,32}") {
            let encoded: String = v.bytes().map(|b| format!("%{b:02X}")).collect();
            let parsed = parse_key_values(&format!("k={encoded}"), "attribute").unwrap();
            proptest::prop_assert_eq!(&parsed[0].1, &v);
        }
    }
}
