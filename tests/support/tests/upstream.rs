//! The upstream server's endpoints and counters, over real sockets.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use weir_testsupport::{
    Behaviour, RawHttp, Upstream, drain_response, h2c_client, http_client, unused_addr,
    upload_body, upload_body_chunked, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

#[tokio::test]
async fn echo_over_http1_and_h2c() {
    let up = Upstream::start("alpha").await;
    for (client, version) in [(http_client(), "HTTP/1.1"), (h2c_client(), "HTTP/2.0")] {
        let response = client
            .post(up.url("/some/path?x=1&y=2"))
            .header("x-one", "1")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body("hello")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-upstream"], "alpha");
        let body = json(response).await;
        assert_eq!(body["upstream"], "alpha");
        assert_eq!(body["method"], "POST");
        assert_eq!(body["path"], "/some/path");
        assert_eq!(body["query"], "x=1&y=2");
        assert_eq!(body["version"], version);
        assert_eq!(body["headers"]["x-one"], "1");
        assert_eq!(body["headers"]["x-multi"], serde_json::json!(["a", "b"]));
        assert_eq!(body["body_len"], 5);
    }
    assert_eq!(up.hits(), 2);
    let last = up.last_request().expect("a request was recorded");
    assert_eq!(last.version, http::Version::HTTP_2);
    assert_eq!(last.query.as_deref(), Some("x=1&y=2"));
    let headers = up.last_request_headers().expect("headers were recorded");
    assert_eq!(headers["x-one"], "1");
}

#[tokio::test]
async fn h2c_echo_reports_the_authority() {
    let up = Upstream::start("alpha").await;
    let body = json(h2c_client().get(up.url("/")).send().await.expect("request")).await;
    assert_eq!(body["authority"], up.target());
}

#[tokio::test]
async fn status_endpoint_answers_with_the_code_even_behind_a_prefix() {
    let up = Upstream::start("alpha").await;
    let client = http_client();
    for (path, status) in [
        ("/status/503", 503),
        ("/api/v1/status/404", 404),
        ("/status/204", 204),
        ("/status/abc", 400),
    ] {
        let response = client.get(up.url(path)).send().await.expect("request");
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(response.headers()["x-upstream"], "alpha");
        if status == 503 {
            assert_eq!(json(response).await["path"], "/status/503");
        }
    }
    assert_eq!(up.hits_for("/status/"), 3);
    assert_eq!(up.hits_for("/api/"), 1);
    assert_eq!(up.hits_for("/"), 4);
}

#[tokio::test]
async fn slow_waits_before_answering() {
    let up = Upstream::start("alpha").await;
    let started = Instant::now();
    let response = http_client()
        .get(up.url("/slow/300"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(json(response).await["path"], "/slow/300");
}

#[tokio::test]
async fn slow_body_sends_headers_first() {
    let up = Upstream::start("alpha").await;
    for client in [http_client(), h2c_client()] {
        let started = Instant::now();
        let response = client
            .get(up.url("/slow-body/1500"))
            .send()
            .await
            .expect("request");
        let head_after = started.elapsed();
        assert_eq!(response.status(), 200);
        let body = json(response).await;
        let body_after = started.elapsed();
        assert!(
            head_after < Duration::from_millis(1500),
            "head took {head_after:?}"
        );
        assert!(body_after >= Duration::from_millis(1500));
        assert_eq!(body["upstream"], "alpha");
    }
}

#[tokio::test]
async fn bytes_streams_the_pattern() {
    let up = Upstream::start("alpha").await;
    let n = 64 * MIB + 7;
    for client in [http_client(), h2c_client()] {
        let response = client
            .get(up.url(&format!("/bytes/{n}")))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_length(), Some(n));
        let drained = drain_response(response).await.expect("drain");
        assert_eq!(drained.bytes, n);
        assert!(drained.pattern_intact);
    }
}

#[tokio::test]
async fn bytes_can_be_chunked() {
    let up = Upstream::start("alpha").await;
    let mut raw = RawHttp::connect(up.addr()).await.expect("connect");
    raw.send("GET /bytes/100000?chunked=1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let response = raw.read_response().await.expect("response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.body.len(), 100_000);
    let mut check = weir_testsupport::PatternCheck::new();
    check.update(&response.body);
    assert!(check.is_intact());
}

#[tokio::test]
async fn sink_counts_a_streamed_upload() {
    let up = Upstream::start("alpha").await;
    let n = 64 * MIB + 3;
    for client in [http_client(), h2c_client()] {
        for body in [upload_body(n), upload_body_chunked(n)] {
            let response = client
                .post(up.url("/sink"))
                .body(body)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 200);
            let body = json(response).await;
            assert_eq!(body["received"], n);
            assert_eq!(body["pattern_intact"], true);
        }
    }
}

#[tokio::test]
async fn sink_notices_a_body_that_is_not_the_pattern() {
    let up = Upstream::start("alpha").await;
    let response = http_client()
        .put(up.url("/sink"))
        .body("not the pattern")
        .send()
        .await
        .expect("request");
    let body = json(response).await;
    assert_eq!(body["received"], 15);
    assert_eq!(body["pattern_intact"], false);
}

#[tokio::test]
async fn websocket_echoes_text_and_binary() {
    let up = Upstream::start("alpha").await;
    let (mut ws, response) = tokio_tungstenite::connect_async(up.ws_url("/ws"))
        .await
        .expect("websocket handshake");
    assert_eq!(response.headers()["x-upstream"], "alpha");
    ws.send(Message::text("hello")).await.expect("send text");
    assert_eq!(
        ws.next().await.expect("a reply").expect("ok"),
        Message::text("hello")
    );
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    assert_eq!(
        ws.next().await.expect("a reply").expect("ok"),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn websocket_rejects_a_plain_request() {
    let up = Upstream::start("alpha").await;
    let response = http_client()
        .get(up.url("/ws"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn connections_are_counted_and_reused() {
    let up = Upstream::start("alpha").await;
    let client = http_client();
    for _ in 0..5 {
        let response = client.get(up.url("/")).send().await.expect("request");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
    }
    assert_eq!(up.hits(), 5);
    assert_eq!(up.connections(), 1, "keep-alive reuses one connection");

    let response = client.get(up.url("/close")).send().await.expect("request");
    assert_eq!(response.headers()["connection"], "close");
    response.bytes().await.expect("body");
    wait_until("the closed connection to go", WAIT, || async {
        up.open_connections() == 0
    })
    .await;
    client
        .get(up.url("/"))
        .send()
        .await
        .expect("request")
        .bytes()
        .await
        .expect("body");
    assert_eq!(up.connections(), 2, "after close a new connection");

    let h2 = h2c_client();
    for _ in 0..3 {
        h2.get(up.url("/")).send().await.expect("request");
    }
    assert_eq!(up.connections(), 3, "h2c multiplexes on one connection");

    up.reset_stats();
    assert_eq!((up.hits(), up.connections(), up.hits_for("/")), (0, 0, 0));
    assert!(up.last_request().is_none());
}

#[tokio::test]
async fn set_cookie_sets_it() {
    let up = Upstream::start("alpha").await;
    let response = http_client()
        .get(up.url("/set-cookie/session/abc"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["set-cookie"], "session=abc; Path=/");
}

#[tokio::test]
async fn max_concurrent_tracks_the_peak() {
    let up = Upstream::start("alpha").await;
    let client = http_client();
    let requests = (0..4).map(|_| {
        let client = client.clone();
        let url = up.url("/slow/800");
        async move { client.get(url).send().await.expect("request").status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(up.max_concurrent(), 4);
    assert_eq!(up.in_flight(), 0);
}

#[tokio::test]
async fn in_flight_lasts_until_the_body_is_sent() {
    let up = Upstream::start("alpha").await;
    let response = http_client()
        .get(up.url("/slow-body/300"))
        .send()
        .await
        .expect("request");
    assert_eq!(up.in_flight(), 1);
    response.bytes().await.expect("body");
    wait_until("the request to finish", WAIT, || async {
        up.in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn failing_upstream_answers_everything_with_its_status() {
    let up = Upstream::start_with("broken", Behaviour::failing(503)).await;
    let client = http_client();
    for path in ["/", "/bytes/10", "/status/200", "/ws"] {
        let response = client.get(up.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["x-upstream"], "broken");
    }
    up.set_behaviour(Behaviour::normal());
    let response = client.get(up.url("/")).send().await.expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn delayed_behaviour_waits() {
    let up = Upstream::start_with(
        "late",
        Behaviour::normal().with_delay(Duration::from_millis(200)),
    )
    .await;
    let started = Instant::now();
    let response = http_client()
        .get(up.url("/"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn kill_refuses_and_drops_connections_then_restart_recovers() {
    let up = Upstream::start("alpha").await;
    let addr = up.addr();

    // An idle keep-alive connection, a request in flight and a WebSocket.
    let mut idle = RawHttp::connect(addr).await.expect("connect");
    idle.send("GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(idle.read_response().await.expect("response").status, 200);
    let mut busy = RawHttp::connect(addr).await.expect("connect");
    busy.send("GET /slow/60000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let (mut ws, _) = tokio_tungstenite::connect_async(up.ws_url("/ws"))
        .await
        .expect("websocket handshake");
    wait_until("the slow request to arrive", WAIT, || async {
        up.in_flight() == 1
    })
    .await;

    up.kill().await;
    assert!(!up.is_running());
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert_eq!(
        refused.expect_err("connect must fail").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(idle.read_to_end().await.expect("closed").is_empty());
    assert!(busy.read_to_end().await.expect("closed").is_empty());
    assert!(
        !matches!(
            ws.next().await,
            Some(Ok(Message::Text(_) | Message::Binary(_)))
        ),
        "the websocket ends"
    );
    assert_eq!(up.open_connections(), 0);
    assert_eq!(up.in_flight(), 0);
    up.kill().await; // idempotent

    up.restart().await;
    assert!(up.is_running());
    assert_eq!(up.addr(), addr);
    let response = http_client()
        .get(up.url("/"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(up.hits(), 4, "counters carry on across a restart");
}

#[tokio::test]
async fn restart_while_running_rebinds() {
    let up = Upstream::start("alpha").await;
    up.restart().await;
    let response = http_client()
        .get(up.url("/"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn stop_lets_requests_in_flight_finish() {
    let up = Upstream::start("alpha").await;
    let client = http_client();
    let url = up.url("/slow/500");
    let request = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    wait_until("the slow request to arrive", WAIT, || async {
        up.in_flight() == 1
    })
    .await;
    up.stop().await;
    assert_eq!(request.await.expect("join").expect("request"), 200);
    let refused = tokio::net::TcpStream::connect(up.addr()).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn drop_closes_the_listener() {
    let up = Upstream::start("alpha").await;
    let addr = up.addr();
    drop(up);
    wait_until("the listener to close", WAIT, || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn unused_addr_refuses() {
    let addr = unused_addr();
    let err = tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = http_client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect_err("nothing listens");
    assert!(err.is_connect());
}

#[tokio::test]
async fn raw_http_reads_pipelined_responses() {
    let up = Upstream::start("alpha").await;
    let mut raw = RawHttp::connect(up.addr()).await.expect("connect");
    raw.send(
        "GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
         POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc\
         HEAD /c HTTP/1.1\r\nhost: x\r\n\r\n\
         GET /d HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("send");
    let a = raw.read_response().await.expect("first");
    assert_eq!(a.json().expect("json")["path"], "/a");
    let b = raw.read_response().await.expect("second");
    assert_eq!(b.json().expect("json")["body_len"], 3);
    let c = raw.read_head_response().await.expect("third");
    assert_eq!(c.status, 200);
    assert!(c.body.is_empty());
    let d = raw.read_response().await.expect("fourth");
    assert_eq!(d.json().expect("json")["path"], "/d");
    assert!(raw.read_to_end().await.expect("closed").is_empty());
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn raw_http_sees_malformed_requests_rejected() {
    let up = Upstream::start("alpha").await;
    let response = RawHttp::exchange(up.addr(), "GARBAGE\r\n\r\n")
        .await
        .expect("a response");
    assert_eq!(response.status, 400);
}
