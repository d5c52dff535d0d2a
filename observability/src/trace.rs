//! Request tracing: W3C Trace Context in and out, a SERVER span per request
//! and a CLIENT span per upstream attempt, exported over OTLP.
//!
//! Owns the OpenTelemetry SDK set-up (sampler, resource, batch export over
//! gRPC or HTTP/protobuf), the `OTEL_*` environment variables, and the
//! span names and attributes of the OpenTelemetry HTTP semantic
//! conventions. It does not own where in the proxy the spans start and end
//! (the data path calls this API), nor the `tracing` log subscriber: spans
//! here are recorded straight into the SDK's `SpanData` and handed to its
//! batch processor, so the request path pays for neither `tracing` span
//! machinery nor the SDK tracer's per-span context (ADR 0006).
//!
//! ```no_run
//! use http::{HeaderMap, Request, StatusCode};
//! use weir_observability::config::{NodeInfo, TracingConfig};
//! use weir_observability::trace::{RequestInfo, Tracing};
//!
//! # fn demo(req: Request<()>, client: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
//! let tracing = Tracing::init(&TracingConfig::default(), &NodeInfo::default())?;
//!
//! // When the request arrives:
//! let mut span = tracing.start_request(&RequestInfo::new(&req, client, "http"));
//! // Once the route is known:
//! span.set_route("/users/:id");
//! span.set_route_id("users");
//!
//! // For each attempt at an upstream target:
//! let attempt = span.start_attempt("10.0.0.7:8080");
//! let mut upstream_headers = HeaderMap::new();
//! attempt.inject(&mut upstream_headers);
//! // ... send, then:
//! attempt.end(StatusCode::OK);
//!
//! // When the response is sent:
//! span.end(StatusCode::OK);
//!
//! // When the process stops (blocks up to the export timeout):
//! tracing.shutdown();
//! # Ok(()) }
//! ```
//!
//! When tracing is off every call is a no-op on an empty value and the
//! proxy forwards the client's own `traceparent` untouched. When it is on
//! and a request is sampled out, spans are still created (not recorded,
//! not exported) so the upstream receives a `traceparent` continuing the
//! trace with the sampled flag clear.

pub(crate) mod export;
mod propagation;
pub(crate) mod settings;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, StringValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SpanData, SpanEvents,
    SpanLinks, SpanProcessor,
};

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::{SpanId, TraceId};
pub use propagation::{TRACEPARENT, TRACESTATE, parse_traceparent, traceparent_value};
pub use settings::{
    EnvVars, OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, SamplerSpec, TraceSettings,
    parse_sampler,
};

use crate::config::{NodeInfo, OtlpProtocol, TracingConfig};
use crate::otlp::Signal;
use export::{ExportHttpClient, ExportRuntime, QueueGate, RuntimeExporter, Stats};

/// Instrumentation scope of every weir span.
const SCOPE_NAME: &str = "weir";

/// Extra time `shutdown` gives the batch thread, past the export deadline,
/// to report back.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// Attributes kept per span, as the SDK's default span limit; more are
/// counted as dropped. weir sets far fewer.
const MAX_ATTRIBUTES: usize = 128;

/// Room for every attribute a SERVER span gets, so its vector is allocated
/// once.
const SERVER_ATTRIBUTES: usize = 20;

/// Room for every attribute a CLIENT span gets.
const CLIENT_ATTRIBUTES: usize = 10;

/// Attribute names (OpenTelemetry HTTP semantic conventions, then weir's).
pub mod attr {
    /// `http.request.method`
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// `http.request.method_original`, when the method is not a known one.
    pub const HTTP_REQUEST_METHOD_ORIGINAL: &str = "http.request.method_original";
    /// `http.response.status_code`
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// `http.route`
    pub const HTTP_ROUTE: &str = "http.route";
    /// `http.request.resend_count`, on retries.
    pub const HTTP_REQUEST_RESEND_COUNT: &str = "http.request.resend_count";
    /// `url.path`
    pub const URL_PATH: &str = "url.path";
    /// `url.scheme`
    pub const URL_SCHEME: &str = "url.scheme";
    /// `server.address`
    pub const SERVER_ADDRESS: &str = "server.address";
    /// `server.port`
    pub const SERVER_PORT: &str = "server.port";
    /// `client.address`
    pub const CLIENT_ADDRESS: &str = "client.address";
    /// `network.peer.address`
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    /// `network.peer.port`
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    /// `network.protocol.version`
    pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
    /// `user_agent.original`
    pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
    /// `error.type`
    pub const ERROR_TYPE: &str = "error.type";
    /// `weir.route.id`
    pub const WEIR_ROUTE_ID: &str = "weir.route.id";
    /// `weir.service.id`
    pub const WEIR_SERVICE_ID: &str = "weir.service.id";
    /// `weir.consumer`
    pub const WEIR_CONSUMER: &str = "weir.consumer";
    /// `weir.cache.status`
    pub const WEIR_CACHE_STATUS: &str = "weir.cache.status";
    /// `weir.ratelimit.decision`
    pub const WEIR_RATELIMIT_DECISION: &str = "weir.ratelimit.decision";
    /// `weir.node.id`
    pub const WEIR_NODE_ID: &str = "weir.node.id";
    /// `weir.region`
    pub const WEIR_REGION: &str = "weir.region";
    /// `weir.upstream.target`
    pub const WEIR_UPSTREAM_TARGET: &str = "weir.upstream.target";
}

// === TraceError ===

/// Why tracing could not start: the error type metrics export shares
/// ([`crate::otlp::ExportError`]). Each names the variable or config key at
/// fault.
pub type TraceError = crate::otlp::ExportError;

// === Tracing ===

/// The tracing handle: cheap to clone, shared by every request.
///
/// Built once at start-up by [`Tracing::init`]; [`Tracing::disabled`] when
/// tracing is off. Spans end up in a bounded queue drained by a background
/// thread, so nothing here ever waits for the collector.
#[derive(Clone, Default)]
pub struct Tracing {
    inner: Option<Arc<Enabled>>,
}

struct Enabled {
    /// The SDK's batch processor behind the counting gate: finished spans
    /// go straight here, built by weir without the SDK's tracer.
    processor: QueueGate,
    scope: InstrumentationScope,
    ids: RandomIdGenerator,
    stats: Arc<Stats>,
    /// Set by the first shutdown: later spans are neither recorded nor
    /// queued.
    shut_down: AtomicBool,
    /// `weir.node.id` and `weir.region`, built once.
    node_attrs: Vec<KeyValue>,
    settings: TraceSettings,
    /// The export thread, shared with OTLP metrics export.
    runtime: Arc<ExportRuntime>,
}

impl Enabled {
    fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let timeout = self.settings.export_timeout;
        // Exports still queued must finish by then; later ones fail fast.
        let _ = self.stats.deadline.set(Instant::now() + timeout);
        let _ = self
            .processor
            .shutdown_with_timeout(timeout + SHUTDOWN_GRACE);
    }

    /// Whether a new span with this parent (or none) and trace id is
    /// recorded: the SDK's samplers, decided without building a context.
    fn sampled(&self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        if self.shut_down.load(Ordering::Relaxed) {
            return false;
        }
        sample(self.settings.sampler, parent, trace_id)
    }

    /// The context of a new span: the parent's trace (or a new one), a new
    /// span id, the sampler's decision in the sampled flag and the parent's
    /// `tracestate`, as the SDK's tracer builds it.
    fn new_context(&self, parent: Option<&SpanContext>) -> SpanContext {
        let parent = parent.filter(|p| p.is_valid());
        let trace_id = parent.map_or_else(|| self.ids.new_trace_id(), SpanContext::trace_id);
        let flags = if self.sampled(parent, trace_id) {
            parent.map_or(TraceFlags::SAMPLED, |p| p.trace_flags().with_sampled(true))
        } else {
            TraceFlags::default()
        };
        let state = parent.map_or(TraceState::NONE, |p| p.trace_state().clone());
        SpanContext::new(trace_id, self.ids.new_span_id(), flags, false, state)
    }

    /// Hands a finished span to the export queue.
    fn finish(&self, span: SpanData) {
        if self.shut_down.load(Ordering::Relaxed) {
            // The batch thread is gone: count it rather than lose it
            // silently.
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.processor.on_end(span);
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        // Without this the SDK would flush on drop with no overall deadline.
        self.shutdown();
    }
}

/// The decision of the SDK sampler `spec` for a span of `trace_id` whose
/// parent is `parent`; the same rules as `opentelemetry_sdk`'s `Sampler`
/// (a test holds them equal).
fn sample(spec: SamplerSpec, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
    let parent = parent.filter(|p| p.is_valid());
    match spec {
        SamplerSpec::AlwaysOn => true,
        SamplerSpec::AlwaysOff => false,
        SamplerSpec::TraceIdRatio(r) => ratio_sampled(r, trace_id),
        SamplerSpec::ParentBasedAlwaysOn => parent.is_none_or(SpanContext::is_sampled),
        SamplerSpec::ParentBasedAlwaysOff => parent.is_some_and(SpanContext::is_sampled),
        SamplerSpec::ParentBasedTraceIdRatio(r) => match parent {
            Some(p) => p.is_sampled(),
            None => ratio_sampled(r, trace_id),
        },
    }
}

/// `TraceIdRatioBased`: the low 63 bits of the trace id below the ratio.
fn ratio_sampled(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Tracing(disabled)"),
            Some(e) => f
                .debug_struct("Tracing")
                .field("endpoint", &e.settings.endpoint)
                .field("protocol", &e.settings.protocol)
                .field("sampler", &e.settings.sampler)
                .finish(),
        }
    }
}

impl Tracing {
    /// Reads `cfg`, then the `OTEL_*` environment variables, which win as
    /// the OpenTelemetry specification says. Returns a disabled handle when
    /// tracing is off, and an error naming the variable or key when a
    /// setting cannot be used.
    ///
    /// Starts two threads when tracing is on: the SDK's batch processor and
    /// the export runtime. Safe to call inside or outside a tokio runtime.
    pub fn init(cfg: &TracingConfig, node: &NodeInfo) -> Result<Tracing, TraceError> {
        Tracing::init_with_env(cfg, node, &EnvVars::from_process())
    }

    /// [`Tracing::init`] with the environment given as a map.
    pub fn init_with_env(
        cfg: &TracingConfig,
        node: &NodeInfo,
        env: &EnvVars,
    ) -> Result<Tracing, TraceError> {
        match TraceSettings::resolve(cfg, node, env)? {
            None => Ok(Tracing::disabled()),
            Some(settings) => Tracing::from_settings(settings, node),
        }
    }

    /// Starts export with settings already resolved.
    pub fn from_settings(settings: TraceSettings, node: &NodeInfo) -> Result<Tracing, TraceError> {
        let runtime = Arc::new(ExportRuntime::start().map_err(|source| TraceError::Thread {
            signal: Signal::Traces,
            source,
        })?);
        let exporter = {
            // tonic's channel and hyper's pool spawn their background tasks
            // on the runtime current while they are built.
            let _enter = runtime.handle().enter();
            build_exporter(&settings)?
        };
        let stats = Arc::new(Stats::default());
        let exporter = RuntimeExporter::new(
            exporter,
            runtime.clone(),
            settings.export_timeout,
            stats.clone(),
        );
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .with_max_export_batch_size(settings.max_export_batch_size)
            .with_scheduled_delay(settings.scheduled_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let mut gate = QueueGate::new(processor, settings.max_queue_size, stats.clone());

        let resource = sdk_resource(&settings.resource);
        // What the SDK's provider would do: the exporter learns the
        // resource before the first span.
        gate.set_resource(&resource);
        let scope = InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();

        let mut node_attrs = Vec::with_capacity(2);
        if !node.node_id.is_empty() {
            node_attrs.push(KeyValue::new(
                attr::WEIR_NODE_ID,
                StringValue::from(Arc::<str>::from(node.node_id.as_str())),
            ));
        }
        if let Some(region) = node.region.as_deref().filter(|r| !r.is_empty()) {
            node_attrs.push(KeyValue::new(
                attr::WEIR_REGION,
                StringValue::from(Arc::<str>::from(region)),
            ));
        }

        tracing::info!(
            endpoint = %settings.endpoint,
            protocol = ?settings.protocol,
            sampler = %settings.sampler,
            service = settings.service_name(),
            "exporting traces over otlp"
        );
        Ok(Tracing {
            inner: Some(Arc::new(Enabled {
                processor: gate,
                scope,
                ids: RandomIdGenerator::default(),
                stats,
                shut_down: AtomicBool::new(false),
                node_attrs,
                settings,
                runtime,
            })),
        })
    }

    /// A handle that records nothing and costs nothing.
    pub fn disabled() -> Tracing {
        Tracing { inner: None }
    }

    /// Whether spans are being created and exported.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The export runtime, for other signals to share its thread. It
    /// stops when tracing shuts down.
    pub(crate) fn export_runtime(&self) -> Option<Arc<ExportRuntime>> {
        self.inner.as_ref().map(|e| e.runtime.clone())
    }

    /// The settings in force, when enabled.
    pub fn settings(&self) -> Option<&TraceSettings> {
        self.inner.as_deref().map(|e| &e.settings)
    }

    /// Starts the SERVER span of a request, continuing the trace of its
    /// `traceparent` when it carries a valid one. Named after the method
    /// until [`RequestSpan::set_route`] gives it its route.
    pub fn start_request(&self, req: &RequestInfo<'_>) -> RequestSpan {
        let Some(shared) = &self.inner else {
            return RequestSpan { inner: None };
        };
        let parent = propagation::extract(req.headers);
        let cx = shared.new_context(parent.as_ref());
        let method = MethodName::of(req.method);
        let rec = cx.is_sampled().then(|| {
            let mut attrs = Vec::with_capacity(SERVER_ATTRIBUTES);
            method.push_attrs(&mut attrs);
            attrs.push(KeyValue::new(attr::URL_PATH, shared_str(req.uri.path())));
            attrs.push(KeyValue::new(attr::URL_SCHEME, req.scheme));
            if let Some((host, port)) = server_address(req) {
                attrs.push(KeyValue::new(attr::SERVER_ADDRESS, shared_str(host)));
                attrs.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
            }
            if let Some(client) = req.client {
                attrs.push(KeyValue::new(attr::CLIENT_ADDRESS, ip_str(client.ip())));
            }
            if let Some(v) = protocol_version(req.version) {
                attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, v));
            }
            if let Some(ua) = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                attrs.push(KeyValue::new(attr::USER_AGENT_ORIGINAL, shared_str(ua)));
            }
            attrs.extend(shared.node_attrs.iter().cloned());
            Recording {
                kind: SpanKind::Server,
                parent_span_id: parent.as_ref().map_or(SpanId::INVALID, |p| p.span_id()),
                parent_remote: parent.is_some(),
                name: Cow::Borrowed(method.span_name()),
                start: SystemTime::now(),
                attrs,
                dropped: 0,
                status: Status::Unset,
            }
        });
        RequestSpan {
            inner: Some(Box::new(ReqInner {
                shared: shared.clone(),
                cx,
                method,
                attempts: AtomicU32::new(0),
                rec,
                error_type_set: false,
            })),
        }
    }

    /// Spans dropped because the export queue was full.
    pub fn dropped_spans(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |e| e.stats.dropped.load(Ordering::Relaxed))
    }

    /// Spans the collector accepted.
    pub fn exported_spans(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |e| e.stats.exported.load(Ordering::Relaxed))
    }

    /// Spans lost because their export failed or timed out.
    pub fn failed_spans(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |e| e.stats.failed.load(Ordering::Relaxed))
    }

    /// Spans waiting in the queue.
    pub fn queued_spans(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |e| e.stats.queued.load(Ordering::Relaxed) as u64)
    }

    /// Exports what is queued and stops exporting. Blocks the calling
    /// thread for at most the export timeout (plus a moment), so call it
    /// from `spawn_blocking` or a plain thread in async code. Spans started
    /// afterwards are not recorded. Calling it twice is harmless.
    pub fn shutdown(&self) {
        if let Some(e) = &self.inner {
            e.shutdown();
        }
    }
}

/// The resource every signal is exported with: the SDK's telemetry
/// attributes, then `attrs`.
pub(crate) fn sdk_resource(attrs: &std::collections::BTreeMap<String, String>) -> Resource {
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(
            attrs
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

fn build_exporter(
    settings: &TraceSettings,
) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let fail = |reason: String| TraceError::Exporter {
        signal: Signal::Traces,
        endpoint: settings.endpoint.clone(),
        reason,
    };
    let timeout = settings.export_timeout;
    let mut headers = HeaderMap::new();
    for (k, v) in &settings.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let value = http::HeaderValue::from_str(v).map_err(|e| fail(e.to_string()))?;
        headers.append(name, value);
    }
    let built = match settings.protocol {
        OtlpProtocol::Grpc => {
            let channel = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
                .map_err(|e| fail(e.to_string()))?
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_lazy();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_metadata(tonic::metadata::MetadataMap::from_headers(headers))
                .build()
        }
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(settings.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(settings.headers.iter().cloned().collect())
            .with_http_client(ExportHttpClient::new(timeout))
            .build(),
    };
    built.map_err(|e| fail(e.to_string()))
}

// === RequestInfo ===

/// What [`Tracing::start_request`] reads from an incoming request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request target; its path becomes `url.path` (the query is left out:
    /// it may carry secrets), its authority `server.address`.
    pub uri: &'a Uri,
    /// HTTP version.
    pub version: Version,
    /// Request headers: `traceparent`, `tracestate`, `host`, `user-agent`.
    pub headers: &'a HeaderMap,
    /// The peer, for `client.address`.
    pub client: Option<SocketAddr>,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl<'a> RequestInfo<'a> {
    /// Everything from the request, plus what only the connection knows.
    pub fn new<B>(req: &'a Request<B>, client: SocketAddr, scheme: &'static str) -> Self {
        RequestInfo {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            client: Some(client),
            scheme,
        }
    }
}

/// `server.address` and `server.port`: the authority the client asked
/// for (`:authority`, else `Host`), the port defaulting by scheme.
fn server_address<'a>(req: &RequestInfo<'a>) -> Option<(&'a str, u16)> {
    let authority = match req.uri.authority() {
        Some(a) => a.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let (host, port) = split_host_port(authority);
    if host.is_empty() {
        return None;
    }
    let port = port.unwrap_or(if req.scheme == "https" { 443 } else { 80 });
    Some((host, port))
}

/// `host:port`, `[v6]:port`, or a bare host.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (s, None),
        },
        _ => (s, None),
    }
}

fn protocol_version(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}

/// The method as the conventions want it: known methods as they are,
/// anything else as `_OTHER` (span name `HTTP`) with the original kept
/// aside, so span names stay few.
#[derive(Debug, Clone)]
enum MethodName {
    Known(&'static str),
    Other(String),
}

impl MethodName {
    fn of(m: &Method) -> MethodName {
        // The same nine standard methods the metrics label with.
        match crate::metrics::method_label(m) {
            "_OTHER" => MethodName::Other(m.as_str().to_string()),
            known => MethodName::Known(known),
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            MethodName::Known(m) => m,
            MethodName::Other(_) => "_OTHER",
        }
    }

    fn span_name(&self) -> &'static str {
        match self {
            MethodName::Known(m) => m,
            MethodName::Other(_) => "HTTP",
        }
    }

    fn push_attrs(&self, attrs: &mut Vec<KeyValue>) {
        attrs.push(KeyValue::new(attr::HTTP_REQUEST_METHOD, self.as_str()));
        if let MethodName::Other(original) = self {
            attrs.push(KeyValue::new(
                attr::HTTP_REQUEST_METHOD_ORIGINAL,
                original.clone(),
            ));
        }
    }
}

/// A string attribute value in one allocation that the exporter's copy of
/// the span shares rather than copies.
fn shared_str(s: &str) -> StringValue {
    StringValue::from(Arc::<str>::from(s))
}

/// An IP address as an attribute value, formatted without a `String` on
/// the way.
fn ip_str(ip: std::net::IpAddr) -> StringValue {
    use std::io::Write as _;
    // The longest IPv6 text form is 45 bytes.
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    match write!(w, "{ip}") {
        Ok(()) => {
            let len = 48 - w.len();
            shared_str(std::str::from_utf8(&buf[..len]).unwrap_or_default())
        }
        Err(_) => StringValue::from(ip.to_string()),
    }
}

// === Recording ===

/// What a recorded span gathers until it ends: the fields of the SDK's
/// `SpanData`, in one allocation for the attributes. Spans are built here
/// rather than by the SDK's tracer, which would allocate a context per
/// span, grow the attribute vector one push at a time and go through the
/// provider's processor list; the finished `SpanData` goes to the same
/// batch processor and OTLP exporter.
struct Recording {
    kind: SpanKind,
    parent_span_id: SpanId,
    parent_remote: bool,
    name: Cow<'static, str>,
    start: SystemTime,
    attrs: Vec<KeyValue>,
    dropped: u32,
    status: Status,
}

impl Recording {
    fn push(&mut self, kv: KeyValue) {
        if self.attrs.len() < MAX_ATTRIBUTES {
            self.attrs.push(kv);
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    fn into_span_data(self, cx: SpanContext, scope: &InstrumentationScope) -> SpanData {
        SpanData {
            span_context: cx,
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_remote,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: self.attrs,
            dropped_attributes_count: self.dropped,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: self.status,
            instrumentation_scope: scope.clone(),
        }
    }
}

// === RequestSpan ===

/// The SERVER span of one request. Setters do nothing (and allocate
/// nothing) when the request is not recorded. End it with
/// [`RequestSpan::end`]; dropping it ends it without a status code.
#[derive(Debug)]
pub struct RequestSpan {
    // Boxed: a request future should carry one pointer for its span, and
    // a disabled handle nothing more.
    inner: Option<Box<ReqInner>>,
}

struct ReqInner {
    shared: Arc<Enabled>,
    cx: SpanContext,
    method: MethodName,
    attempts: AtomicU32,
    /// `None` when the request is not recorded.
    rec: Option<Recording>,
    error_type_set: bool,
}

impl Drop for ReqInner {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            let cx = std::mem::replace(&mut self.cx, SpanContext::NONE);
            self.shared
                .finish(rec.into_span_data(cx, &self.shared.scope));
        }
    }
}

impl fmt::Debug for ReqInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSpan")
            .field("context", &self.cx)
            .field("recording", &self.rec.is_some())
            .finish()
    }
}

impl RequestSpan {
    /// A span that records nothing, as from a disabled [`Tracing`].
    pub fn none() -> RequestSpan {
        RequestSpan { inner: None }
    }

    fn recording(&mut self) -> Option<&mut Recording> {
        self.inner.as_deref_mut().and_then(|i| i.rec.as_mut())
    }

    fn set_str(&mut self, key: &'static str, value: impl Into<StringValue>) {
        if let Some(r) = self.recording() {
            r.push(KeyValue::new(key, value.into()));
        }
    }

    /// Sets `http.route` to the route's path template (`/users/:id`) and
    /// renames the span `GET /users/:id`. Takes a `&'static str`, a
    /// `String` or an `Arc<str>` (shared, not copied).
    pub fn set_route(&mut self, template: impl Into<StringValue>) {
        if let Some(i) = self.inner.as_deref_mut()
            && let Some(r) = i.rec.as_mut()
        {
            let template = template.into();
            r.name = Cow::Owned(format!("{} {}", i.method.span_name(), template.as_str()));
            r.push(KeyValue::new(attr::HTTP_ROUTE, template));
        }
    }

    /// `weir.route.id`
    pub fn set_route_id(&mut self, id: impl Into<StringValue>) {
        self.set_str(attr::WEIR_ROUTE_ID, id);
    }

    /// `weir.service.id`
    pub fn set_service_id(&mut self, id: impl Into<StringValue>) {
        self.set_str(attr::WEIR_SERVICE_ID, id);
    }

    /// `weir.consumer`: the authenticated consumer.
    pub fn set_consumer(&mut self, consumer: impl Into<StringValue>) {
        self.set_str(attr::WEIR_CONSUMER, consumer);
    }

    /// `weir.cache.status`: `hit`, `miss`, `bypass`, …
    pub fn set_cache_status(&mut self, status: impl Into<StringValue>) {
        self.set_str(attr::WEIR_CACHE_STATUS, status);
    }

    /// `weir.ratelimit.decision`: `allowed`, `limited`, …
    pub fn set_ratelimit_decision(&mut self, decision: impl Into<StringValue>) {
        self.set_str(attr::WEIR_RATELIMIT_DECISION, decision);
    }

    /// `error.type`: a low-cardinality reason the request failed
    /// (`upstream_timeout`, `no_healthy_upstream`, …). Marks the span as
    /// an error even if the status is below 500. Without it, a 5xx status
    /// is its own error type (`"502"`).
    pub fn set_error_type(&mut self, error_type: &str) {
        if let Some(i) = self.inner.as_deref_mut()
            && let Some(r) = i.rec.as_mut()
        {
            i.error_type_set = true;
            r.push(KeyValue::new(attr::ERROR_TYPE, error_type.to_string()));
        }
    }

    /// Any other attribute.
    pub fn set_attribute(&mut self, kv: KeyValue) {
        if let Some(r) = self.recording() {
            r.push(kv);
        }
    }

    /// Whether this span is recorded (and will be exported).
    pub fn is_recording(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.rec.is_some())
    }

    /// The trace this request belongs to, recorded or not; `None` when
    /// tracing is off. For logs.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.context().map(|cx| cx.trace_id())
    }

    /// This span's id; `None` when tracing is off.
    pub fn span_id(&self) -> Option<SpanId> {
        self.context().map(|cx| cx.span_id())
    }

    fn context(&self) -> Option<&SpanContext> {
        self.inner
            .as_ref()
            .map(|i| &i.cx)
            .filter(|cx| cx.is_valid())
    }

    /// Starts the CLIENT span of one attempt at `target` (`host:port`), a
    /// child of this span. The second and later attempts carry
    /// `http.request.resend_count`.
    pub fn start_attempt(&self, target: &str) -> AttemptSpan {
        let Some(i) = &self.inner else {
            return AttemptSpan { inner: None };
        };
        let resend = i.attempts.fetch_add(1, Ordering::Relaxed);
        let cx = i.shared.new_context(Some(&i.cx));
        let rec = cx.is_sampled().then(|| {
            let mut attrs = Vec::with_capacity(CLIENT_ATTRIBUTES);
            i.method.push_attrs(&mut attrs);
            let (host, port) = split_host_port(target);
            attrs.push(KeyValue::new(attr::SERVER_ADDRESS, shared_str(host)));
            if let Some(port) = port {
                attrs.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
            }
            attrs.push(KeyValue::new(
                attr::WEIR_UPSTREAM_TARGET,
                shared_str(target),
            ));
            if resend > 0 {
                attrs.push(KeyValue::new(
                    attr::HTTP_REQUEST_RESEND_COUNT,
                    i64::from(resend),
                ));
            }
            Recording {
                kind: SpanKind::Client,
                parent_span_id: i.cx.span_id(),
                // The SERVER span is this process's own.
                parent_remote: false,
                name: Cow::Borrowed(i.method.span_name()),
                start: SystemTime::now(),
                attrs,
                dropped: 0,
                status: Status::Unset,
            }
        });
        AttemptSpan {
            inner: Some(Box::new(AttemptInner {
                shared: i.shared.clone(),
                cx,
                rec,
            })),
        }
    }

    /// Ends the span with the status sent to the client. 5xx, or an
    /// earlier [`RequestSpan::set_error_type`], makes it an error.
    pub fn end(mut self, status: StatusCode) {
        if let Some(i) = self.inner.as_deref_mut()
            && let Some(r) = i.rec.as_mut()
        {
            let code = status.as_u16();
            r.push(KeyValue::new(
                attr::HTTP_RESPONSE_STATUS_CODE,
                i64::from(code),
            ));
            if code >= 500 && !i.error_type_set {
                r.push(KeyValue::new(attr::ERROR_TYPE, status.as_str().to_string()));
            }
            if code >= 500 || i.error_type_set {
                r.status = Status::Error {
                    description: Cow::Borrowed(""),
                };
            }
        }
        // Dropping the inner span queues it for export.
    }
}

// === AttemptSpan ===

/// The CLIENT span of one upstream attempt.
#[derive(Debug)]
pub struct AttemptSpan {
    inner: Option<Box<AttemptInner>>,
}

struct AttemptInner {
    shared: Arc<Enabled>,
    cx: SpanContext,
    rec: Option<Recording>,
}

impl Drop for AttemptInner {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            let cx = std::mem::replace(&mut self.cx, SpanContext::NONE);
            self.shared
                .finish(rec.into_span_data(cx, &self.shared.scope));
        }
    }
}

impl fmt::Debug for AttemptInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptSpan")
            .field("context", &self.cx)
            .field("recording", &self.rec.is_some())
            .finish()
    }
}

impl AttemptSpan {
    /// Writes `traceparent` (and `tracestate`, when there is one) for the
    /// upstream request, replacing the client's. The sampled flag is clear
    /// when this request is not recorded. Does nothing when tracing is off.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(i) = &self.inner {
            propagation::inject(&i.cx, headers);
        }
    }

    /// `network.peer.address` and `network.peer.port`: where the
    /// connection actually went.
    pub fn set_peer_address(&mut self, peer: SocketAddr) {
        if let Some(r) = self.inner.as_mut().and_then(|i| i.rec.as_mut()) {
            r.push(KeyValue::new(attr::NETWORK_PEER_ADDRESS, ip_str(peer.ip())));
            r.push(KeyValue::new(
                attr::NETWORK_PEER_PORT,
                i64::from(peer.port()),
            ));
        }
    }

    /// Whether this span is recorded.
    pub fn is_recording(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.rec.is_some())
    }

    /// The trace id sent upstream; `None` when tracing is off.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.inner.as_ref().map(|i| i.cx.trace_id())
    }

    /// This span's id, the upstream's parent id; `None` when tracing is off.
    pub fn span_id(&self) -> Option<SpanId> {
        self.inner.as_ref().map(|i| i.cx.span_id())
    }

    /// Ends the attempt with the upstream's status; 4xx and 5xx are errors
    /// for a client span.
    pub fn end(self, status: StatusCode) {
        self.finish(Some(status), None);
    }

    /// Ends an attempt that got no response: `error_type` is a short,
    /// low-cardinality reason (`connect`, `timeout`, `reset`, …).
    pub fn end_with_error(self, error_type: &str) {
        self.finish(None, Some(error_type));
    }

    fn finish(mut self, status: Option<StatusCode>, error: Option<&str>) {
        let Some(r) = self.inner.as_mut().and_then(|i| i.rec.as_mut()) else {
            return;
        };
        if let Some(status) = status {
            let code = status.as_u16();
            r.push(KeyValue::new(
                attr::HTTP_RESPONSE_STATUS_CODE,
                i64::from(code),
            ));
            if code >= 400 {
                r.push(KeyValue::new(attr::ERROR_TYPE, status.as_str().to_string()));
                r.status = Status::Error {
                    description: Cow::Borrowed(""),
                };
            }
        }
        if let Some(error) = error {
            r.push(KeyValue::new(attr::ERROR_TYPE, error.to_string()));
            r.status = Status::Error {
                description: Cow::Owned(error.to_string()),
            };
        }
        // Dropping the inner span queues it for export.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_handle_is_one_pointer() {
        // Request futures carry these across awaits.
        assert_eq!(
            std::mem::size_of::<RequestSpan>(),
            std::mem::size_of::<usize>()
        );
        assert_eq!(
            std::mem::size_of::<AttemptSpan>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn handles_can_cross_tasks_and_threads() {
        // A request future holding spans must stay `Send`, and `&RequestSpan`
        // held across an await needs `Sync`.
        fn is<T: Send + Sync>() {}
        is::<Tracing>();
        is::<RequestSpan>();
        is::<AttemptSpan>();
    }

    /// The SDK sampler weir's decisions must agree with.
    fn sdk_sampler(spec: SamplerSpec) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
        match spec {
            SamplerSpec::AlwaysOn => Sampler::AlwaysOn,
            SamplerSpec::AlwaysOff => Sampler::AlwaysOff,
            SamplerSpec::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSpec::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
            SamplerSpec::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
            SamplerSpec::ParentBasedTraceIdRatio(r) => parent_based(Sampler::TraceIdRatioBased(r)),
        }
    }

    proptest::proptest! {
        #[test]
        fn sampling_decisions_match_the_sdk_sampler(
            trace in 1u128..,
            parent_span in proptest::option::of(1u64..),
            parent_sampled: bool,
            which in 0usize..6,
            ratio in proptest::prop_oneof![0.0f64..=1.0, proptest::strategy::Just(0.0), proptest::strategy::Just(1.0)],
        ) {
            use opentelemetry::trace::TraceContextExt;
            use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
            let spec = [
                SamplerSpec::AlwaysOn,
                SamplerSpec::AlwaysOff,
                SamplerSpec::TraceIdRatio(ratio),
                SamplerSpec::ParentBasedAlwaysOn,
                SamplerSpec::ParentBasedAlwaysOff,
                SamplerSpec::ParentBasedTraceIdRatio(ratio),
            ][which];
            let trace_id = TraceId::from(trace);
            let parent = parent_span.map(|span| {
                let flags = if parent_sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
                SpanContext::new(trace_id, SpanId::from(span), flags, true, TraceState::NONE)
            });
            let cx = match &parent {
                Some(p) => opentelemetry::Context::new().with_remote_span_context(p.clone()),
                None => opentelemetry::Context::new(),
            };
            let sdk = sdk_sampler(spec)
                .should_sample(Some(&cx), trace_id, "GET", &SpanKind::Server, &[], &[])
                .decision;
            proptest::prop_assert_eq!(
                sample(spec, parent.as_ref(), trace_id),
                sdk == SamplingDecision::RecordAndSample
            );
        }
    }

    #[test]
    fn host_and_port_splitting() {
        assert_eq!(split_host_port("a.example:8080"), ("a.example", Some(8080)));
        assert_eq!(split_host_port("a.example"), ("a.example", None));
        assert_eq!(split_host_port("[::1]:9"), ("::1", Some(9)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("h:notaport"), ("h:notaport", None));
    }

    #[test]
    fn unknown_methods_are_other() {
        let m = MethodName::of(&Method::from_bytes(b"PURGE").unwrap());
        assert_eq!((m.as_str(), m.span_name()), ("_OTHER", "HTTP"));
        let m = MethodName::of(&Method::PATCH);
        assert_eq!((m.as_str(), m.span_name()), ("PATCH", "PATCH"));
    }

    #[test]
    fn disabled_costs_nothing_and_touches_no_header() {
        let t = Tracing::disabled();
        let req = Request::builder()
            .uri("/x")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(())
            .unwrap();
        let mut span = t.start_request(&RequestInfo::new(
            &req,
            "127.0.0.1:1".parse().unwrap(),
            "http",
        ));
        span.set_route("/x");
        let attempt = span.start_attempt("127.0.0.1:2");
        let mut out = req.headers().clone();
        attempt.inject(&mut out);
        assert_eq!(out, *req.headers());
        assert!(span.trace_id().is_none() && attempt.trace_id().is_none());
        attempt.end(StatusCode::OK);
        span.end(StatusCode::OK);
        assert_eq!(t.dropped_spans(), 0);
    }
}
