//! Graceful shutdown: SIGTERM/SIGINT stop accepting, let requests in flight
//! finish, and exit 0.

mod common;

use std::time::Duration;

use common::{gateway, one_upstream};
use weir_testsupport::{Signal, Upstream, http_client, wait_until};

async fn drains_on(signal: Signal) {
    let up = Upstream::start("a").await;
    let mut gw = gateway(&one_upstream(&[up.target()], "    timeouts: {read: 10s}\n")).await;
    let c = http_client();
    let mut in_flight = Vec::new();
    for i in 0..10 {
        let (c, url) = (c.clone(), gw.url(&format!("/slow/4000?i={i}")));
        in_flight.push(tokio::spawn(async move {
            c.get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    // Each request stays at the upstream for 4 s: long enough that all 10
    // are there at once even when the machine is slow to start them.
    wait_until(
        "all 10 requests reached the upstream",
        Duration::from_secs(10),
        || async { up.in_flight() == 10 },
    )
    .await;
    gw.signal(signal).unwrap();
    // New connections are refused once the listener is closed.
    let addr = gw.proxy_addr();
    wait_until("the listener closes", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    for t in in_flight {
        assert_eq!(
            t.await.unwrap().expect("an in-flight request was dropped"),
            200
        );
    }
    let status = gw.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "weir exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    drains_on(Signal::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_in_flight_requests() {
    drains_on(Signal::Int).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    let up = Upstream::start("a").await;
    let mut yaml = one_upstream(&[up.target()], "    timeouts: {read: 60s}\n");
    yaml.push_str("settings: {drain_timeout: 500ms}\n");
    let mut gw = gateway(&yaml).await;
    let (c, url) = (http_client(), gw.url("/slow/30000"));
    let stuck = tokio::spawn(async move { c.get(url).send().await.is_ok() });
    wait_until(
        "the request reached the upstream",
        Duration::from_secs(10),
        || async { up.in_flight() == 1 },
    )
    .await;
    gw.signal(Signal::Term).unwrap();
    let status = gw.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success());
    assert!(gw.log().contains("drain timeout reached"), "{}", gw.log());
    stuck.abort();
}
