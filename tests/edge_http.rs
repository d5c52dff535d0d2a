//! The edge's HTTP hygiene, both ways (issue 16, findings 2, 4, 8 and 9):
//! paths are normalised before routing and forwarded as routed, ambiguous
//! framing never reaches an upstream or a client, invalid upstream answers
//! become 502, and gateway errors tell the client a code and a request id
//! while the log gets the detail.
//!
//! Clients send exact bytes over raw sockets; the upstream is a raw TCP
//! server written here that records every request as it arrived and answers
//! with bytes the test chooses (framing no HTTP library would produce).
//! After each refusal the gateway must still serve a normal request.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{error_of, gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_testsupport::{Gateway, RawHttp, RawResponse, h2c_client, unused_addr, wait_for};

// === a raw recording upstream ===

type Answer = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A TCP upstream that reads one request per connection (head, then a
/// `Content-Length` or chunked body), records it as received, answers with
/// what `answer` returns for the head, and closes.
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    async fn start(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let rec = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let rec = rec.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut s).await else {
                        return;
                    };
                    let reply = answer(&req);
                    rec.lock().unwrap().push(req);
                    let _ = s.write_all(&reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawUpstream { addr, seen }
    }

    /// Answers `200 ok` with `Content-Length`.
    async fn ok() -> RawUpstream {
        RawUpstream::start(|_| {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
        })
        .await
    }

    fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received so far, head and body as text.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The request lines received so far (`GET /x HTTP/1.1`).
    fn request_lines(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|r| r.lines().next().unwrap_or_default().to_string())
            .collect()
    }
}

/// Reads one request: the head, then its body by `Content-Length` or
/// chunked framing (ending at the last chunk; no trailers).
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body_done = |buf: &[u8]| {
        let body = &buf[head_end..];
        if head.contains("transfer-encoding: chunked") {
            body.starts_with(b"0\r\n\r\n") || find(body, b"\r\n0\r\n\r\n").is_some()
        } else {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            body.len() >= len
        }
    };
    while !body_done(&buf) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// === helpers ===

/// Sends `raw` on a new connection; the response, or `None` when the
/// gateway closed without one (the HTTP parser's way of refusing).
async fn send(gw: &Gateway, raw: &str) -> Option<RawResponse> {
    RawHttp::exchange(gw.proxy_addr(), raw).await.ok()
}

/// A bare `GET` of `path`.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
}

/// Asserts `raw` is refused with `status` (or, for the parser's own
/// refusals, a closed connection when `status` is 400) and never reaches
/// `up`; then that a normal request still gets through.
async fn assert_refused(gw: &Gateway, up: &RawUpstream, raw: &str, status: u16) {
    let before = up.seen().len();
    match send(gw, raw).await {
        Some(r) => {
            assert_eq!(r.status, status, "{raw:?}: {}", r.text());
            // The gateway's own answers are JSON; the parser's are bare.
            if let Ok(body) = r.json() {
                assert_eq!(error_of(&body)["status"], status, "{raw:?}");
            }
        }
        None => assert_eq!(status, 400, "{raw:?}: closed without an answer"),
    }
    assert_eq!(up.seen().len(), before, "{raw:?} reached the upstream");
    assert_serving(gw).await;
}

/// A normal request still gets a 200.
async fn assert_serving(gw: &Gateway) {
    let r = send(gw, &get("/public/still-serving"))
        .await
        .expect("a normal request is answered");
    assert_eq!(r.status, 200, "{}", r.text());
}

fn config(target: &str) -> String {
    format!(
        "upstreams:\n  - {{id: secret-backend, targets: [{{addr: \"{target}\"}}], retries: 0, passive_health: {{max_fails: 0}}}}\n\
         routes:\n\
         \x20 - {{id: public, paths: [\"/public/*\"], upstream: secret-backend}}\n\
         \x20 - {{id: files, paths: [\"/files/*\"], upstream: secret-backend, escaped_slashes: decode}}\n\
         \x20 - {{id: strict, paths: [\"/strict/*\"], upstream: secret-backend, escaped_slashes: reject}}\n"
    )
}

// === finding 2: paths ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_dot_segments_never_reach_the_upstream() {
    let up = RawUpstream::ok().await;
    let gw = gateway(&config(&up.target())).await;
    // Every variant of the report, and their cousins: refused before
    // routing, so neither route table nor upstream ever reads a `..`.
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/%2E%2E%2Fadmin",
        "/public/.%2e/admin",
        "/public/%2e/admin",
        "/public/..;/admin",
        "/public/..%3B/admin",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/public/..%00/admin",
        "/public/..%20/admin",
        "/public/%c0%ae%c0%ae/admin",
        "/public/%e0%80%ae%e0%80%ae/admin",
        "/public/%zz/admin",
        "/files/..%2Fadmin",
    ] {
        assert_refused(&gw, &up, &get(path), 400).await;
    }
    assert!(up.seen().iter().all(|r| !r.contains("admin")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_exactly_the_path_that_was_routed() {
    let up = RawUpstream::ok().await;
    let gw = gateway(&config(&up.target())).await;
    // Decoded unreserved characters are routed, and forwarded, decoded.
    for (sent, forwarded) in [
        ("/%70ublic/%61dmin", "/public/admin"),
        ("/public/a%2Ejs?q=%2e", "/public/a.js?q=%2e"),
        // Other encodings stay as sent, case included.
        ("/public/caf%c3%a9%20x", "/public/caf%c3%a9%20x"),
        // `keep`: the encoded slash is part of a segment, both ways.
        ("/public/a%2Fb%5Cc", "/public/a%2Fb%5Cc"),
        // `decode`: routed and forwarded with plain slashes.
        ("/files/a%2Fb%5cc", "/files/a/b/c"),
    ] {
        let r = send(&gw, &get(sent)).await.expect("answered");
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        let line = up.request_lines().pop().unwrap();
        assert_eq!(line, format!("GET {forwarded} HTTP/1.1"), "{sent}");
    }
    // Routing reads the normalised path: `/%61dmin` is `/admin`, which no
    // route serves, so the upstream never sees it.
    let before = up.seen().len();
    let r = send(&gw, &get("/%61dmin")).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_of(&r.json().unwrap())["code"], "no_route");
    // `reject`: an encoded slash or backslash is refused on that route.
    for path in ["/strict/a%2Fb", "/strict/a%5cb", "/strict/a\\b"] {
        assert_refused(&gw, &up, &get(path), 400).await;
    }
    assert_eq!(
        up.seen().len(),
        before + 3,
        "only the serving checks got through"
    );
}

// === finding 9: request strictness ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_hosts_are_refused() {
    let up = RawUpstream::ok().await;
    let gw = gateway(&config(&up.target())).await;
    // Two Host lines (RFC 9112 §3.2): the report saw the first forwarded.
    assert_refused(
        &gw,
        &up,
        "GET /public/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        400,
    )
    .await;
    // A Host that is not `host[:port]`.
    for host in ["a b.test", "user@a.test", "a.test/x", "a.test:80:80", ""] {
        assert_refused(
            &gw,
            &up,
            &format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            400,
        )
        .await;
    }
    // No Host at all, even with an absolute-form target.
    assert_refused(&gw, &up, "GET /public/x HTTP/1.1\r\n\r\n", 400).await;
    assert_refused(
        &gw,
        &up,
        "GET http://gw.test/public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_are_refused() {
    let up = RawUpstream::ok().await;
    let gw = gateway(&config(&up.target())).await;
    let post = |te: &str| {
        format!("POST /public/x HTTP/1.1\r\nHost: gw.test\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    };
    // A coding the gateway would drop without decoding: 501 (RFC 9112 §6.1).
    assert_refused(&gw, &up, &post("Transfer-Encoding: gzip, chunked"), 501).await;
    assert_refused(&gw, &up, &post("Transfer-Encoding: chunked, chunked"), 501).await;
    assert_refused(
        &gw,
        &up,
        &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
        501,
    )
    .await;
    assert_refused(&gw, &up, &post("Transfer-Encoding: foo, chunked"), 501).await;
    // Chunked not last: the length is unknowable (RFC 9112 §6.3), 400.
    assert_refused(&gw, &up, &post("Transfer-Encoding: chunked, gzip"), 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_abuse_is_refused_and_cl_te_is_reframed() {
    let up = RawUpstream::ok().await;
    let gw = gateway(&config(&up.target())).await;
    let post = |cl: &str| format!("POST /public/x HTTP/1.1\r\nHost: gw.test\r\n{cl}\r\n\r\nhello");
    for cl in [
        "Content-Length: +5",
        "Content-Length: -5",
        "Content-Length: 5, 5",
        "Content-Length: 0x5",
        "Content-Length: 5\r\nContent-Length: 6",
    ] {
        assert_refused(&gw, &up, &post(cl), 400).await;
    }

    // Content-Length beside chunked: the chunked framing is the one read
    // (RFC 9112 §6.3), the stale length never goes upstream, and the
    // connection closes after the answer so nothing behind it is read as a
    // request.
    let mut raw = RawHttp::connect(gw.proxy_addr()).await.unwrap();
    raw.send(
        "POST /public/clte HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await
    .unwrap();
    let r = raw.read_response().await.unwrap();
    assert_eq!(r.status, 200);
    assert!(raw.read_response().await.is_err(), "a second response came");
    let seen = up.seen();
    let clte = seen.iter().find(|r| r.contains("/public/clte")).unwrap();
    let lower = clte.to_ascii_lowercase();
    assert!(
        lower.ends_with("hello\r\n0\r\n\r\n") || lower.ends_with("\r\n\r\nhello"),
        "{clte}"
    );
    assert!(
        !(lower.contains("content-length: 3")),
        "the stale length went upstream: {clte}"
    );
    assert!(seen.iter().all(|r| !r.contains("smuggled")));

    // Leading zeros in a chunk size are read as the number they spell, and
    // the upstream gets the body in the gateway's own framing, never the
    // client's.
    let zeros = "0".repeat(200);
    let r = send(
        &gw,
        &format!(
            "POST /public/zeros HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{zeros}5\r\nhello\r\n0\r\n\r\n"
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.seen();
    let z = seen.iter().find(|r| r.contains("/public/zeros")).unwrap();
    assert!(z.contains("hello") && !z.contains("00000"), "{z}");
    assert_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_and_control_characters_are_refused() {
    let up = RawUpstream::ok().await;
    let gw = gateway(&config(&up.target())).await;
    for raw in [
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-A: one\r\n two\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-A: one\r\n\ttwo\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x01b\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x00b\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-A: a\rb\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x7fb\r\n\r\n",
        "GET /public/x\x01 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX A: b\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-A : b\r\n\r\n",
    ] {
        assert_refused(&gw, &up, raw, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrades_are_not_passed_on() {
    // This upstream switches to h2c whenever it is asked to, as a real one
    // would; through the gateway it must never be asked.
    let up = RawUpstream::start(|head| {
        if head.to_ascii_lowercase().contains("upgrade: h2c") {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
        }
    })
    .await;
    let gw = gateway(&config(&up.target())).await;
    let r = send(
        &gw,
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"ok");
    let seen = up.seen().pop().unwrap().to_ascii_lowercase();
    assert!(
        !seen.contains("upgrade") && !seen.contains("http2-settings"),
        "{seen}"
    );
    assert_serving(&gw).await;
}

// === findings 4 and 9: response strictness ===

/// 26 bytes in one chunk, announced with a stale `Content-Length: 5`.
const CL_AND_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_content_length_from_the_upstream_is_dropped() {
    let up = RawUpstream::start(|_| CL_AND_CHUNKED.to_vec()).await;
    let gw = gateway(&config(&up.target())).await;
    // HTTP/1: the whole body, framed by the gateway.
    let r = send(&gw, &get("/public/clte")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"abcdefghijklmnopqrstuvwxyz");
    assert_ne!(r.header("content-length"), Some("5"));
    // HTTP/2 (h2c, prior knowledge): no stream error, the whole body.
    let resp = h2c_client()
        .get(gw.url("/public/clte"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_ne!(
        resp.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    assert_eq!(
        &resp.bytes().await.unwrap()[..],
        b"abcdefghijklmnopqrstuvwxyz"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_upstream_answers_become_502() {
    let up = RawUpstream::start(|head| {
        let path = head.split(' ').nth(1).unwrap_or_default();
        match path {
            "/public/999" => b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "/public/099" => b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "/public/gzip" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec()
            }
            "/public/two-lengths" => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec()
            }
            "/public/fold" => {
                b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok".to_vec()
            }
            "/public/ctl" => {
                b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok".to_vec()
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        }
    })
    .await;
    let gw = gateway(&config(&up.target())).await;
    // An invalid status, a coding the gateway would drop, and heads the
    // HTTP client refuses: conflicting lengths, obs-fold, a control byte.
    for path in [
        "/public/999",
        "/public/099",
        "/public/gzip",
        "/public/two-lengths",
        "/public/fold",
        "/public/ctl",
    ] {
        let r = send(&gw, &get(path)).await.unwrap();
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(error_of(&r.json().unwrap())["code"], "upstream_error");
        assert_serving(&gw).await;
    }
}

// === finding 8: telling without leaking ===

/// The WARN line that carries `rid`, once it is written.
async fn warn_line_of(gw: &Gateway, rid: &str) -> String {
    wait_for(
        &format!("a WARN line with {rid}"),
        Duration::from_secs(10),
        || {
            let line = gw
                .log()
                .lines()
                .find(|l| l.contains(rid) && l.contains("WARN"))
                .map(str::to_string);
            async move { line }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_tell_a_code_and_the_log_tells_the_rest() {
    let up = RawUpstream::start(|head| {
        if head.starts_with("GET /weird/") {
            b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    })
    .await;
    // Picked after the upstream bound, so that it cannot be the same port.
    let dead = unused_addr();
    let yaml = format!(
        "upstreams:\n  - {{id: secret-backend, targets: [{{addr: \"{dead}\"}}], retries: 0, passive_health: {{max_fails: 0}}}}\n\
         \x20 - {{id: weird-backend, targets: [{{addr: \"{}\"}}], retries: 0, passive_health: {{max_fails: 0}}}}\n\
         routes:\n\
         \x20 - {{id: dead, paths: [\"/dead/*\"], upstream: secret-backend}}\n\
         \x20 - {{id: weird, paths: [\"/weird/*\"], upstream: weird-backend}}\n\
         \x20 - {{id: public, paths: [\"/public/*\"], upstream: weird-backend}}\n",
        up.target()
    );
    let gw = gateway(&yaml).await;
    // A refused connection (the library's text) and an invalid answer.
    for (path, rid, upstream, addr, detail) in [
        (
            "/dead/x",
            "req-dead-1",
            "secret-backend",
            dead.to_string(),
            "connect",
        ),
        (
            "/weird/x",
            "req-weird-1",
            "weird-backend",
            up.target(),
            "999",
        ),
    ] {
        let r = send(
            &gw,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: gw.test\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 502);
        let body = r.text();
        let e = error_of(&r.json().unwrap()).clone();
        assert_eq!(e["code"], "upstream_error");
        assert_eq!(e["request_id"], rid);
        for leak in [
            addr.as_str(),
            "127.0.0.1",
            upstream,
            detail,
            "refused",
            "tcp",
            "error:",
        ] {
            assert!(!body.contains(leak), "the 502 body leaks {leak:?}: {body}");
        }
        let line = warn_line_of(&gw, rid).await;
        for want in [addr.as_str(), upstream, detail, "upstream_error"] {
            assert!(line.contains(want), "the log line lacks {want:?}: {line}");
        }
    }
    assert_serving(&gw).await;
}
