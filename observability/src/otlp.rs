//! The OTLP export settings both signals share: OpenTelemetry's standard
//! `OTEL_EXPORTER_OTLP_*` environment variables, their precedence over the
//! config file, and the one error type export set-up fails with.
//!
//! Traces (`trace/settings.rs`) and metrics (`metrics_export/settings.rs`)
//! each call [`resolve_transport`] with their [`Signal`] and their section
//! of the file, then add what is theirs alone (sampler and batching;
//! export interval). The rules are the OpenTelemetry specification's: a
//! signal variable (`…_TRACES_…`, `…_METRICS_…`) beats the generic one, any
//! variable beats the file, a variable that is set but empty counts as
//! unset, and a value that cannot be used is an error naming the variable,
//! never silently dropped. Everything here is a pure function of the config
//! and an [`EnvVars`] map, so precedence is tested without touching the
//! process environment. This module does not own the exporters, the
//! sampler or anything sent over the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::uri::{Scheme, Uri};

use crate::config::{NodeInfo, OtlpProtocol, TracingConfig};

/// `OTEL_SDK_DISABLED`: `true` turns export off whatever else is set.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// Collector base URL; the signal's path (`/v1/traces`, `/v1/metrics`) is
/// appended for HTTP.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `grpc` or `http/protobuf`.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `key=value,key2=value2`, values URL-encoded.
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Export timeout in milliseconds.
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// `service.name`.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `key=value,…` resource attributes, values URL-encoded.
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// Collector URL for traces, used exactly as given.
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `grpc` or `http/protobuf`, for traces.
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `key=value,key2=value2` for traces.
pub const OTEL_EXPORTER_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// Export timeout for traces in milliseconds.
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";

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

pub(crate) const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
pub(crate) const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";

// === Signal ===

/// Which kind of telemetry is exported: it picks the signal-specific
/// variables, the HTTP path and the wording of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// The Prometheus registry's series.
    Metrics,
}

impl Signal {
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`.
    pub fn endpoint_var(self) -> &'static str {
        match self {
            Signal::Traces => OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            Signal::Metrics => OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
        }
    }

    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`.
    pub fn protocol_var(self) -> &'static str {
        match self {
            Signal::Traces => OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            Signal::Metrics => OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
        }
    }

    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`.
    pub fn headers_var(self) -> &'static str {
        match self {
            Signal::Traces => OTEL_EXPORTER_OTLP_TRACES_HEADERS,
            Signal::Metrics => OTEL_EXPORTER_OTLP_METRICS_HEADERS,
        }
    }

    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`.
    pub fn timeout_var(self) -> &'static str {
        match self {
            Signal::Traces => OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
            Signal::Metrics => OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
        }
    }

    /// `OTEL_<SIGNAL>_EXPORTER`, where weir reads it (metrics only: traces
    /// are turned on by the file or an endpoint variable).
    fn exporter_var(self) -> Option<&'static str> {
        match self {
            Signal::Traces => None,
            Signal::Metrics => Some(OTEL_METRICS_EXPORTER),
        }
    }

    /// The path appended to a base URL over HTTP.
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The export timeout: this signal's variable, else the generic one,
    /// else `fallback_var` (the signal's older name for it), else the
    /// file's value, given with its key.
    pub(crate) fn export_timeout(
        self,
        env: &EnvVars,
        fallback_var: &'static str,
        file: (&str, Duration),
    ) -> Result<Duration, ExportError> {
        let vars = [self.timeout_var(), OTEL_EXPORTER_OTLP_TIMEOUT, fallback_var];
        positive_millis(env, &vars, file)
    }

    /// How errors name the export: `trace export`, `metrics export`.
    fn thread_noun(self) -> &'static str {
        match self {
            Signal::Traces => "trace",
            Signal::Metrics => "metrics",
        }
    }

    /// How errors name the exporter: `otlp export`, `otlp metrics export`.
    fn exporter_noun(self) -> &'static str {
        match self {
            Signal::Traces => "otlp export",
            Signal::Metrics => "otlp metrics export",
        }
    }
}

// === ExportError ===

/// Why trace or metrics export could not start. Each names the variable or
/// config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An `OTEL_*` environment variable has a value weir cannot use.
    #[error("environment variable `{var}`: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong, without echoing secrets.
        reason: String,
    },
    /// A setting below `observability` cannot be used.
    #[error("`observability.{key}`: {reason}")]
    Config {
        /// The key below `observability`, e.g. `tracing.endpoint` or
        /// `metrics.otlp.endpoint`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The export thread could not be started.
    #[error("could not start the {} export thread: {source}", .signal.thread_noun())]
    Thread {
        /// Whose thread.
        signal: Signal,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The exporter refused its settings or the collector URL cannot be
    /// used by the client.
    #[error("could not set up {} to `{endpoint}`: {reason}", .signal.exporter_noun())]
    Exporter {
        /// Whose exporter.
        signal: Signal,
        /// The collector URL.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

impl ExportError {
    pub(crate) fn env(var: &'static str, reason: String) -> ExportError {
        ExportError::Env { var, reason }
    }

    pub(crate) fn config(key: &str, reason: String) -> ExportError {
        ExportError::Config {
            key: key.to_string(),
            reason,
        }
    }
}

// === EnvVars ===

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
    pub(crate) fn check_unicode(&self, names: &[&'static str]) -> Result<(), ExportError> {
        match names.iter().find(|n| self.not_unicode.contains(**n)) {
            Some(n) => Err(ExportError::env(n, "the value is not valid Unicode".into())),
            None => Ok(()),
        }
    }
}

// === the transport both signals resolve ===

/// Every variable [`resolve_transport`] reads once export is on, besides
/// the signal's own.
const TRANSPORT_VARS: &[&str] = &[
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
];

/// What a signal's part of the config file says about the transport.
pub(crate) struct FileTransport<'a> {
    /// Export asked for by the file.
    pub enabled: bool,
    /// The protocol when no variable sets one.
    pub protocol: OtlpProtocol,
    /// Base URLs in order of preference, each with the key an error in it
    /// is reported under; the first one set and not blank is used. The
    /// first key also reports an error in the built-in default.
    pub endpoints: &'a [(&'static str, Option<&'a str>)],
    /// The file's headers and the key they are reported under.
    pub headers: (&'a str, &'a [(String, String)]),
}

/// Where and how a signal is exported, after config and environment were
/// merged and checked.
pub(crate) struct Transport {
    /// For HTTP the full URL with the signal's path, for gRPC the
    /// collector's base URL.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Headers sent with every export request, in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Resource attributes, `service.name` included.
    pub resource: BTreeMap<String, String>,
}

/// Merges `file` with `env` for `signal`. `Ok(None)` means export is off:
/// not asked for by the file, `OTEL_<SIGNAL>_EXPORTER=otlp` (where read)
/// or an endpoint variable, or turned off by `OTEL_<SIGNAL>_EXPORTER=none`
/// or `OTEL_SDK_DISABLED=true`. When off, no other variable is looked at,
/// so a stray `OTEL_*` meant for another program never stops weir from
/// starting; when on, `extra_vars` (the signal's own) must be Unicode too.
pub(crate) fn resolve_transport(
    signal: Signal,
    file: &FileTransport<'_>,
    tracing: &TracingConfig,
    node: &NodeInfo,
    env: &EnvVars,
    extra_vars: &[&'static str],
) -> Result<Option<Transport>, ExportError> {
    env.check_unicode(&[OTEL_SDK_DISABLED])?;
    if let Some(var) = signal.exporter_var() {
        env.check_unicode(&[var])?;
    }
    if parse_bool(env, OTEL_SDK_DISABLED)?.unwrap_or(false) {
        return Ok(None);
    }
    let asked = match signal
        .exporter_var()
        .and_then(|var| env.get(var).map(|v| (var, v)))
    {
        None => false,
        Some((_, "none")) => return Ok(None),
        Some((_, "otlp")) => true,
        Some((var, other)) => {
            return Err(ExportError::env(
                var,
                format!(
                    "`{}` is not supported; use `otlp` or `none` (Prometheus is served at \
                     /metrics on the admin listener)",
                    other.escape_debug()
                ),
            ));
        }
    };
    let endpoint_vars = [signal.endpoint_var(), OTEL_EXPORTER_OTLP_ENDPOINT];
    env.check_unicode(&endpoint_vars)?;
    if !file.enabled && !asked && env.first(&endpoint_vars).is_none() {
        return Ok(None);
    }
    env.check_unicode(&[
        signal.protocol_var(),
        signal.headers_var(),
        signal.timeout_var(),
    ])?;
    env.check_unicode(TRANSPORT_VARS)?;
    env.check_unicode(extra_vars)?;

    let protocol = match env.first(&[signal.protocol_var(), OTEL_EXPORTER_OTLP_PROTOCOL]) {
        Some((var, v)) => parse_protocol(v).map_err(|reason| ExportError::env(var, reason))?,
        None => file.protocol,
    };
    let path = match protocol {
        OtlpProtocol::Grpc => None,
        OtlpProtocol::HttpProtobuf => Some(signal.http_path()),
    };

    let file_endpoint = file.endpoints.iter().find_map(|(key, e)| {
        e.map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| (*key, e))
    });
    let endpoint = match (
        env.get(signal.endpoint_var()),
        env.get(OTEL_EXPORTER_OTLP_ENDPOINT),
    ) {
        (Some(url), _) => {
            check_endpoint(url, None).map_err(|r| ExportError::env(signal.endpoint_var(), r))?
        }
        (None, Some(url)) => check_endpoint(url, path)
            .map_err(|r| ExportError::env(OTEL_EXPORTER_OTLP_ENDPOINT, r))?,
        (None, None) => match file_endpoint {
            Some((key, url)) => {
                check_endpoint(url, path).map_err(|r| ExportError::config(key, r))?
            }
            None => {
                let base = match protocol {
                    OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT,
                    OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
                };
                let key = file.endpoints.first().map_or("endpoint", |(key, _)| key);
                check_endpoint(base, path).map_err(|r| ExportError::config(key, r))?
            }
        },
    };

    // File headers first; the chosen variable replaces them key by key.
    let (key, file_headers) = file.headers;
    let mut headers: Vec<(String, String)> = Vec::new();
    for (i, (k, v)) in file_headers.iter().enumerate() {
        let (k, v) =
            check_header(k, v).map_err(|r| ExportError::config(&format!("{key}[{i}]"), r))?;
        upsert(&mut headers, k, v);
    }
    if let Some((var, raw)) = env.first(&[signal.headers_var(), OTEL_EXPORTER_OTLP_HEADERS]) {
        for (k, v) in parse_key_values(raw, "header").map_err(|r| ExportError::env(var, r))? {
            let (k, v) = check_header(&k, &v).map_err(|r| ExportError::env(var, r))?;
            upsert(&mut headers, k, v);
        }
    }

    let resource = resource(tracing, node, env)?;
    Ok(Some(Transport {
        endpoint,
        protocol,
        headers,
        resource,
    }))
}

/// The first of `vars` that is set, in milliseconds, else the file's value
/// (a key below `observability` and its value). Zero is an error either way.
pub(crate) fn positive_millis(
    env: &EnvVars,
    vars: &[&'static str],
    (key, file): (&str, Duration),
) -> Result<Duration, ExportError> {
    let millis = parse_millis(env, vars)?.unwrap_or(file);
    if millis.is_zero() {
        return Err(ExportError::config(key, "must be positive".into()));
    }
    Ok(millis)
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
) -> Result<BTreeMap<String, String>, ExportError> {
    let mut attrs = BTreeMap::new();
    if cfg.service_name.trim().is_empty() {
        return Err(ExportError::config(
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
            .map_err(|r| ExportError::env(OTEL_RESOURCE_ATTRIBUTES, r))?
        {
            attrs.insert(k, v);
        }
    }
    if let Some(name) = env.get(OTEL_SERVICE_NAME) {
        attrs.insert("service.name".to_string(), name.to_string());
    }
    Ok(attrs)
}

pub(crate) fn parse_bool(env: &EnvVars, var: &'static str) -> Result<Option<bool>, ExportError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(ExportError::env(
            var,
            format!("`{}` is not `true` or `false`", v.escape_debug()),
        )),
    }
}

pub(crate) fn parse_millis(
    env: &EnvVars,
    vars: &[&'static str],
) -> Result<Option<Duration>, ExportError> {
    let Some((var, v)) = env.first(vars) else {
        return Ok(None);
    };
    match v.parse::<u64>() {
        Ok(0) => Err(ExportError::env(
            var,
            "must be a positive number of milliseconds".into(),
        )),
        Ok(ms) => Ok(Some(Duration::from_millis(ms))),
        Err(_) => Err(ExportError::env(
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

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb%3d").as_deref(), Some("a,b="));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("50%"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn errors_name_their_signal() {
        let io = || std::io::Error::other("no threads");
        let e = ExportError::Thread {
            signal: Signal::Traces,
            source: io(),
        };
        assert_eq!(
            e.to_string(),
            "could not start the trace export thread: no threads"
        );
        let e = ExportError::Thread {
            signal: Signal::Metrics,
            source: io(),
        };
        assert_eq!(
            e.to_string(),
            "could not start the metrics export thread: no threads"
        );
        let e = ExportError::Exporter {
            signal: Signal::Traces,
            endpoint: "http://c:4317".into(),
            reason: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "could not set up otlp export to `http://c:4317`: bad"
        );
        let e = ExportError::Exporter {
            signal: Signal::Metrics,
            endpoint: "http://c:4317".into(),
            reason: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "could not set up otlp metrics export to `http://c:4317`: bad"
        );
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
