//! The process launcher, against a shell script standing in for `weir`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use weir_testsupport::{Gateway, Signal, wait_until};

const WAIT: Duration = Duration::from_secs(10);

/// Behaves like `weir serve` as far as the launcher can tell. `FAKE_MODE`
/// picks a failure: `fail` exits at once, `hang` never writes the ready
/// file. `exec` keeps the process id the launcher knows, so signals reach
/// the process that stands for the gateway.
const FAKE_WEIR: &str = r#"#!/bin/sh
echo "fake weir args: $*"
echo "fake weir log level: $WEIR_LOG"
config="$3"
ready="$5"
case "$FAKE_MODE" in
  fail) echo "error: config is broken" >&2; exit 3 ;;
  hang) exec sleep 600 ;;
esac
test -f "$config" || { echo "no config at $config" >&2; exit 4; }
printf '{"proxy":"127.0.0.1:1111","admin":"127.0.0.1:2222","pid":%s,"node":"n1"}' $$ > "$ready.tmp"
mv "$ready.tmp" "$ready"
exec sleep 600
"#;

/// Writes the fake once per test run, before any test spawns a process:
/// executing a file that another thread's fork still holds open for
/// writing fails with "text file busy".
fn fake_weir() -> &'static Path {
    static FAKE: OnceLock<PathBuf> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let bin = dir.join("fake-weir");
        let tmp = bin.with_extension("tmp");
        std::fs::write(&tmp, FAKE_WEIR).expect("write the fake");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&tmp, &bin).expect("put the fake in place");
        bin
    })
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn starts_and_reads_the_ready_file() {
    let fake = fake_weir();
    let config = Gateway::config("routes: []\n");
    let mut gw = Gateway::start(fake, &config).await.expect("start");

    assert_eq!(gw.proxy_addr(), "127.0.0.1:1111".parse().expect("addr"));
    assert_eq!(gw.admin_addr(), "127.0.0.1:2222".parse().expect("addr"));
    assert_eq!(gw.url("/x"), "http://127.0.0.1:1111/x");
    assert_eq!(gw.admin_url("/health"), "http://127.0.0.1:2222/health");
    assert_eq!(gw.ready().pid, gw.pid());
    assert_eq!(gw.ready().extra["node"], "n1");
    assert_eq!(
        std::fs::read_to_string(gw.config_path()).expect("config"),
        config
    );
    assert!(process_exists(gw.pid()));
    assert!(gw.try_exit_status().expect("status").is_none());

    let log = gw.log();
    let dir = gw.dir().display().to_string();
    assert!(
        log.contains(&format!(
            "args: serve --config {dir}/weir.yaml --ready-file {dir}/ready.json"
        )),
        "{log}"
    );
    assert!(log.contains("log level: info"), "{log}");
}

#[tokio::test]
async fn builder_passes_args_and_env() {
    let fake = fake_weir();
    let builder = Gateway::builder(fake);
    let extra = builder.dir().join("extra.txt");
    std::fs::write(&extra, "x").expect("write extra file");
    let gw = builder
        .config("{}")
        .args(["--node-id", "n7"])
        .arg("--verbose")
        .env("WEIR_LOG", "debug")
        .start()
        .await
        .expect("start");
    assert!(gw.dir().join("extra.txt").exists());
    let log = gw.log();
    assert!(log.contains("ready.json --node-id n7 --verbose"), "{log}");
    assert!(log.contains("log level: debug"), "{log}");
}

#[tokio::test]
async fn early_exit_is_an_error_with_the_log() {
    let fake = fake_weir();
    let err = Gateway::builder(fake)
        .env("FAKE_MODE", "fail")
        .start()
        .await
        .expect_err("the fake exits");
    let message = format!("{err:#}");
    assert!(message.contains("exited with exit status: 3"), "{message}");
    assert!(message.contains("error: config is broken"), "{message}");
}

#[tokio::test]
async fn missing_binary_is_an_error() {
    let err = Gateway::start(Path::new("/nonexistent/weir"), "")
        .await
        .expect_err("no binary");
    assert!(format!("{err:#}").contains("/nonexistent/weir"), "{err:#}");
}

#[tokio::test]
async fn deadline_is_an_error_and_kills_the_process() {
    let fake = fake_weir();
    let builder = Gateway::builder(fake)
        .env("FAKE_MODE", "hang")
        .ready_timeout(Duration::from_millis(300));
    let log_path = builder.dir().join("weir.log");
    let err = builder.start().await.expect_err("never ready");
    let message = format!("{err:#}");
    assert!(message.contains("did not become ready"), "{message}");
    assert!(message.contains("fake weir args"), "{message}");
    // The dir is gone with the failed start, and so is the process.
    assert!(!log_path.exists());
}

#[tokio::test]
async fn sigterm_reaches_the_process() {
    let fake = fake_weir();
    let mut gw = Gateway::start(fake, "").await.expect("start");
    gw.signal(Signal::Term).expect("signal");
    let status = gw.wait_exit(WAIT).await.expect("exits");
    assert_eq!(status.signal(), Some(15));
    let err = gw.signal(Signal::Int).expect_err("already exited");
    assert!(err.to_string().contains("already exited"), "{err}");
}

#[tokio::test]
async fn wait_exit_times_out_on_a_running_process() {
    let fake = fake_weir();
    let mut gw = Gateway::start(fake, "").await.expect("start");
    let err = gw
        .wait_exit(Duration::from_millis(100))
        .await
        .expect_err("still running");
    assert!(err.to_string().contains("still running"), "{err}");
    assert!(process_exists(gw.pid()));
}

#[tokio::test]
async fn rewrite_config_replaces_the_file() {
    let fake = fake_weir();
    let gw = Gateway::start(fake, "routes: []\n").await.expect("start");
    gw.rewrite_config("routes: [1]\n").expect("rewrite");
    assert_eq!(
        std::fs::read_to_string(gw.config_path()).expect("config"),
        "routes: [1]\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir())
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn restart_runs_a_new_process_and_keeps_the_log() {
    let fake = fake_weir();
    let mut gw = Gateway::start(fake, "").await.expect("start");
    let first = gw.pid();
    gw.restart().await.expect("restart");
    assert_ne!(gw.pid(), first);
    assert_eq!(gw.ready().pid, gw.pid());
    assert!(!process_exists(first));
    assert_eq!(gw.log().matches("fake weir args").count(), 2);
}

#[tokio::test]
async fn drop_kills_the_process_and_removes_the_dir() {
    let fake = fake_weir();
    let gw = Gateway::start(fake, "").await.expect("start");
    let pid = gw.pid();
    let dir = gw.dir().to_path_buf();
    assert!(process_exists(pid));
    drop(gw);
    assert!(!process_exists(pid), "pid {pid} still exists");
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_panicking_test_leaves_no_process() {
    let fake = fake_weir();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let bin = fake.to_path_buf();
    let task = tokio::spawn(async move {
        let gw = Gateway::start(&bin, "").await.expect("start");
        tx.send(gw.pid()).expect("send pid");
        panic!("the test failed while the gateway ran");
    });
    let pid = rx.await.expect("pid");
    assert!(task.await.expect_err("the task panicked").is_panic());
    wait_until("the process to be gone", WAIT, || async {
        !process_exists(pid)
    })
    .await;
}
