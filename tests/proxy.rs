//! Proxying basics: forwarding headers, hop-by-hop removal, Host rules,
//! HTTP/2 on both sides, keep-alive pooling and pipelining.

mod common;

use common::{gateway, one_upstream};
use weir_testsupport::{RawHttp, Upstream, h2c_client, http_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let resp = http_client()
        .get(gw.url("/x?q=1"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .header("via", "1.1 edge")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["via"], "1.1 weir");
    let h = up.last_request_headers().unwrap();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let host = format!("127.0.0.1:{}", gw.proxy_addr().port());
    assert_eq!(h["x-forwarded-host"], host.as_str());
    assert_eq!(
        h["forwarded"],
        format!("for=203.0.113.9, for=127.0.0.1;proto=http;host=\"{host}\"").as_str()
    );
    assert_eq!(h["via"], "1.1 edge, 1.1 weir");
    assert_eq!(h["host"], host.as_str(), "Host passes through by default");
    let r = up.last_request().unwrap();
    assert_eq!(r.path, "/x");
    assert_eq!(r.query.as_deref(), Some("q=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let req = "GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-End: kept\r\n\r\n";
    let r = RawHttp::exchange(gw.proxy_addr(), req).await.unwrap();
    assert_eq!(r.status, 200);
    let h = up.last_request_headers().unwrap();
    for gone in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(h["x-end"], "kept");
    // The upstream's `Connection: close` is about its hop only: the client
    // connection stays usable.
    let mut raw = RawHttp::connect(gw.proxy_addr()).await.unwrap();
    raw.send("GET /close HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let r = raw.read_response().await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("connection")
            .is_none_or(|v| !v.eq_ignore_ascii_case("close")),
        "{:?}",
        r.headers
    );
    raw.send("GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw.read_response().await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_rules() {
    let up = Upstream::start("a").await;
    let t = up.target();
    let yaml = format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{t}\"}}]}}]
services: [{{id: s, upstream: u, host_header: {{rewrite: svc.internal}}}}]
routes:
  - {{id: pass, paths: [/pass], upstream: u}}
  - {{id: target, paths: [/target], upstream: u, host_header: target}}
  - {{id: rewrite, paths: [/rewrite], upstream: u, host_header: {{rewrite: api.internal}}}}
  - {{id: from-service, paths: [/svc], service: s}}
"
    );
    let gw = gateway(&yaml).await;
    let c = http_client();
    let host_seen = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        let up = &up;
        async move {
            let resp = c
                .get(url)
                .header("host", "public.example")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            up.last_request_headers().unwrap()["host"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(host_seen("/pass").await, "public.example");
    assert_eq!(host_seen("/target").await, t);
    assert_eq!(host_seen("/rewrite").await, "api.internal");
    assert_eq!(host_seen("/svc").await, "svc.internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pool_reuses_upstream_connections() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let c = http_client();
    for _ in 0..50 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(up.hits(), 50);
    assert_eq!(
        up.connections(),
        1,
        "sequential requests should share one pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_and_h2c_upstreams() {
    let up = Upstream::start("a").await;
    // h2c client to an HTTP/1.1 upstream.
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let resp = h2c_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let r = up.last_request().unwrap();
    assert_eq!(r.version, http::Version::HTTP_11);
    let host = format!("127.0.0.1:{}", gw.proxy_addr().port());
    assert_eq!(
        r.headers["host"],
        host.as_str(),
        "an HTTP/2 :authority becomes Host"
    );

    // Many concurrent streams to an h2c upstream share one connection.
    let up2 = Upstream::start("b").await;
    let gw2 = gateway(&one_upstream(&[up2.target()], "    scheme: h2c\n")).await;
    let c = http_client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let url = gw2.url(&format!("/slow/100?i={i}"));
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(up2.last_request().unwrap().version, http::Version::HTTP_2);
    assert_eq!(
        up2.connections(),
        1,
        "h2c requests should multiplex on one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let mut raw = RawHttp::connect(gw.proxy_addr()).await.unwrap();
    let mut batch = String::new();
    for i in 0..5 {
        batch.push_str(&format!("GET /p{i} HTTP/1.1\r\nHost: h\r\n\r\n"));
    }
    raw.send(batch).await.unwrap();
    for i in 0..5 {
        let r = raw.read_response().await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json().unwrap()["path"], format!("/p{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_expire_and_the_pool_is_capped() {
    let up = Upstream::start("a").await;
    let gw = gateway(&one_upstream(
        &[up.target()],
        "    keepalive: {max_idle: 2, idle_timeout: 300ms}\n",
    ))
    .await;
    let c = http_client();
    // Ten concurrent slow requests need ten connections ...
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (c, url) = (c.clone(), gw.url(&format!("/slow/200?i={i}")));
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(up.connections(), 10);
    // ... but only max_idle of them stay in the pool afterwards ...
    weir_testsupport::wait_until(
        "the pool trims to max_idle",
        std::time::Duration::from_secs(10),
        || async { up.open_connections() <= 2 },
    )
    .await;
    // ... and idle ones are closed after idle_timeout.
    weir_testsupport::wait_until(
        "idle connections expire",
        std::time::Duration::from_secs(10),
        || async { up.open_connections() == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_count_is_configurable() {
    let up = Upstream::start("a").await;
    for workers in [1usize, 3] {
        let mut yaml = one_upstream(&[up.target()], "");
        yaml.push_str(&format!("settings: {{workers: {workers}}}\n"));
        let gw = gateway(&yaml).await;
        assert_eq!(
            http_client()
                .get(gw.url("/x"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let tasks = std::fs::read_dir(format!("/proc/{}/task", gw.pid())).unwrap();
        let runtime_workers = tasks
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|comm| comm.trim() == "tokio-rt-worker")
            .count();
        // One worker runs everything on the main thread (a current-thread
        // runtime); more get a pool of exactly that many worker threads.
        let expected = if workers == 1 { 0 } else { workers };
        assert_eq!(runtime_workers, expected, "workers: {workers}");
    }
}
