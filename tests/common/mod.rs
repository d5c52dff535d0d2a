//! Shared bits of the integration tests: the binary under test, one-line
//! gateway starts, `weir validate` on a bad config, and key digests.
#![allow(dead_code)]

pub mod windows;

use std::path::Path;

use sha2::Digest as _;
use weir_testsupport::{Gateway, assert_rejected};

/// The `weir` binary cargo built for these tests.
pub fn weir_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir"))
}

/// Starts a gateway with `yaml` (listeners forced onto loopback port 0).
pub async fn gateway(yaml: &str) -> Gateway {
    Gateway::start(weir_bin(), &Gateway::config(yaml))
        .await
        .expect("weir starts")
}

/// Starts a gateway with `yaml` like [`gateway`], logging at debug level
/// (for tests that check no secret reaches even the debug log).
pub async fn gateway_debug(yaml: &str) -> Gateway {
    Gateway::builder(weir_bin())
        .config(Gateway::config(yaml))
        .env("WEIR_LOG", "debug")
        .start()
        .await
        .expect("weir starts")
}

/// Runs `weir validate` on `yaml`, asserts it is refused (exit 2) with
/// every line of `wants` on stderr, and returns the stderr.
pub fn rejected(yaml: &str, wants: &[&str]) -> String {
    assert_rejected(weir_bin(), yaml, wants)
}

/// The SHA-256 of `s` as 64 hex digits, as `key_sha256` wants a key.
pub fn sha_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A config with one upstream `u` over `targets` and one catch-all route,
/// plus `extra` lines appended under the upstream (indented by the caller).
pub fn one_upstream(targets: &[String], upstream_extra: &str) -> String {
    let mut y = String::from("upstreams:\n  - id: u\n    targets:\n");
    for t in targets {
        y.push_str(&format!("      - addr: \"{t}\"\n"));
    }
    y.push_str(upstream_extra);
    y.push_str("\nroutes:\n  - id: all\n    paths: [\"/*\"]\n    upstream: u\n");
    y
}

/// The JSON error body's `error` object, checked for shape.
pub fn error_of(body: &serde_json::Value) -> &serde_json::Value {
    let e = &body["error"];
    assert!(e["status"].is_u64(), "error body without status: {body}");
    assert!(e["code"].is_string(), "error body without code: {body}");
    assert!(
        e["message"].is_string(),
        "error body without message: {body}"
    );
    assert!(
        e["request_id"].is_string(),
        "error body without request_id: {body}"
    );
    e
}

/// The value of the sample of `name` whose labels include every pair of
/// `labels`, from Prometheus text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            (n == name).then_some((rest, value))
        })
        .find(|(rest, _)| {
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, v)| v.parse().ok())
}

/// Upstream `u` at `target`, consumer `alice` with key-auth `key`, and two
/// routes that leave a verdict for the access log, spans and metrics:
/// `cached` (`/c`, proxy-cache) and `limited` (`/l`, key-auth and a
/// limit-count of one a minute, `limit_extra` added to its config).
pub fn verdict_routes(target: &str, key: &str, limit_extra: &str) -> String {
    format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]
consumers:
  - name: alice
    credentials:
      key-auth: [{{key_sha256: {}}}]
routes:
  - id: cached
    paths: [/c]
    upstream: u
    plugins:
      proxy-cache: {{}}
  - id: limited
    paths: [/l]
    upstream: u
    plugins:
      key-auth: {{}}
      limit-count: {{count: 1, time_window: 60s{limit_extra}}}
",
        sha_hex(key)
    )
}

/// `weir validate -f` on `yaml`: exit code and stderr, with the file's
/// path replaced by `FILE`.
pub fn validate_text(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, yaml).unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(&*f.to_string_lossy(), "FILE");
    (out.status.code(), err)
}
