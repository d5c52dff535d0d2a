//! OTLP metrics export: the series `/metrics` serves, pushed to a
//! collector on a timer (`docs/adr/0026-otlp-metrics-bridge.md`).
//!
//! There is one source of truth, the `prometheus-client` registry the
//! request path already records into. At each interval the export task
//! reads it as data (the same reading a scrape encodes), maps it onto OTLP
//! (`convert.rs`) and sends one request over gRPC or HTTP/protobuf. Nothing
//! is added to the request path.
//!
//! ```text
//! request path ──record──▶ Metrics (prometheus-client)
//!                             ▲ read every interval
//!              export task ───┘ refresh hook, collect, convert, send
//!              (the trace export runtime's thread, or one of its own)
//! ```
//!
//! The task runs on the trace exporter's runtime thread when tracing is on,
//! else on one of its own. One export at a time, each bounded by the export
//! timeout; a late tick is skipped, never queued, so a dead or slow
//! collector costs one pending request and nothing else. Failures are
//! counted (`weir_otlp_metrics_exports_total{result="failed"}`) and logged
//! at most once per ten seconds.

mod convert;
mod settings;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use opentelemetry_http::HttpClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::transform::common::tonic::Attributes;
use prost::Message;
use tokio::sync::oneshot;

pub use settings::{
    MetricsExportSettings, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_HEADERS,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
    OTEL_METRIC_EXPORT_INTERVAL, OTEL_METRIC_EXPORT_TIMEOUT, OTEL_METRICS_EXPORTER,
};

use crate::config::{NodeInfo, OtlpMetricsConfig, OtlpProtocol, TracingConfig};
use crate::metrics::{CounterVec, Metrics};
use crate::otlp::{EnvVars, Signal};
use crate::process::ProcessStats;
use crate::trace::Tracing;
use crate::trace::export::{ErrorLog, ExportHttpClient, ExportRuntime};

/// Extra time `shutdown` waits, past the export timeout, for the task to
/// report back.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// A collector's answer is a small protobuf; anything bigger is not read
/// (the HTTP client caps it; gRPC gets the same cap).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

// === MetricsExportError ===

/// Why metrics export could not start: the error type tracing shares
/// ([`crate::otlp::ExportError`]). Each names the variable or config key at
/// fault.
pub type MetricsExportError = crate::otlp::ExportError;

// === MetricsExport ===

/// Runs before each collection, e.g. to bring read-not-counted series
/// (target health, cluster state) up to date as a scrape would. Bounded by
/// the export timeout.
pub type RefreshHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The metrics export handle: cheap to clone; [`MetricsExport::disabled`]
/// when export is off.
#[derive(Clone, Default)]
pub struct MetricsExport {
    inner: Option<Arc<Running>>,
}

struct Running {
    settings: MetricsExportSettings,
    refresh: Arc<ArcSwapOption<RefreshHook>>,
    stats: Arc<ExportStats>,
    /// Asks the task for a last export and to end.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Signalled by the task when it has ended.
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Keeps the runtime alive while the task runs on it.
    _runtime: Arc<ExportRuntime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Running {
    fn shutdown(&self) {
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(stop) = stop else { return };
        let _ = stop.send(());
        let done = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(done) = done {
            let _ = done.recv_timeout(self.settings.timeout + SHUTDOWN_GRACE);
        }
    }
}

impl fmt::Debug for MetricsExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("MetricsExport(disabled)"),
            Some(r) => f
                .debug_struct("MetricsExport")
                .field("endpoint", &r.settings.endpoint)
                .field("protocol", &r.settings.protocol)
                .field("interval", &r.settings.interval)
                .finish(),
        }
    }
}

/// Export outcomes, shared with the task.
#[derive(Debug)]
struct ExportStats {
    exported: AtomicU64,
    failed: AtomicU64,
    /// `weir_otlp_metrics_exports_total{result}`.
    counter: CounterVec<1>,
    errors: ErrorLog,
}

impl MetricsExport {
    /// Reads the config, then the `OTEL_*` environment variables, which win
    /// as the OpenTelemetry specification says. Returns a disabled handle
    /// when export is off. Shares `tracing`'s export thread when tracing is
    /// on. Call inside or outside a tokio runtime.
    pub fn init(
        tracing_cfg: &TracingConfig,
        cfg: &OtlpMetricsConfig,
        node: &NodeInfo,
        metrics: Arc<Metrics>,
        tracing: &Tracing,
    ) -> Result<MetricsExport, MetricsExportError> {
        MetricsExport::init_with_env(
            tracing_cfg,
            cfg,
            node,
            metrics,
            tracing,
            &EnvVars::from_process(),
        )
    }

    /// [`MetricsExport::init`] with the environment given as a map.
    pub fn init_with_env(
        tracing_cfg: &TracingConfig,
        cfg: &OtlpMetricsConfig,
        node: &NodeInfo,
        metrics: Arc<Metrics>,
        tracing: &Tracing,
        env: &EnvVars,
    ) -> Result<MetricsExport, MetricsExportError> {
        match MetricsExportSettings::resolve(tracing_cfg, cfg, node, env)? {
            None => Ok(MetricsExport::disabled()),
            Some(settings) => MetricsExport::start(settings, metrics, tracing),
        }
    }

    /// Starts exporting with settings already resolved.
    pub fn start(
        settings: MetricsExportSettings,
        metrics: Arc<Metrics>,
        tracing: &Tracing,
    ) -> Result<MetricsExport, MetricsExportError> {
        let runtime =
            match tracing.export_runtime() {
                Some(r) => r,
                None => Arc::new(ExportRuntime::start().map_err(|source| {
                    MetricsExportError::Thread {
                        signal: Signal::Metrics,
                        source,
                    }
                })?),
            };
        let client = {
            // tonic's channel and hyper's pool spawn their background tasks
            // on the runtime current while they are built.
            let _enter = runtime.handle().enter();
            Client::new(&settings)?
        };
        let stats = Arc::new(ExportStats {
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            counter: metrics.counter_vec(
                "weir_otlp_metrics_exports",
                "OTLP metrics export requests, by result (ok, failed).",
                ["result"],
            ),
            errors: ErrorLog::default(),
        });
        let resource = resource_attributes(&settings.resource);
        let start_unix_nano = ProcessStats::read()
            .map(|p| (p.start_time_seconds * 1e9) as u64)
            .filter(|n| *n > 0)
            .unwrap_or_else(unix_nanos);
        let refresh = Arc::new(ArcSwapOption::<RefreshHook>::empty());
        let (stop, stopped) = oneshot::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let task = Task {
            metrics,
            client,
            resource,
            start_unix_nano,
            interval: settings.interval,
            timeout: settings.timeout,
            refresh: refresh.clone(),
            stats: stats.clone(),
        };
        runtime.handle().spawn(async move {
            task.run(stopped).await;
            let _ = done_tx.send(());
        });
        tracing::info!(
            endpoint = %settings.endpoint,
            protocol = ?settings.protocol,
            interval = ?settings.interval,
            "exporting metrics over otlp"
        );
        Ok(MetricsExport {
            inner: Some(Arc::new(Running {
                settings,
                refresh,
                stats,
                stop: Mutex::new(Some(stop)),
                done: Mutex::new(Some(done)),
                _runtime: runtime,
            })),
        })
    }

    /// A handle that exports nothing.
    pub fn disabled() -> MetricsExport {
        MetricsExport { inner: None }
    }

    /// Whether metrics are being exported.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The settings in force, when enabled.
    pub fn settings(&self) -> Option<&MetricsExportSettings> {
        self.inner.as_deref().map(|r| &r.settings)
    }

    /// Sets what runs before each collection (replacing any earlier hook).
    pub fn set_refresh(&self, hook: RefreshHook) {
        if let Some(r) = &self.inner {
            r.refresh.store(Some(Arc::new(hook)));
        }
    }

    /// Export requests the collector accepted.
    pub fn exported(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |r| r.stats.exported.load(Ordering::Relaxed))
    }

    /// Export requests that failed or timed out.
    pub fn failed(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |r| r.stats.failed.load(Ordering::Relaxed))
    }

    /// Sends the series one last time and stops. Blocks the calling thread
    /// for at most the export timeout (plus a moment): call it from
    /// `spawn_blocking` or a plain thread in async code, and before
    /// [`Tracing::shutdown`], which stops a shared export thread. Calling
    /// it twice is harmless.
    pub fn shutdown(&self) {
        if let Some(r) = &self.inner {
            r.shutdown();
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The resource as the trace exporter sends it: the SDK's telemetry
/// attributes, then weir's.
fn resource_attributes(attrs: &BTreeMap<String, String>) -> Vec<KeyValue> {
    let resource = crate::trace::sdk_resource(attrs);
    Attributes::from(
        resource
            .iter()
            .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
    )
    .0
}

// === the export task ===

struct Task {
    metrics: Arc<Metrics>,
    client: Client,
    resource: Vec<KeyValue>,
    start_unix_nano: u64,
    interval: Duration,
    timeout: Duration,
    refresh: Arc<ArcSwapOption<RefreshHook>>,
    stats: Arc<ExportStats>,
}

impl Task {
    async fn run(self, mut stopped: oneshot::Receiver<()>) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        // A collector slower than the interval gets fewer exports, not a
        // queue of them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = &mut stopped => true,
            };
            self.export_once().await;
            if last {
                return;
            }
        }
    }

    async fn export_once(&self) {
        let result = match tokio::time::timeout(self.timeout, self.collect_and_send()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        };
        match result {
            // Nothing recorded yet: nothing was sent.
            Ok(false) => {}
            Ok(true) => {
                self.stats.exported.fetch_add(1, Ordering::Relaxed);
                self.stats.counter.inc(["ok"]);
                log_success(&self.stats.errors);
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.counter.inc(["failed"]);
                log_failure(&self.stats.errors, &e);
            }
        }
    }

    /// Whether a request was sent (and accepted).
    async fn collect_and_send(&self) -> Result<bool, String> {
        if let Some(hook) = self.refresh.load_full() {
            hook().await;
        }
        let set = self
            .metrics
            .collect()
            .map_err(|_| "the registry could not be read".to_string())?;
        let times = convert::Times {
            start_unix_nano: self.start_unix_nano,
            now_unix_nano: unix_nanos(),
        };
        let converted = convert::to_request(set, &self.resource, times);
        if converted.points == 0 {
            return Ok(false);
        }
        self.client.send(converted.request).await.map(|()| true)
    }
}

// === Client ===

enum Client {
    Grpc {
        client: Box<MetricsServiceClient<tonic::transport::Channel>>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: Box<ExportHttpClient>,
        url: http::Uri,
        headers: http::HeaderMap,
    },
}

impl Client {
    fn new(settings: &MetricsExportSettings) -> Result<Client, MetricsExportError> {
        let fail = |reason: String| MetricsExportError::Exporter {
            signal: Signal::Metrics,
            endpoint: settings.endpoint.clone(),
            reason,
        };
        let mut headers = http::HeaderMap::new();
        for (k, v) in &settings.headers {
            let name =
                http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| fail(e.to_string()))?;
            let value = http::HeaderValue::from_str(v).map_err(|e| fail(e.to_string()))?;
            headers.append(name, value);
        }
        let timeout = settings.timeout;
        Ok(match settings.protocol {
            OtlpProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
                    .map_err(|e| fail(e.to_string()))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Client::Grpc {
                    client: Box::new(
                        MetricsServiceClient::new(channel)
                            .max_decoding_message_size(MAX_RESPONSE_BYTES),
                    ),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let url = settings
                    .endpoint
                    .parse::<http::Uri>()
                    .map_err(|e| fail(e.to_string()))?;
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                Client::Http {
                    client: Box::new(ExportHttpClient::new(timeout)),
                    url,
                    headers,
                }
            }
        })
    }

    async fn send(&self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        let rejected = match self {
            Client::Grpc { client, metadata } => {
                let request = tonic::Request::from_parts(
                    metadata.clone(),
                    tonic::Extensions::default(),
                    request,
                );
                let response = (**client)
                    .clone()
                    .export(request)
                    .await
                    .map_err(|s| format!("grpc status {:?}: {}", s.code(), s.message()))?;
                response.into_inner().partial_success
            }
            Client::Http {
                client,
                url,
                headers,
            } => {
                let mut req = http::Request::new(Bytes::from(request.encode_to_vec()));
                *req.method_mut() = http::Method::POST;
                *req.uri_mut() = url.clone();
                *req.headers_mut() = headers.clone();
                let response = client.send_bytes(req).await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("http status {}", response.status()));
                }
                opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse::decode(
                    response.into_body(),
                )
                .ok()
                .and_then(|r| r.partial_success)
            }
        };
        match rejected {
            Some(p) if p.rejected_data_points > 0 => Err(format!(
                "the collector rejected {} data points: {}",
                p.rejected_data_points, p.error_message
            )),
            _ => Ok(()),
        }
    }
}

// === Failure log lines ===

fn log_failure(log: &ErrorLog, error: &str) {
    if let Some(suppressed) = log.failed() {
        tracing::warn!(
            error,
            failures_not_logged = suppressed,
            "otlp metrics export failed; the next export sends the series again"
        );
    }
}

fn log_success(log: &ErrorLog) {
    if let Some(suppressed) = log.recovered() {
        tracing::info!(
            failures_not_logged = suppressed,
            "otlp metrics export recovered"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Collects formatted log lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn export_errors_are_logged_once_per_interval_not_per_export() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let log = ErrorLog::default();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                log_failure(&log, "connection refused");
            }
            log_success(&log);
            log_success(&log);
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("otlp metrics export failed").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("otlp metrics export recovered").count(),
            1,
            "{text}"
        );
        assert!(text.contains("failures_not_logged=49"), "{text}");
    }
}
