//! The access log end to end: real writer thread, real files, lines read
//! back and parsed.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_observability::access_log::{ALL_FIELDS, AccessLog, AccessRecord, field_name};
use weir_observability::config::{AccessLogConfig, AccessLogField, AccessLogTarget, MetricsConfig};
use weir_observability::metrics::{CacheStatus, Metrics, RateLimitDecision};

const WAIT: Duration = Duration::from_secs(10);

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn lines(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.text()
            .lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(serde_json::Value::Object(m)) => m,
                other => panic!("not a JSON object: {l} ({other:?})"),
            })
            .collect()
    }
}

/// The keys of a JSON object line, in the order they were written.
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

fn keys_in_order(line: &str) -> Vec<String> {
    serde_json::from_str::<Keys>(line).expect("a JSON object").0
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn config(fields: &[AccessLogField], buffer: usize) -> AccessLogConfig {
    AccessLogConfig {
        enabled: true,
        target: AccessLogTarget::Stdout,
        fields: fields.to_vec(),
        buffer,
    }
}

/// A request as the proxy sees it, carrying secrets in every place a
/// client can put one.
fn secret_request() -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("/v1/login?api_key=SECRET&user=alice")
        .header("host", "API.example.com:8443")
        .header("authorization", "Bearer SECRET")
        .header("proxy-authorization", "Basic SECRET")
        .header("cookie", "session=SECRET; theme=dark")
        .header("x-api-key", "SECRET")
        .header("x-request-id", "req-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(())
        .unwrap()
}

/// Fills in a record the way the proxy's log phase does.
fn finished(req: &http::Request<()>) -> AccessRecord {
    let mut r = AccessRecord::from_request(req, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
    r.route = Some("login".into());
    r.status = 200;
    r.bytes_in = 42;
    r.bytes_out = 1234;
    r.duration = Duration::from_micros(12_345);
    r.upstream_duration = Some(Duration::from_micros(10_001));
    r.upstream = Some("10.0.0.7:8080".into());
    r.consumer = Some("alice".into());
    r.cache_status = Some(CacheStatus::Miss);
    r.ratelimit_decision = Some(RateLimitDecision::Allowed);
    r
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn lines_are_json_with_every_field_by_default() {
    let out = Shared::default();
    let log = AccessLog::with_writer(&config(&[], 64), out.clone(), None).unwrap();
    log.log(finished(&secret_request()));
    assert!(log.flush(WAIT));
    let lines = out.lines();
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    let expected: Vec<&str> = ALL_FIELDS.iter().map(|f| field_name(*f)).collect();
    assert_eq!(keys_in_order(out.text().trim_end()), expected);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["host"], "api.example.com");
    assert_eq!(line["path"], "/v1/login");
    assert_eq!(line["route"], "login");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 42);
    assert_eq!(line["bytes_out"], 1234);
    assert_eq!(line["duration_ms"], 12.345);
    assert_eq!(line["upstream_ms"], 10.001);
    assert_eq!(line["client_ip"], "203.0.113.9");
    assert_eq!(line["request_id"], "req-1");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["cache_status"], "miss");
    assert_eq!(line["ratelimit_decision"], "allowed");
    let time = line["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    log.shutdown(WAIT);
}

#[test]
fn lines_hold_exactly_the_configured_fields_in_order() {
    let fields = [
        AccessLogField::Status,
        AccessLogField::Route,
        AccessLogField::UpstreamMs,
        AccessLogField::Path,
    ];
    let out = Shared::default();
    let log = AccessLog::with_writer(&config(&fields, 64), out.clone(), None).unwrap();
    let mut unrouted =
        AccessRecord::from_request(&secret_request(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    unrouted.status = 404;
    log.log(finished(&secret_request()));
    log.log(unrouted);
    assert!(log.shutdown(WAIT));
    let lines = out.lines();
    assert_eq!(lines.len(), 2);
    for line in out.text().lines() {
        assert_eq!(
            keys_in_order(line),
            ["status", "route", "upstream_ms", "path"]
        );
    }
    // Absent values are null, never missing keys.
    assert_eq!(lines[1]["route"], serde_json::Value::Null);
    assert_eq!(lines[1]["upstream_ms"], serde_json::Value::Null);
    assert_eq!(lines[1]["status"], 404);
}

#[test]
fn no_secret_from_the_request_reaches_a_line() {
    let out = Shared::default();
    let log = AccessLog::with_writer(&config(&[], 64), out.clone(), None).unwrap();
    log.log(finished(&secret_request()));

    // Absolute-form targets with user info, and a path set carelessly
    // from the whole URI, are cleaned too.
    let absolute = http::Request::get("http://bob:SECRET@api.example.com/x?token=SECRET#SECRET")
        .header("authorization", "Bearer SECRET")
        .body(())
        .unwrap();
    log.log(finished(&absolute));
    let mut careless = finished(&secret_request());
    careless.path = "/v1/login?api_key=SECRET".into();
    log.log(careless);

    assert!(log.shutdown(WAIT));
    let text = out.text();
    assert_eq!(text.lines().count(), 3);
    assert!(!text.contains("SECRET"), "a secret leaked:\n{text}");
    let lines = out.lines();
    assert_eq!(lines[1]["host"], "api.example.com");
    assert_eq!(lines[1]["path"], "/x");
}

#[test]
fn lines_are_flushed_on_the_clock_without_an_explicit_flush() {
    let out = Shared::default();
    let log =
        AccessLog::with_writer(&config(&[AccessLogField::Status], 64), out.clone(), None).unwrap();
    log.log(finished(&secret_request()));
    // The writer buffers; the one-second flush must deliver the line.
    wait_until("the timed flush", || out.text().lines().count() == 1);
    log.shutdown(WAIT);
}

/// A writer that blocks its first write until released, like a stdout
/// nobody reads.
struct Stalled {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
    released: bool,
    out: Shared,
}

impl Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.released {
            let _ = self.entered.send(());
            // Released when the test sends or drops its sender.
            let _ = self.release.recv();
            self.released = true;
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stalled_writer_drops_and_counts_instead_of_blocking() {
    const BUFFER: usize = 8;
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let out = Shared::default();
    let writer = Stalled {
        entered: entered_tx,
        release: release_rx,
        released: false,
        out: out.clone(),
    };
    let metrics = Arc::new(Metrics::new(&MetricsConfig::default()));
    let log = AccessLog::with_writer(
        &config(&[AccessLogField::Status], BUFFER),
        writer,
        Some(metrics.clone()),
    )
    .unwrap();

    // One line, then a flush that reaches the writer, which stalls.
    log.log(finished(&secret_request()));
    assert!(
        !log.flush(Duration::from_millis(200)),
        "the writer is stalled"
    );
    entered_rx
        .recv_timeout(WAIT)
        .expect("the writer thread is inside write");

    // The queue is empty; it holds BUFFER lines and the rest are dropped,
    // without blocking the caller.
    let started = Instant::now();
    for _ in 0..BUFFER + 5 {
        log.log(finished(&secret_request()));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "log() blocked");
    assert_eq!(log.dropped(), 5);
    let text = metrics.encode();
    assert!(
        text.contains("weir_access_log_dropped_total{reason=\"queue_full\"} 5\n"),
        "{text}"
    );

    // Released, the writer drains everything that was queued.
    drop(release_tx);
    assert!(log.shutdown(WAIT));
    assert_eq!(out.text().lines().count(), 1 + BUFFER);
    assert!(
        metrics
            .encode()
            .contains(&format!("weir_access_log_lines_total {}\n", 1 + BUFFER))
    );
}

#[test]
fn shutdown_drains_everything_queued() {
    let out = Shared::default();
    let log = AccessLog::with_writer(&config(&[], 4096), out.clone(), None).unwrap();
    for _ in 0..2000 {
        log.log(finished(&secret_request()));
    }
    assert!(log.shutdown(WAIT));
    assert_eq!(out.lines().len(), 2000);
    assert_eq!(log.dropped(), 0);
    // After shutdown nothing is written, and the loss is counted.
    log.log(finished(&secret_request()));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(out.lines().len(), 2000);
}

#[test]
fn a_file_target_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
    let cfg = AccessLogConfig {
        enabled: true,
        target: AccessLogTarget::File(path.clone()),
        fields: vec![AccessLogField::Status, AccessLogField::Path],
        buffer: 16,
    };
    for _ in 0..2 {
        let log = AccessLog::from_config(&cfg, None)
            .unwrap()
            .expect("enabled");
        log.log(finished(&secret_request()));
        assert!(log.shutdown(WAIT));
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"earlier":true}"#,
            r#"{"status":200,"path":"/v1/login"}"#,
            r#"{"status":200,"path":"/v1/login"}"#,
        ]
    );
}

#[test]
fn a_disabled_log_starts_nothing_and_a_bad_path_names_itself() {
    let off = AccessLogConfig::default();
    assert!(AccessLog::from_config(&off, None).unwrap().is_none());
    let bad = AccessLogConfig {
        enabled: true,
        target: AccessLogTarget::File("/nonexistent-dir/access.log".into()),
        ..AccessLogConfig::default()
    };
    let err = AccessLog::from_config(&bad, None).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent-dir/access.log"),
        "{err}"
    );
}
