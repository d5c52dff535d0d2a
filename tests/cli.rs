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

/// Kills the child when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_config_answers_json_404() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    // Only the ports differ from a bare `weir serve`, so the test cannot
    // collide with anything on 9080/9180.
    let child = Command::new(weir_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--ready-file",
        ])
        .arg(&ready)
        // A bare `weir serve` keeps its config store in ./weir-data.
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let doc: serde_json::Value = weir_testsupport::wait_for(
        "the ready file",
        std::time::Duration::from_secs(20),
        || async {
            std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        },
    )
    .await;
    let proxy = doc["proxy"].as_str().unwrap();
    let resp = weir_testsupport::http_client()
        .get(format!("http://{proxy}/any/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");
}

#[test]
fn cross_field_problems_carry_their_line_and_column() {
    let (code, err) = common::validate_text(
        "upstreams:\n  - id: u\n    targets: [{addr: \"127.0.0.1:1\"}]\nroutes:\n  - id: a\n    paths: [/a]\n    upstream: u\n  - id: b\n    paths: [/b]\n    service: nosuch\n",
    );
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "FILE:10:14: routes[1].service: no service with id `nosuch`\nFILE: 1 problem(s)\n"
    );
}

#[test]
fn a_yaml_syntax_error_is_reported_as_one_at_its_position() {
    let (code, err) =
        common::validate_text("routes:\n  - id: a\n    paths: [/a\n    upstream: u\n");
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "FILE:4:13: YAML syntax error: did not find expected ',' or ']'\nFILE: 1 problem(s)\n"
    );
}
