//! The request loops against a real upstream, and `assert_rejected`
//! against a shell script standing in for `weir validate`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use weir_testsupport::{
    Behaviour, Upstream, assert_rejected, concurrently, count, http_client, statuses,
    statuses_during, until_status,
};

#[tokio::test]
async fn statuses_are_kept_in_order() {
    let up = Upstream::start("a").await;
    let c = http_client();
    let mut i = 0;
    let got = statuses(4, || {
        i += 1;
        let code = if i % 2 == 0 { 429 } else { 200 };
        c.get(up.url(&format!("/status/{code}")))
    })
    .await;
    assert_eq!(got, [200, 429, 200, 429]);
    assert_eq!(count(&got, 429), 2);
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn statuses_during_keeps_sending_for_the_span() {
    let up = Upstream::start("a").await;
    let c = http_client();
    let got = statuses_during(Duration::from_millis(200), || c.get(up.url("/x"))).await;
    assert!(!got.is_empty());
    assert_eq!(count(&got, 200), got.len());
    assert_eq!(up.hits(), got.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrently_has_every_request_in_flight_at_once() {
    let up = Upstream::start("a").await;
    let c = http_client();
    let got = concurrently(4, || {
        let r = c.get(up.url("/slow/300"));
        async move { r.send().await.unwrap().status().as_u16() }
    })
    .await;
    assert_eq!(got, [200; 4]);
    assert_eq!(up.max_concurrent(), 4);
}

#[tokio::test]
async fn until_status_returns_the_first_match() {
    let up = Upstream::start("a").await;
    up.set_behaviour(Behaviour::failing(503));
    let c = http_client();
    let r = until_status("a 503", Duration::from_secs(5), 503, || c.get(up.url("/x"))).await;
    assert_eq!(r.status(), 503);
    up.set_behaviour(Behaviour::normal());
    let r = until_status("a 200", Duration::from_secs(5), 200, || c.get(up.url("/x"))).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
#[should_panic(expected = "waiting for a 418")]
async fn until_status_gives_up_at_the_deadline() {
    let up = Upstream::start("a").await;
    let c = http_client();
    until_status("a 418", Duration::from_millis(200), 418, || {
        c.get(up.url("/x"))
    })
    .await;
}

/// A `weir validate` stand-in: prints the config's first line to stderr
/// and exits 2.
/// Written once per run, before any test spawns it (see `gateway.rs` on
/// "text file busy").
fn fake_validate() -> &'static Path {
    static FAKE: OnceLock<PathBuf> = OnceLock::new();
    FAKE.get_or_init(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-validate");
        let tmp = bin.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, "#!/bin/sh\nhead -n 1 \"$3\" >&2\nexit 2\n").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &bin).unwrap();
        bin
    })
}

#[test]
fn assert_rejected_returns_the_stderr() {
    let err = assert_rejected(fake_validate(), "routes[0].x: wrong\nmore\n", &["x: wrong"]);
    assert_eq!(err, "routes[0].x: wrong\n");
}

#[test]
#[should_panic(expected = "missing `never said`")]
fn assert_rejected_names_a_missing_line() {
    assert_rejected(fake_validate(), "something\n", &["never said"]);
}
