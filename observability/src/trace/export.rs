//! Getting finished spans to the collector without touching the request
//! path (see `docs/adr/0006-otlp-export.md`).
//!
//! ```text
//! request task ──on_end──▶ QueueGate ──try_send──▶ SDK BatchSpanProcessor
//!   (never blocks)          counts drops            (its own thread)
//!                                                        │ export(batch), blocking
//!                                                        ▼
//!                           RuntimeExporter ──spawn──▶ export runtime
//!                           (timeout, counters,         (one thread, current-thread
//!                            rate-limited errors)        tokio: tonic or hyper)
//! ```
//!
//! The SDK's batch processor runs on a plain thread and drives the exporter
//! with a minimal executor, but tonic and hyper need a tokio reactor and
//! timer. The exporter is therefore built inside, and every export runs on,
//! a dedicated single-threaded tokio runtime on its own thread. The
//! gateway's workers never poll an export, and an export never waits longer
//! than the export timeout.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::oneshot;

/// At most one export-failure log line per this interval.
pub(crate) const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A collector's answer is a small protobuf; anything bigger is not read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

// === Stats ===

/// Counters shared by the request path, the gate and the exporter.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Spans accepted into the queue and not yet handed to the exporter.
    pub queued: AtomicUsize,
    pub dropped: AtomicU64,
    pub exported: AtomicU64,
    pub failed: AtomicU64,
    /// Set by shutdown: exports still running then must finish by it.
    pub deadline: OnceLock<Instant>,
    errors: ErrorLog,
}

/// Decides when export failures are logged, for traces and metrics alike:
/// at most once per [`ERROR_LOG_INTERVAL`], with the number of failures it
/// did not log, and once when exports recover. The caller writes the line.
#[derive(Debug)]
pub(crate) struct ErrorLog {
    lines: crate::throttle::Throttle,
    failing: AtomicBool,
}

impl Default for ErrorLog {
    fn default() -> Self {
        ErrorLog {
            lines: crate::throttle::Throttle::new(ERROR_LOG_INTERVAL),
            failing: AtomicBool::new(false),
        }
    }
}

impl ErrorLog {
    /// A failed export: when this one is to be logged, the failures not
    /// logged since the last line; `None` when it is only counted.
    pub(crate) fn failed(&self) -> Option<u64> {
        self.failing.store(true, Ordering::Relaxed);
        self.lines.check()
    }

    /// A successful export: when it ends a run of failures, the failures
    /// not logged.
    pub(crate) fn recovered(&self) -> Option<u64> {
        self.failing
            .swap(false, Ordering::Relaxed)
            .then(|| self.lines.take_suppressed())
    }
}

fn log_failure(log: &ErrorLog, error: &str, spans: usize) {
    if let Some(suppressed) = log.failed() {
        tracing::warn!(
            error,
            spans,
            failures_not_logged = suppressed,
            "otlp trace export failed; spans of this batch are lost"
        );
    }
}

fn log_success(log: &ErrorLog) {
    if let Some(suppressed) = log.recovered() {
        tracing::info!(
            failures_not_logged = suppressed,
            "otlp trace export recovered"
        );
    }
}

// === ExportRuntime ===

/// A current-thread tokio runtime on its own thread, for the exporter.
pub(crate) struct ExportRuntime {
    handle: tokio::runtime::Handle,
    // Behind locks because the SDK shuts an exporter down through `&self`.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ExportRuntime {
    pub fn start() -> std::io::Result<ExportRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("weir-otlp-export")
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("weir-otlp-export".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Exports still running are abandoned, not awaited.
                runtime.shutdown_background();
            })?;
        Ok(ExportRuntime {
            handle,
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    fn stop(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // Never join from the runtime's own thread.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the `Option` inside is
/// still sound to take.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for ExportRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExportRuntime")
    }
}

// === RuntimeExporter ===

/// Runs each export of `E` on the export runtime, bounded by `timeout`, and
/// keeps the counters.
#[derive(Debug)]
pub(crate) struct RuntimeExporter<E> {
    inner: Arc<E>,
    runtime: Arc<ExportRuntime>,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl<E> RuntimeExporter<E> {
    pub fn new(
        inner: E,
        runtime: Arc<ExportRuntime>,
        timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        RuntimeExporter {
            inner: Arc::new(inner),
            runtime,
            timeout,
            stats,
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for RuntimeExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        // These spans left the queue: room for new ones.
        self.stats.queued.fetch_sub(n, Ordering::Relaxed);
        let stats = self.stats.clone();
        let inner = self.inner.clone();
        let mut timeout = self.timeout;
        let past_deadline = match stats.deadline.get() {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => {
                    timeout = timeout.min(left);
                    false
                }
                _ => true,
            },
            None => false,
        };
        let task = (!past_deadline).then(|| {
            self.runtime.handle().spawn(async move {
                match tokio::time::timeout(timeout, inner.export(batch)).await {
                    Ok(result) => result,
                    Err(_) => Err(OTelSdkError::Timeout(timeout)),
                }
            })
        });
        async move {
            let result = match task {
                None => Err(OTelSdkError::InternalFailure(
                    "shutting down: export deadline passed".into(),
                )),
                Some(task) => match task.await {
                    Ok(result) => result,
                    Err(e) => Err(OTelSdkError::InternalFailure(format!(
                        "export task ended: {e}"
                    ))),
                },
            };
            match &result {
                Ok(()) => {
                    stats.exported.fetch_add(n as u64, Ordering::Relaxed);
                    log_success(&stats.errors);
                }
                Err(e) => {
                    stats.failed.fetch_add(n as u64, Ordering::Relaxed);
                    log_failure(&stats.errors, &e.to_string(), n);
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // An abandoned export may still hold the exporter; the runtime stop
        // below drops that task.
        let result = self.inner.shutdown_with_timeout(timeout);
        self.runtime.stop();
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

// === QueueGate ===

/// Admits a finished span to the batch processor only while fewer than
/// `capacity` spans wait for export, and counts the rest as dropped. The
/// SDK processor drops on a full queue too but does not say how many; the
/// gate's count is exact because its capacity equals the processor's.
#[derive(Debug)]
pub(crate) struct QueueGate {
    inner: BatchSpanProcessor,
    capacity: usize,
    stats: Arc<Stats>,
}

impl QueueGate {
    pub fn new(inner: BatchSpanProcessor, capacity: usize, stats: Arc<Stats>) -> Self {
        QueueGate {
            inner,
            capacity,
            stats,
        }
    }
}

impl SpanProcessor for QueueGate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.stats.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// === ExportHttpClient ===

/// The OTLP/HTTP exporter's client: hyper, plain HTTP, on the export
/// runtime. The exporter checks the status; this only moves bytes.
#[derive(Debug, Clone)]
pub(crate) struct ExportHttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ExportHttpClient {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        ExportHttpClient { client }
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let response = self.client.request(request.map(Full::new)).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

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
    fn export_errors_are_logged_once_per_interval_not_per_batch() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let log = ErrorLog::default();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                log_failure(&log, "connection refused", 512);
            }
            log_success(&log);
            log_success(&log);
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("otlp trace export failed").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("otlp trace export recovered").count(),
            1,
            "{text}"
        );
        assert!(text.contains("failures_not_logged=99"), "{text}");
    }
}
