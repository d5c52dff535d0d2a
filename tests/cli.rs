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

/// `weir serve --check ARGS` with `env` and no other `WEIR_*`/`OTEL_*`
/// variable: (exit code, stdout, stderr).
fn serve_check(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(weir_bin());
    cmd.args(["serve", "--check"]).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_check_prints_the_plan_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "a-cluster-secret-of-some-length\n").unwrap();
    let data_dir = dir.path().join("data");
    // Held for the whole check: a node that bound it would fail.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let admin_secret = "viewer-secret-0123456789";
    let (code, out, err) = serve_check(
        &[
            "--listen",
            &listen,
            "--admin-listen",
            "0.0.0.0:9180",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--seeds",
            "weir-eu-0:7946,weir-us-0:7946",
            "--region",
            "eu",
            "--zone",
            "eu-a",
            "--node-id",
            "weir-eu-0",
            "--advertise-addr",
            "10.0.0.5",
            "--cluster-secret-file",
            secret_file.to_str().unwrap(),
            "--raft-bootstrap-expect",
            "6",
        ],
        &[
            ("WEIR_RAFT_TIMING", "wan"),
            (
                "WEIR_ADMIN_KEYS",
                &format!("ops:admin:admin-secret-0123456789,ro:viewer:{admin_secret}"),
            ),
        ],
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        &format!("proxy: listen on {listen}") as &str,
        "admin: listen on 0.0.0.0:9180",
        &format!("data dir: {}", data_dir.display()),
        "bootstrap-expect 6",
        "advertised as 10.0.0.5:9180",
        "timing wan",
        "admin keys: 2 (1 admin, 1 viewer)",
        "gossip cluster `weir` as node `weir-eu-0`, region `eu`, zone `eu-a`",
        "seeds weir-eu-0:7946, weir-us-0:7946",
        &format!("cluster secret from {}", secret_file.display()),
        "weir serve --check: ok",
    ] {
        assert!(out.contains(want), "`{want}` missing from:\n{out}");
    }
    for secret in [admin_secret, "admin-secret-0123456789", "a-cluster-secret"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }
    assert!(!data_dir.exists(), "--check created the data dir");
    // Nothing ever took the port over.
    drop(held);
}

#[test]
fn serve_check_exits_2_naming_a_bad_flag_env_or_config() {
    // A flag clap refuses.
    let (code, _, err) = serve_check(&["--raft-voters", "many"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--raft-voters"), "{err}");

    // Flags that parse but contradict each other.
    let (code, _, err) = serve_check(
        &[
            "--seeds",
            "127.0.0.1:1",
            "--gossip-listen",
            "127.0.0.1:0",
            "--raft-bootstrap-expect",
            "3",
            "--join",
            "127.0.0.1:2",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--raft-bootstrap-expect and --join exclude each other"),
        "{err}"
    );

    // Bad environment: a timing profile, a short cluster secret, an
    // OTLP endpoint, a public admin listener with no key.
    let (code, _, err) = serve_check(&[], &[("WEIR_RAFT_TIMING", "moon")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("moon"), "{err}");
    let (code, _, err) = serve_check(
        &["--seeds", "10.0.0.1:7946", "--advertise-addr", "10.0.0.2"],
        &[("WEIR_CLUSTER_SECRET", "short")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cluster secret from WEIR_CLUSTER_SECRET"),
        "{err}"
    );
    let (code, _, err) = serve_check(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    let (code, _, err) = serve_check(&["--admin-listen", "0.0.0.0:9180"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("without an admin key"), "{err}");

    // Gossip beyond loopback needs a secret and an address to advertise.
    let (code, _, err) = serve_check(&["--seeds", "10.0.0.1:7946"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--advertise-addr"), "{err}");
    assert!(err.contains("no cluster secret is set"), "{err}");

    // A config whose route names a missing upstream (file mode: the
    // compile a start would run later), and two listeners on one port.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("weir.yaml");
    std::fs::write(
        &f,
        "routes:\n  - id: r\n    paths: [/a]\n    upstream: missing\n",
    )
    .unwrap();
    let (code, _, err) = serve_check(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("routes[0].upstream: no upstream with id `missing`"),
        "{err}"
    );
    std::fs::write(&f, "settings:\n  listen: 127.0.0.1:9999\n").unwrap();
    let (code, _, err) = serve_check(
        &[
            "--config",
            f.to_str().unwrap(),
            "--admin-listen",
            "0.0.0.0:9999",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the proxy and the admin listener both want TCP"),
        "{err}"
    );
}
