//! Shared bits of the integration tests: the binary under test and a
//! one-line gateway start.
#![allow(dead_code)]

use std::path::Path;

use weir_testsupport::Gateway;

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
