//! Request tracing: W3C Trace Context in and out, a SERVER span per request
//! and a CLIENT span per upstream attempt, exported over OTLP.
//!
//! Owns the OpenTelemetry SDK set-up (sampler, resource, batch export over
//! gRPC or HTTP/protobuf), the `OTEL_*` environment variables, and the
//! span names and attributes of the OpenTelemetry HTTP semantic
//! conventions. It does not own where in the proxy the spans start and end
//! (the data path calls this API), nor the `tracing` log subscriber: spans
//! here are made with the SDK tracer directly, so the request path pays
//! for no `tracing` span machinery.
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

mod export;
mod propagation;
mod settings;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, StringValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
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
use export::{ExportHttpClient, ExportRuntime, QueueGate, RuntimeExporter, Stats};

/// Instrumentation scope of every weir span.
const SCOPE_NAME: &str = "weir";

/// Extra time `shutdown` gives the batch thread, past the export deadline,
/// to report back.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

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

/// Why tracing could not start. Each names the variable or config key at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// An `OTEL_*` environment variable has a value weir cannot use.
    #[error("environment variable `{var}`: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong, without echoing secrets.
        reason: String,
    },
    /// A setting of `observability.tracing` cannot be used.
    #[error("`observability.{key}`: {reason}")]
    Config {
        /// The key below `observability`, e.g. `tracing.endpoint`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The export thread could not be started.
    #[error("could not start the trace export thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The OTLP exporter refused its settings.
    #[error("could not set up otlp export to `{endpoint}`: {reason}")]
    Exporter {
        /// The collector URL.
        endpoint: String,
        /// The exporter's reason.
        reason: String,
    },
}

impl TraceError {
    fn env(var: &'static str, reason: String) -> TraceError {
        TraceError::Env { var, reason }
    }

    fn config(key: &str, reason: String) -> TraceError {
        TraceError::Config {
            key: key.to_string(),
            reason,
        }
    }
}

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
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    stats: Arc<Stats>,
    /// `weir.node.id` and `weir.region`, built once.
    node_attrs: Vec<KeyValue>,
    settings: TraceSettings,
}

impl Enabled {
    fn shutdown(&self) {
        let timeout = self.settings.export_timeout;
        // Exports still queued must finish by then; later ones fail fast.
        let _ = self.stats.deadline.set(Instant::now() + timeout);
        let _ = self
            .provider
            .shutdown_with_timeout(timeout + SHUTDOWN_GRACE);
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        // Without this the SDK would flush on drop with no overall deadline.
        self.shutdown();
    }
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
        let runtime = ExportRuntime::start().map_err(TraceError::Thread)?;
        let exporter = {
            // tonic's channel and hyper's pool spawn their background tasks
            // on the runtime current while they are built.
            let _enter = runtime.handle().enter();
            build_exporter(&settings)?
        };
        let stats = Arc::new(Stats::default());
        let exporter =
            RuntimeExporter::new(exporter, runtime, settings.export_timeout, stats.clone());
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .with_max_export_batch_size(settings.max_export_batch_size)
            .with_scheduled_delay(settings.scheduled_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let gate = QueueGate::new(processor, settings.max_queue_size, stats.clone());

        let resource = Resource::builder_empty()
            .with_detector(Box::new(TelemetryResourceDetector))
            .with_attributes(
                settings
                    .resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(gate)
            .with_sampler(sdk_sampler(settings.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder(SCOPE_NAME)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );

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
                provider,
                tracer,
                stats,
                node_attrs,
                settings,
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
        let parent = match propagation::extract(req.headers) {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => Context::new(),
        };
        let method = MethodName::of(req.method);
        let mut span = shared
            .tracer
            .span_builder(method.span_name())
            .with_kind(SpanKind::Server)
            .start_with_context(&shared.tracer, &parent);
        let recording = span.is_recording();
        if recording {
            let mut attrs = Vec::with_capacity(14);
            method.push_attrs(&mut attrs);
            attrs.push(KeyValue::new(attr::URL_PATH, req.uri.path().to_string()));
            attrs.push(KeyValue::new(attr::URL_SCHEME, req.scheme));
            if let Some((host, port)) = server_address(req) {
                attrs.push(KeyValue::new(attr::SERVER_ADDRESS, host.to_string()));
                attrs.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
            }
            if let Some(client) = req.client {
                attrs.push(KeyValue::new(attr::CLIENT_ADDRESS, client.ip().to_string()));
            }
            if let Some(v) = protocol_version(req.version) {
                attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, v));
            }
            if let Some(ua) = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                attrs.push(KeyValue::new(attr::USER_AGENT_ORIGINAL, ua.to_string()));
            }
            attrs.extend(shared.node_attrs.iter().cloned());
            span.set_attributes(attrs);
        }
        RequestSpan {
            inner: Some(Box::new(ReqInner {
                span,
                shared: shared.clone(),
                method,
                attempts: AtomicU32::new(0),
                recording,
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

fn sdk_sampler(spec: SamplerSpec) -> Sampler {
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

fn build_exporter(
    settings: &TraceSettings,
) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let fail = |reason: String| TraceError::Exporter {
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

// === RequestSpan ===

/// The SERVER span of one request. Setters do nothing (and allocate
/// nothing) when the request is not recorded. End it with
/// [`RequestSpan::end`]; dropping it ends it without a status code.
#[derive(Debug)]
pub struct RequestSpan {
    // Boxed: an SDK span is ~400 bytes, and a disabled handle should cost
    // the request future one pointer, not that.
    inner: Option<Box<ReqInner>>,
}

struct ReqInner {
    span: opentelemetry_sdk::trace::Span,
    shared: Arc<Enabled>,
    method: MethodName,
    attempts: AtomicU32,
    recording: bool,
    error_type_set: bool,
}

impl fmt::Debug for ReqInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSpan")
            .field("context", self.span.span_context())
            .field("recording", &self.recording)
            .finish()
    }
}

impl RequestSpan {
    /// A span that records nothing, as from a disabled [`Tracing`].
    pub fn none() -> RequestSpan {
        RequestSpan { inner: None }
    }

    fn recording(&mut self) -> Option<&mut ReqInner> {
        self.inner.as_deref_mut().filter(|i| i.recording)
    }

    fn set_str(&mut self, key: &'static str, value: &str) {
        if let Some(i) = self.recording() {
            i.span.set_attribute(KeyValue::new(key, value.to_string()));
        }
    }

    /// Sets `http.route` to the route's path template (`/users/:id`) and
    /// renames the span `GET /users/:id`.
    pub fn set_route(&mut self, template: &str) {
        if let Some(i) = self.recording() {
            let name = format!("{} {template}", i.method.span_name());
            i.span.update_name(name);
            i.span
                .set_attribute(KeyValue::new(attr::HTTP_ROUTE, template.to_string()));
        }
    }

    /// `weir.route.id`
    pub fn set_route_id(&mut self, id: &str) {
        self.set_str(attr::WEIR_ROUTE_ID, id);
    }

    /// `weir.service.id`
    pub fn set_service_id(&mut self, id: &str) {
        self.set_str(attr::WEIR_SERVICE_ID, id);
    }

    /// `weir.consumer`: the authenticated consumer.
    pub fn set_consumer(&mut self, consumer: &str) {
        self.set_str(attr::WEIR_CONSUMER, consumer);
    }

    /// `weir.cache.status`: `hit`, `miss`, `bypass`, …
    pub fn set_cache_status(&mut self, status: &str) {
        self.set_str(attr::WEIR_CACHE_STATUS, status);
    }

    /// `weir.ratelimit.decision`: `allowed`, `limited`, …
    pub fn set_ratelimit_decision(&mut self, decision: &str) {
        self.set_str(attr::WEIR_RATELIMIT_DECISION, decision);
    }

    /// `error.type`: a low-cardinality reason the request failed
    /// (`upstream_timeout`, `no_healthy_upstream`, …). Marks the span as
    /// an error even if the status is below 500. Without it, a 5xx status
    /// is its own error type (`"502"`).
    pub fn set_error_type(&mut self, error_type: &str) {
        if let Some(i) = self.recording() {
            i.error_type_set = true;
            i.span
                .set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.to_string()));
        }
    }

    /// Any other attribute.
    pub fn set_attribute(&mut self, kv: KeyValue) {
        if let Some(i) = self.recording() {
            i.span.set_attribute(kv);
        }
    }

    /// Whether this span is recorded (and will be exported).
    pub fn is_recording(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.recording)
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
            .map(|i| i.span.span_context())
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
        let parent = Context::new().with_remote_span_context(i.span.span_context().clone());
        let tracer = &i.shared.tracer;
        let mut span = tracer
            .span_builder(i.method.span_name())
            .with_kind(SpanKind::Client)
            .start_with_context(tracer, &parent);
        let recording = span.is_recording();
        if recording {
            let mut attrs = Vec::with_capacity(6);
            i.method.push_attrs(&mut attrs);
            let (host, port) = split_host_port(target);
            attrs.push(KeyValue::new(attr::SERVER_ADDRESS, host.to_string()));
            if let Some(port) = port {
                attrs.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
            }
            attrs.push(KeyValue::new(
                attr::WEIR_UPSTREAM_TARGET,
                target.to_string(),
            ));
            if resend > 0 {
                attrs.push(KeyValue::new(
                    attr::HTTP_REQUEST_RESEND_COUNT,
                    i64::from(resend),
                ));
            }
            span.set_attributes(attrs);
        }
        AttemptSpan {
            inner: Some(Box::new(AttemptInner { span, recording })),
        }
    }

    /// Ends the span with the status sent to the client. 5xx, or an
    /// earlier [`RequestSpan::set_error_type`], makes it an error.
    pub fn end(mut self, status: StatusCode) {
        if let Some(i) = self.inner.as_mut() {
            if i.recording {
                let code = status.as_u16();
                i.span.set_attribute(KeyValue::new(
                    attr::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(code),
                ));
                if code >= 500 && !i.error_type_set {
                    i.span.set_attribute(KeyValue::new(
                        attr::ERROR_TYPE,
                        status.as_str().to_string(),
                    ));
                }
                if code >= 500 || i.error_type_set {
                    i.span.set_status(Status::Error {
                        description: Cow::Borrowed(""),
                    });
                }
            }
            i.span.end();
        }
    }
}

// === AttemptSpan ===

/// The CLIENT span of one upstream attempt.
#[derive(Debug)]
pub struct AttemptSpan {
    inner: Option<Box<AttemptInner>>,
}

struct AttemptInner {
    span: opentelemetry_sdk::trace::Span,
    recording: bool,
}

impl fmt::Debug for AttemptInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptSpan")
            .field("context", self.span.span_context())
            .field("recording", &self.recording)
            .finish()
    }
}

impl AttemptSpan {
    /// Writes `traceparent` (and `tracestate`, when there is one) for the
    /// upstream request, replacing the client's. The sampled flag is clear
    /// when this request is not recorded. Does nothing when tracing is off.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(i) = &self.inner {
            propagation::inject(i.span.span_context(), headers);
        }
    }

    /// `network.peer.address` and `network.peer.port`: where the
    /// connection actually went.
    pub fn set_peer_address(&mut self, peer: SocketAddr) {
        if let Some(i) = self.inner.as_mut().filter(|i| i.recording) {
            i.span.set_attributes([
                KeyValue::new(attr::NETWORK_PEER_ADDRESS, peer.ip().to_string()),
                KeyValue::new(attr::NETWORK_PEER_PORT, i64::from(peer.port())),
            ]);
        }
    }

    /// Whether this span is recorded.
    pub fn is_recording(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.recording)
    }

    /// The trace id sent upstream; `None` when tracing is off.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.inner
            .as_ref()
            .map(|i| i.span.span_context().trace_id())
    }

    /// This span's id, the upstream's parent id; `None` when tracing is off.
    pub fn span_id(&self) -> Option<SpanId> {
        self.inner.as_ref().map(|i| i.span.span_context().span_id())
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
        let Some(i) = self.inner.as_mut() else {
            return;
        };
        if i.recording {
            if let Some(status) = status {
                let code = status.as_u16();
                i.span.set_attribute(KeyValue::new(
                    attr::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(code),
                ));
                if code >= 400 {
                    i.span.set_attribute(KeyValue::new(
                        attr::ERROR_TYPE,
                        status.as_str().to_string(),
                    ));
                    i.span.set_status(Status::Error {
                        description: Cow::Borrowed(""),
                    });
                }
            }
            if let Some(error) = error {
                i.span
                    .set_attribute(KeyValue::new(attr::ERROR_TYPE, error.to_string()));
                i.span.set_status(Status::Error {
                    description: Cow::Owned(error.to_string()),
                });
            }
        }
        i.span.end();
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
