//! The JSON access log: one line per request, written off the request path.
//!
//! The proxy builds an [`AccessRecord`] and hands it to [`AccessLog::log`],
//! which only tries to queue it: when the bounded queue
//! (`access_log.buffer`) is full the line is dropped and counted
//! (`weir_access_log_dropped_total{reason="queue_full"}`), so a slow disk or
//! a stalled stdout reader never slows a request. A dedicated thread
//! renders the lines and writes them through a buffer that is flushed at
//! least every second, on [`AccessLog::flush`] and on
//! [`AccessLog::shutdown`].
//!
//! No secrets: the record has no field for headers, cookies, credentials,
//! query strings or bodies, and the path is written without its query even
//! if one was put there by mistake.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use http::{HeaderMap, Method, Request, Uri, header};

use crate::config::{AccessLogConfig, AccessLogField, AccessLogTarget};
use crate::metrics::{CacheStatus, Metrics, RateLimitDecision};

/// Every field, in the order lines use when `access_log.fields` is empty.
pub const ALL_FIELDS: [AccessLogField; 17] = [
    AccessLogField::Time,
    AccessLogField::RequestId,
    AccessLogField::TraceId,
    AccessLogField::ClientIp,
    AccessLogField::Consumer,
    AccessLogField::Method,
    AccessLogField::Host,
    AccessLogField::Path,
    AccessLogField::Route,
    AccessLogField::Status,
    AccessLogField::BytesIn,
    AccessLogField::BytesOut,
    AccessLogField::DurationMs,
    AccessLogField::UpstreamMs,
    AccessLogField::Upstream,
    AccessLogField::CacheStatus,
    AccessLogField::RatelimitDecision,
];

/// The longest path written; longer ones are cut (at a character
/// boundary) so one request cannot write a 64 KiB line.
pub const MAX_PATH_LEN: usize = 2048;

/// Longest request id, host and consumer written.
const MAX_SHORT_LEN: usize = 256;

/// How often buffered lines are flushed at the latest.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The write buffer of the writer thread.
const WRITE_BUFFER: usize = 64 * 1024;

/// The JSON key of a field (the same word as in the config).
pub fn field_name(field: AccessLogField) -> &'static str {
    match field {
        AccessLogField::Time => "time",
        AccessLogField::RequestId => "request_id",
        AccessLogField::TraceId => "trace_id",
        AccessLogField::ClientIp => "client_ip",
        AccessLogField::Consumer => "consumer",
        AccessLogField::Method => "method",
        AccessLogField::Host => "host",
        AccessLogField::Path => "path",
        AccessLogField::Route => "route",
        AccessLogField::Status => "status",
        AccessLogField::BytesIn => "bytes_in",
        AccessLogField::BytesOut => "bytes_out",
        AccessLogField::DurationMs => "duration_ms",
        AccessLogField::UpstreamMs => "upstream_ms",
        AccessLogField::Upstream => "upstream",
        AccessLogField::CacheStatus => "cache_status",
        AccessLogField::RatelimitDecision => "ratelimit_decision",
    }
}

// === AccessRecord ===

/// What one access-log line can say about a request. There is deliberately
/// no field for headers, credentials, cookies, the query or a body.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// When the request started.
    pub time: SystemTime,
    /// `X-Request-Id` (the client's or the one the gateway made).
    pub request_id: Option<String>,
    /// W3C trace id (32 hex digits).
    pub trace_id: Option<String>,
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// Authenticated consumer.
    pub consumer: Option<Arc<str>>,
    /// Request method.
    pub method: Method,
    /// Host the client asked for (no port, no user info).
    pub host: Option<String>,
    /// Request path. Anything from `?` or `#` on is never written.
    pub path: String,
    /// Matched route id.
    pub route: Option<Arc<str>>,
    /// Status sent to the client.
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Total duration.
    pub duration: Duration,
    /// Time spent waiting for the upstream.
    pub upstream_duration: Option<Duration>,
    /// The target that answered (`host:port` as configured).
    pub upstream: Option<String>,
    /// What the cache did.
    pub cache_status: Option<CacheStatus>,
    /// What the rate limiter decided.
    pub ratelimit_decision: Option<RateLimitDecision>,
}

impl AccessRecord {
    /// Starts a record from a request, reading only the method, the URI's
    /// host and path, and the `Host`, `X-Request-Id` and `traceparent`
    /// headers. Status, sizes and timings are filled in as the request
    /// goes on.
    pub fn from_request<B>(req: &Request<B>, client_ip: IpAddr) -> AccessRecord {
        AccessRecord::from_parts(req.method(), req.uri(), req.headers(), client_ip)
    }

    /// [`AccessRecord::from_request`] for a request already split up.
    pub fn from_parts(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        client_ip: IpAddr,
    ) -> AccessRecord {
        let host = match uri.host() {
            Some(h) => Some(h),
            None => headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(host_only),
        };
        AccessRecord {
            time: SystemTime::now(),
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(|s| truncate(s, MAX_SHORT_LEN).to_string()),
            trace_id: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(trace_id_of),
            client_ip: Some(client_ip),
            consumer: None,
            method: method.clone(),
            host: host.map(|h| truncate(h, MAX_SHORT_LEN).to_ascii_lowercase()),
            path: truncate(uri.path(), MAX_PATH_LEN).to_string(),
            route: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream_duration: None,
            upstream: None,
            cache_status: None,
            ratelimit_decision: None,
        }
    }
}

/// `user:pass@host:port` → `host`; `[::1]:80` → `[::1]`.
fn host_only(authority: &str) -> &str {
    let a = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if a.starts_with('[') {
        a.find(']').map_or(a, |i| &a[..=i])
    } else {
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }
}

/// The trace id of a valid version-00 `traceparent`.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let _version = parts.next().filter(|v| v.len() == 2)?;
    let id = parts.next()?;
    let valid = id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0');
    valid.then(|| id.to_string())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The path as written: no query or fragment, bounded length.
fn loggable_path(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    truncate(&path[..end], MAX_PATH_LEN)
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_ms(out: &mut Vec<u8>, d: Duration) {
    let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
}

/// Appends one JSON line (with its newline) holding exactly `fields`.
pub fn render(record: &AccessRecord, fields: &[AccessLogField], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(field_name(*field).as_bytes());
        out.extend_from_slice(b"\":");
        let r = record;
        match field {
            AccessLogField::Time => {
                let t = humantime::format_rfc3339_millis(r.time).to_string();
                json_str(out, &t);
            }
            AccessLogField::RequestId => json_opt_str(out, r.request_id.as_deref()),
            AccessLogField::TraceId => json_opt_str(out, r.trace_id.as_deref()),
            AccessLogField::ClientIp => match r.client_ip {
                Some(ip) => {
                    let _ = write!(out, "\"{ip}\"");
                }
                None => out.extend_from_slice(b"null"),
            },
            AccessLogField::Consumer => json_opt_str(out, r.consumer.as_deref()),
            AccessLogField::Method => json_str(out, r.method.as_str()),
            AccessLogField::Host => json_opt_str(out, r.host.as_deref()),
            AccessLogField::Path => json_str(out, loggable_path(&r.path)),
            AccessLogField::Route => json_opt_str(out, r.route.as_deref()),
            AccessLogField::Status => {
                let _ = write!(out, "{}", r.status);
            }
            AccessLogField::BytesIn => {
                let _ = write!(out, "{}", r.bytes_in);
            }
            AccessLogField::BytesOut => {
                let _ = write!(out, "{}", r.bytes_out);
            }
            AccessLogField::DurationMs => json_ms(out, r.duration),
            AccessLogField::UpstreamMs => match r.upstream_duration {
                Some(d) => json_ms(out, d),
                None => out.extend_from_slice(b"null"),
            },
            AccessLogField::Upstream => json_opt_str(out, r.upstream.as_deref()),
            AccessLogField::CacheStatus => {
                json_opt_str(out, r.cache_status.map(CacheStatus::as_str))
            }
            AccessLogField::RatelimitDecision => {
                json_opt_str(out, r.ratelimit_decision.map(RateLimitDecision::as_str))
            }
        }
    }
    out.extend_from_slice(b"}\n");
}

/// The configured fields, or all of them; repeats are dropped so a line
/// never has a key twice.
pub fn resolve_fields(configured: &[AccessLogField]) -> Vec<AccessLogField> {
    let source: &[AccessLogField] = if configured.is_empty() {
        &ALL_FIELDS
    } else {
        configured
    };
    let mut fields = Vec::with_capacity(source.len());
    for f in source {
        if !fields.contains(f) {
            fields.push(*f);
        }
    }
    fields
}

// === AccessLog ===

#[expect(
    clippy::large_enum_variant,
    reason = "records are nearly every message; boxing them would allocate once more per request"
)]
enum Msg {
    Record(AccessRecord),
    Flush(Sender<()>),
    Stop(Sender<()>),
}

/// The running access log. Share it (`Arc<AccessLog>`); [`AccessLog::log`]
/// never blocks.
pub struct AccessLog {
    tx: Sender<Msg>,
    dropped: AtomicU64,
    metrics: Option<Arc<Metrics>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("queued", &self.tx.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AccessLog {
    /// Starts the access log when `access_log.enabled`, else `None`.
    pub fn from_config(
        config: &AccessLogConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> io::Result<Option<AccessLog>> {
        if !config.enabled {
            return Ok(None);
        }
        AccessLog::open(config, metrics).map(Some)
    }

    /// Starts the access log on its configured target, whether or not it is
    /// enabled.
    pub fn open(config: &AccessLogConfig, metrics: Option<Arc<Metrics>>) -> io::Result<AccessLog> {
        let writer: Box<dyn Write + Send> = match &config.target {
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(open_append(path)?),
        };
        AccessLog::with_writer(config, writer, metrics)
    }

    /// Starts the access log on any writer (tests use pipes and blocking
    /// writers).
    pub fn with_writer(
        config: &AccessLogConfig,
        writer: impl Write + Send + 'static,
        metrics: Option<Arc<Metrics>>,
    ) -> io::Result<AccessLog> {
        let (tx, rx) = crossbeam_channel::bounded(config.buffer.max(1));
        let fields = resolve_fields(&config.fields);
        let out = BufWriter::with_capacity(WRITE_BUFFER, writer);
        let m = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_loop(rx, out, fields, m))?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            metrics,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Queues a line; drops and counts it when the queue is full.
    #[inline]
    pub fn log(&self, record: AccessRecord) {
        if let Err(e) = self.tx.try_send(Msg::Record(record)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let (TrySendError::Full(_), Some(m)) = (&e, &self.metrics) {
                m.inc_access_log_dropped();
            }
        }
    }

    /// Lines dropped so far because the queue was full (or the log was shut
    /// down).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line logged before this call is written and
    /// flushed. Returns `false` if `timeout` passed first. Blocks: call it
    /// from a blocking context.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self.tx.send_deadline(Msg::Flush(ack_tx), deadline).is_err() {
            return false;
        }
        ack_rx.recv_deadline(deadline).is_ok()
    }

    /// Writes every line logged so far, flushes, and stops the writer
    /// thread. Returns `false` if `timeout` passed first (the thread is then
    /// left to finish on its own). Lines logged afterwards are dropped.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self.tx.send_deadline(Msg::Stop(ack_tx), deadline).is_err() {
            return false;
        }
        if ack_rx.recv_deadline(deadline).is_err() {
            return false;
        }
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        true
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open access log {}: {e}", path.display()),
            )
        })
}

fn write_loop(
    rx: Receiver<Msg>,
    mut out: BufWriter<impl Write>,
    fields: Vec<AccessLogField>,
    metrics: Option<Arc<Metrics>>,
) {
    let mut line = Vec::with_capacity(512);
    let mut next_flush = Instant::now() + FLUSH_INTERVAL;
    let mut last_warning: Option<Instant> = None;
    let mut warn = |what: &str, e: &io::Error| {
        // One warning per interval: a full disk must not flood stderr.
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            last_warning = Some(Instant::now());
            tracing::warn!(error = %e, "access log: {what} failed");
        }
    };
    loop {
        match rx.recv_deadline(next_flush) {
            Ok(Msg::Record(record)) => {
                line.clear();
                render(&record, &fields, &mut line);
                match out.write_all(&line) {
                    Ok(()) => {
                        if let Some(m) = &metrics {
                            m.inc_access_log_lines(1);
                        }
                    }
                    Err(e) => {
                        warn("write", &e);
                        if let Some(m) = &metrics {
                            m.inc_access_log_write_errors(1);
                        }
                    }
                }
            }
            Ok(Msg::Flush(ack)) => {
                if let Err(e) = out.flush() {
                    warn("flush", &e);
                }
                let _ = ack.send(());
            }
            Ok(Msg::Stop(ack)) => {
                if let Err(e) = out.flush() {
                    warn("flush", &e);
                }
                let _ = ack.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
        // Under steady load the queue never empties; flush on the clock.
        let now = Instant::now();
        if now >= next_flush {
            if !out.buffer().is_empty()
                && let Err(e) = out.flush()
            {
                warn("flush", &e);
            }
            next_flush = now + FLUSH_INTERVAL;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_loses_port_and_user_info() {
        assert_eq!(host_only("example.com:8080"), "example.com");
        assert_eq!(host_only("user:secret@example.com:8080"), "example.com");
        assert_eq!(host_only("[::1]:80"), "[::1]");
        assert_eq!(host_only("example.com"), "example.com");
    }

    #[test]
    fn only_valid_trace_ids_are_kept() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("00-SECRET-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn paths_lose_query_and_fragment_and_are_bounded() {
        assert_eq!(loggable_path("/a/b?token=x"), "/a/b");
        assert_eq!(loggable_path("/a#frag"), "/a");
        let long = "/é".repeat(MAX_PATH_LEN);
        let p = loggable_path(&long);
        assert!(p.len() <= MAX_PATH_LEN);
    }

    #[test]
    fn repeated_fields_are_written_once() {
        let f = resolve_fields(&[AccessLogField::Status, AccessLogField::Status]);
        assert_eq!(f, [AccessLogField::Status]);
        assert_eq!(resolve_fields(&[]), ALL_FIELDS);
    }
}
