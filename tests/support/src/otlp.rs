//! A real OTLP trace and metrics receiver, for tests of OTLP export.
//!
//! [`OtlpReceiver`] listens on `127.0.0.1:0` and speaks one of:
//!
//! | constructor | protocol |
//! | --- | --- |
//! | [`OtlpReceiver::grpc`] | OTLP/gRPC: `TraceService/Export` and `MetricsService/Export`, over h2c |
//! | [`OtlpReceiver::http`] | OTLP/HTTP: `POST /v1/traces` and `POST /v1/metrics` with protobuf bodies |
//! | [`OtlpReceiver::silent`] | accepts TCP connections and never reads or answers |
//!
//! Every span received is kept as a [`ReceivedSpan`] with ids in lowercase
//! hex and attributes in maps, so tests compare plain values; every metrics
//! export as a [`ReceivedMetrics`]. Faults:
//! [`OtlpReceiver::set_stalling`] makes the server take requests and never
//! answer them (a hung collector), [`OtlpReceiver::stop`] closes the port
//! and every connection (a dead collector: connections are refused).
//!
//! Runs on the caller's tokio runtime, like [`crate::Upstream`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

/// Largest OTLP/HTTP body accepted; the exporter's batches are far smaller.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
    /// Nothing: connections are accepted and left alone.
    Silent,
}

/// The kind of a received span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Not set by the sender.
    Unspecified,
    /// Internal.
    Internal,
    /// Server.
    Server,
    /// Client.
    Client,
    /// Producer.
    Producer,
    /// Consumer.
    Consumer,
}

/// The status of a received span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    /// No status set.
    Unset,
    /// Explicitly OK.
    Ok,
    /// An error.
    Error,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A list.
    Array(Vec<AttrValue>),
    /// A nested map.
    Map(BTreeMap<String, AttrValue>),
    /// An index into a profile's string table (never sent for spans).
    StrIndex(i32),
    /// Present without a value.
    Empty,
}

impl AttrValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// One span as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The W3C `tracestate` carried by the span.
    pub trace_state: String,
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Span attributes.
    pub attributes: BTreeMap<String, AttrValue>,
    /// Status code.
    pub status: SpanStatus,
    /// Status message.
    pub status_message: String,
    /// Resource attributes of the batch the span came in.
    pub resource: BTreeMap<String, AttrValue>,
    /// Instrumentation scope name.
    pub scope: String,
    /// Span flags (the W3C trace flags in the low byte).
    pub flags: u32,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    /// A string attribute.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(AttrValue::as_str)
    }

    /// An integer attribute.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(AttrValue::as_i64)
    }

    /// A string resource attribute.
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(AttrValue::as_str)
    }
}

/// What kind of metric arrived, with its points.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricData {
    /// A sum: monotonic or not, cumulative (`true`) or delta.
    Sum {
        /// Only goes up.
        monotonic: bool,
        /// Cumulative temporality.
        cumulative: bool,
        /// The points.
        points: Vec<NumberPoint>,
    },
    /// A gauge.
    Gauge(Vec<NumberPoint>),
    /// An explicit-bucket histogram.
    Histogram {
        /// Cumulative temporality.
        cumulative: bool,
        /// The points.
        points: Vec<HistogramPoint>,
    },
    /// Anything else (exponential histogram, summary, none).
    Other,
}

/// A sum or gauge point.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberPoint {
    /// Point attributes.
    pub attributes: BTreeMap<String, AttrValue>,
    /// The value, integers widened.
    pub value: f64,
    /// Start of the series, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// When it was read.
    pub time_unix_nanos: u64,
}

/// A histogram point.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    /// Point attributes.
    pub attributes: BTreeMap<String, AttrValue>,
    /// Observations.
    pub count: u64,
    /// Their sum.
    pub sum: Option<f64>,
    /// Upper bounds (`+Inf` implicit).
    pub bounds: Vec<f64>,
    /// Observations per bucket, one more than `bounds`.
    pub bucket_counts: Vec<u64>,
}

/// One metric as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetric {
    /// Metric name.
    pub name: String,
    /// Unit (UCUM).
    pub unit: String,
    /// Description.
    pub description: String,
    /// Kind and points.
    pub data: MetricData,
}

impl ReceivedMetric {
    /// The number points (sum or gauge), if this is one.
    pub fn number_points(&self) -> &[NumberPoint] {
        match &self.data {
            MetricData::Sum { points, .. } | MetricData::Gauge(points) => points,
            _ => &[],
        }
    }

    /// The histogram points, if this is a histogram.
    pub fn histogram_points(&self) -> &[HistogramPoint] {
        match &self.data {
            MetricData::Histogram { points, .. } => points,
            _ => &[],
        }
    }
}

/// One metrics export request as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetrics {
    /// Resource attributes.
    pub resource: BTreeMap<String, AttrValue>,
    /// Instrumentation scope name.
    pub scope: String,
    /// The metrics, in order.
    pub metrics: Vec<ReceivedMetric>,
}

impl ReceivedMetrics {
    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&ReceivedMetric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// A string resource attribute.
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(AttrValue::as_str)
    }
}

/// Whether the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    Stalling,
    Stopped,
}

#[derive(Debug)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Metrics export requests received and answered.
    metrics: Mutex<Vec<ReceivedMetrics>>,
    /// Headers (gRPC metadata) of every export request answered.
    headers: Mutex<Vec<HeaderMap>>,
    /// Export requests received, answered or not.
    requests: std::sync::atomic::AtomicU64,
    /// Spans received.
    span_count: std::sync::atomic::AtomicU64,
    /// Keep spans and headers (tests), or only count them (load).
    keep: bool,
    mode: watch::Sender<Mode>,
}

impl Shared {
    /// Returns once requests may be answered; `false` when stopped.
    async fn may_answer(&self) -> bool {
        let mut rx = self.mode.subscribe();
        match rx.wait_for(|m| *m != Mode::Stalling).await {
            Ok(m) => *m == Mode::Serving,
            Err(_) => false,
        }
    }

    fn record(&self, headers: HeaderMap, req: ExportTraceServiceRequest) {
        if !self.keep {
            let n: usize = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.span_count
                .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        let spans = convert(req);
        self.span_count
            .fetch_add(spans.len() as u64, std::sync::atomic::Ordering::SeqCst);
        lock(&self.spans).extend(spans);
        lock(&self.headers).push(headers);
    }

    fn record_metrics(&self, headers: HeaderMap, req: ExportMetricsServiceRequest) {
        if !self.keep {
            return;
        }
        lock(&self.metrics).extend(convert_metrics(req));
        lock(&self.headers).push(headers);
    }
}

/// An OTLP trace receiver on `127.0.0.1:0`. Stops when dropped.
pub struct OtlpReceiver {
    protocol: ReceiverKind,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("protocol", &self.protocol)
            .field("addr", &self.addr)
            .finish()
    }
}

impl OtlpReceiver {
    /// An OTLP/gRPC receiver.
    pub async fn grpc() -> OtlpReceiver {
        OtlpReceiver::start(ReceiverKind::Grpc).await
    }

    /// An OTLP/HTTP (protobuf) receiver.
    pub async fn http() -> OtlpReceiver {
        OtlpReceiver::start(ReceiverKind::HttpProtobuf).await
    }

    /// A port that accepts connections and never says a word: a collector
    /// hung below the protocol.
    pub async fn silent() -> OtlpReceiver {
        OtlpReceiver::start(ReceiverKind::Silent).await
    }

    /// A receiver speaking `protocol`.
    pub async fn start(protocol: ReceiverKind) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an otlp receiver on loopback");
        OtlpReceiver::with_listener(listener, protocol, true)
    }

    /// A receiver on `listener` that only counts spans (see
    /// [`OtlpReceiver::span_count`]) and keeps none: for load, where
    /// keeping every span would grow without bound.
    pub fn counting(listener: TcpListener, protocol: ReceiverKind) -> OtlpReceiver {
        OtlpReceiver::with_listener(listener, protocol, false)
    }

    fn with_listener(listener: TcpListener, protocol: ReceiverKind, keep: bool) -> OtlpReceiver {
        let addr = listener.local_addr().expect("listener address");
        let (mode, _) = watch::channel(Mode::Serving);
        let shared = Arc::new(Shared {
            spans: Mutex::new(Vec::new()),
            metrics: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            requests: Default::default(),
            span_count: Default::default(),
            keep,
            mode,
        });
        let accept = tokio::spawn(accept_loop(listener, protocol, shared.clone()));
        OtlpReceiver {
            protocol,
            addr,
            shared,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// What this receiver speaks.
    pub fn protocol(&self) -> ReceiverKind {
        self.protocol
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`: the gRPC endpoint, or the base URL to which
    /// HTTP exporters append `/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:port/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.shared.spans).clone()
    }

    /// Waits until at least `n` spans have arrived and returns them all.
    ///
    /// # Panics
    /// When `timeout` passes first.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let what = format!("{n} spans at the otlp receiver {}", self.addr);
        crate::wait_for(&what, timeout, || async {
            let spans = lock(&self.shared.spans);
            (spans.len() >= n).then(|| spans.clone())
        })
        .await
    }

    /// Every metrics export received so far, in arrival order.
    pub fn metrics(&self) -> Vec<ReceivedMetrics> {
        lock(&self.shared.metrics).clone()
    }

    /// Waits until a metrics export satisfies `check` and returns it.
    ///
    /// # Panics
    /// When `timeout` passes first.
    pub async fn wait_for_metrics(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ReceivedMetrics) -> bool,
    ) -> ReceivedMetrics {
        let what = format!("{what} at the otlp receiver {}", self.addr);
        crate::wait_for(&what, timeout, || async {
            lock(&self.shared.metrics)
                .iter()
                .rev()
                .find(|m| check(m))
                .cloned()
        })
        .await
    }

    /// Spans received so far (kept or only counted).
    pub fn span_count(&self) -> u64 {
        self.shared
            .span_count
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the spans, metrics and headers received so far.
    pub fn clear(&self) {
        lock(&self.shared.spans).clear();
        lock(&self.shared.metrics).clear();
        lock(&self.shared.headers).clear();
    }

    /// Export requests received, answered or not.
    pub fn export_requests(&self) -> u64 {
        self.shared
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The headers (gRPC metadata) of every export request answered.
    pub fn request_headers(&self) -> Vec<HeaderMap> {
        lock(&self.shared.headers).clone()
    }

    /// While `true`, requests are read and never answered.
    pub fn set_stalling(&self, stalling: bool) {
        self.shared.mode.send_if_modified(|m| {
            let next = if stalling {
                Mode::Stalling
            } else {
                Mode::Serving
            };
            let changed = *m != Mode::Stopped && *m != next;
            if changed {
                *m = next;
            }
            changed
        });
    }

    /// Whether the port is still open.
    pub fn is_running(&self) -> bool {
        lock(&self.accept).is_some()
    }

    /// Closes the port and every connection at once; later connections
    /// are refused. Spans received so far are kept.
    pub async fn stop(&self) {
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            // The accept task owns the listener and the connection tasks:
            // ending it closes them all, before any stalled request could
            // see the mode change below and answer.
            accept.abort();
            let _ = accept.await;
        }
        // HTTP/2 streams run in tasks of their own: release them.
        self.shared.mode.send_replace(Mode::Stopped);
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.shared.mode.send_replace(Mode::Stopped);
        if let Some(accept) = lock(&self.accept).take() {
            accept.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, protocol: ReceiverKind, shared: Arc<Shared>) {
    // Dropped with this task: aborting it ends every connection.
    let mut connections = JoinSet::new();
    let mut silent: Vec<TcpStream> = Vec::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match protocol {
            ReceiverKind::Silent => silent.push(stream),
            ReceiverKind::Grpc => {
                connections.spawn(serve_grpc(stream, shared.clone()));
            }
            ReceiverKind::HttpProtobuf => {
                connections.spawn(serve_http(stream, shared.clone()));
            }
        }
    }
}

// === gRPC ===

struct GrpcSink(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.0.may_answer().await {
            return Err(tonic::Status::unavailable("receiver stopped"));
        }
        let (metadata, _, body) = request.into_parts();
        self.0.record(metadata.into_headers(), body);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.0.may_answer().await {
            return Err(tonic::Status::unavailable("receiver stopped"));
        }
        let (metadata, _, body) = request.into_parts();
        self.0.record_metrics(metadata.into_headers(), body);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

async fn serve_grpc(stream: TcpStream, shared: Arc<Shared>) {
    let traces = TraceServiceServer::new(GrpcSink(shared.clone()));
    let metrics = MetricsServiceServer::new(GrpcSink(shared));
    let service = service_fn(move |req: Request<Incoming>| {
        let traces = traces.clone();
        let metrics = metrics.clone();
        async move {
            if req
                .uri()
                .path()
                .starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/")
            {
                metrics.oneshot(req).await
            } else {
                traces.oneshot(req).await
            }
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

// === HTTP ===

async fn serve_http(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |req| handle_http(shared.clone(), req));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle_http(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_metrics = match req.uri().path() {
        "/v1/traces" => false,
        "/v1/metrics" => true,
        _ => {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                "only /v1/traces and /v1/metrics are served",
            ));
        }
    };
    if req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let is_protobuf = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    if !is_protobuf {
        return Ok(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/x-protobuf",
        ));
    }
    shared
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "body unreadable or too large",
            ));
        }
    };
    let answer = if is_metrics {
        let decoded = match ExportMetricsServiceRequest::decode(body) {
            Ok(d) => d,
            Err(e) => {
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    &format!("bad protobuf: {e}"),
                ));
            }
        };
        if !shared.may_answer().await {
            return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "receiver stopped"));
        }
        shared.record_metrics(parts.headers, decoded);
        ExportMetricsServiceResponse {
            partial_success: None,
        }
        .encode_to_vec()
    } else {
        let decoded = match ExportTraceServiceRequest::decode(body) {
            Ok(d) => d,
            Err(e) => {
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    &format!("bad protobuf: {e}"),
                ));
            }
        };
        if !shared.may_answer().await {
            return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "receiver stopped"));
        }
        shared.record(parts.headers, decoded);
        ExportTraceServiceResponse {
            partial_success: None,
        }
        .encode_to_vec()
    };
    let mut response = Response::new(Full::new(Bytes::from(answer)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(response)
}

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(msg.to_string())));
    *response.status_mut() = status;
    response
}

// === conversion ===

fn convert(req: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for s in ss.spans {
                let (status, status_message) = match s.status {
                    None => (SpanStatus::Unset, String::new()),
                    Some(st) => (
                        match status::StatusCode::try_from(st.code) {
                            Ok(status::StatusCode::Ok) => SpanStatus::Ok,
                            Ok(status::StatusCode::Error) => SpanStatus::Error,
                            _ => SpanStatus::Unset,
                        },
                        st.message,
                    ),
                };
                out.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: (!s.parent_span_id.is_empty()
                        && s.parent_span_id.iter().any(|b| *b != 0))
                    .then(|| hex(&s.parent_span_id)),
                    trace_state: s.trace_state,
                    name: s.name,
                    kind: match span::SpanKind::try_from(s.kind) {
                        Ok(span::SpanKind::Internal) => SpanKind::Internal,
                        Ok(span::SpanKind::Server) => SpanKind::Server,
                        Ok(span::SpanKind::Client) => SpanKind::Client,
                        Ok(span::SpanKind::Producer) => SpanKind::Producer,
                        Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
                        _ => SpanKind::Unspecified,
                    },
                    attributes: attributes(s.attributes),
                    status,
                    status_message,
                    resource: resource.clone(),
                    scope: scope.clone(),
                    flags: s.flags,
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn convert_metrics(req: ExportMetricsServiceRequest) -> Vec<ReceivedMetrics> {
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource = rm
            .resource
            .map(|r| attributes(r.attributes))
            .unwrap_or_default();
        for sm in rm.scope_metrics {
            let scope = sm.scope.map(|s| s.name).unwrap_or_default();
            let metrics = sm
                .metrics
                .into_iter()
                .map(|m| ReceivedMetric {
                    name: m.name,
                    unit: m.unit,
                    description: m.description,
                    data: match m.data {
                        Some(metric::Data::Sum(s)) => MetricData::Sum {
                            monotonic: s.is_monotonic,
                            cumulative: s.aggregation_temporality == 2,
                            points: number_points(s.data_points),
                        },
                        Some(metric::Data::Gauge(g)) => {
                            MetricData::Gauge(number_points(g.data_points))
                        }
                        Some(metric::Data::Histogram(h)) => MetricData::Histogram {
                            cumulative: h.aggregation_temporality == 2,
                            points: h
                                .data_points
                                .into_iter()
                                .map(|p| HistogramPoint {
                                    attributes: attributes(p.attributes),
                                    count: p.count,
                                    sum: p.sum,
                                    bounds: p.explicit_bounds,
                                    bucket_counts: p.bucket_counts,
                                })
                                .collect(),
                        },
                        _ => MetricData::Other,
                    },
                })
                .collect();
            out.push(ReceivedMetrics {
                resource: resource.clone(),
                scope,
                metrics,
            });
        }
    }
    out
}

fn number_points(
    points: Vec<opentelemetry_proto::tonic::metrics::v1::NumberDataPoint>,
) -> Vec<NumberPoint> {
    points
        .into_iter()
        .map(|p| NumberPoint {
            attributes: attributes(p.attributes),
            value: match p.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                None => f64::NAN,
            },
            start_unix_nanos: p.start_time_unix_nano,
            time_unix_nanos: p.time_unix_nano,
        })
        .collect()
}

fn attributes(kvs: Vec<KeyValue>) -> BTreeMap<String, AttrValue> {
    kvs.into_iter()
        .map(|kv| (kv.key, value(kv.value)))
        .collect()
}

fn value(v: Option<AnyValue>) -> AttrValue {
    match v.and_then(|v| v.value) {
        None => AttrValue::Empty,
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(b),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(i),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(d),
        Some(any_value::Value::BytesValue(b)) => AttrValue::Bytes(b),
        Some(any_value::Value::ArrayValue(a)) => {
            AttrValue::Array(a.values.into_iter().map(|v| value(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => AttrValue::Map(attributes(l.values)),
        Some(any_value::Value::StringValueStrindex(i)) => AttrValue::StrIndex(i),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
