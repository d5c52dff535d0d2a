//! The command line: `validate` and `serve` defaults.

mod common;

use std::process::Command;

use common::weir_bin;

#[test]
fn validate_reports_every_problem_with_location_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "upstreams:\n  - id: u\n    targets: [{addr: \"nohost\"}]\nroutes:\n  - id: r\n    paths: [/a]\n    upstream: missing\n",
    )
    .unwrap();
    let out = Command::new(weir_bin())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstreams[0].targets[0].addr"), "{err}");
    assert!(
        err.contains("routes[0].upstream: no upstream with id `missing`"),
        "{err}"
    );

    std::fs::write(
        &f,
        "routes:\n  - id: r\n    paths: [/a]\n    upstream: u\n    bogus: 1\n",
    )
    .unwrap();
    let out = Command::new(weir_bin())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5:5: routes[0].bogus: unknown field `bogus`"),
        "{err}"
    );
}

#[test]
fn validate_accepts_the_quickstart() {
    let qs = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.yaml");
    let out = Command::new(weir_bin())
        .args(["validate", "-f", qs])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_refuses_a_bad_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "version: 7\n").unwrap();
    let out = Command::new(weir_bin())
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported config version 7"));
}
