//! The edge's connection bounds (issue 16, findings 1, 6 and 7; ADR 0038):
//! caps in all and per client IP, a deadline for every state a connection
//! can stall in, on the proxy and the admin listener alike, the HTTP/2
//! abuse defences, the file descriptor limit, and warnings that a flood of
//! bad connections cannot turn into a flood of log lines.
//!
//! The gateways here run with 1-2 s timeouts so every deadline is seen in
//! a few seconds; each check waits with a deadline, never a fixed sleep.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{one_upstream, rejected, weir_bin};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use weir_testsupport::{Gateway, RawHttp, Upstream, h2c_client, http_client, wait_until};

/// Short timeouts, so each deadline passes within a test.
const SHORT: &str = "settings:
  first_byte_timeout: 1s
  header_read_timeout: 1s
  idle_timeout: 2s
  admin_header_read_timeout: 1s
  admin_idle_timeout: 2s
";

/// How late past its deadline a close may come on a busy two-core
/// machine (the check itself runs at the deadline).
const MARGIN: Duration = Duration::from_millis(2500);

/// A gateway in front of one upstream with [`SHORT`] timeouts, except
/// where `settings` (more lines under `settings:`) names a key itself.
async fn gateway_with(up: &Upstream, settings: &str) -> Gateway {
    let key = |line: &str| {
        line.split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let own: Vec<String> = settings.lines().map(key).collect();
    let short: String = SHORT
        .lines()
        .filter(|l| !own.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    let yaml = format!("{short}{settings}{}", one_upstream(&[up.target()], ""));
    Gateway::start(weir_bin(), &Gateway::config(&yaml))
        .await
        .expect("weir starts")
}

/// Waits until the peer closes `stream` (EOF or reset) and returns how
/// long that took from `since`; fails past `limit`. Whatever the gateway
/// sends before closing is read and dropped.
async fn closed_within(stream: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Connects to `addr` from the loopback address `from` (127.0.0.x).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(addr).await
}

/// Whether a request on `stream` gets an answer, or the gateway closes it
/// unanswered (a refused connection).
async fn answered(stream: TcpStream) -> bool {
    let mut raw = RawHttp::from_stream(stream);
    if raw
        .send("GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    matches!(raw.read_response().await, Ok(r) if r.status == 200)
}

/// Fails, showing the log, unless the gateway logged `text`.
fn assert_logged(gw: &Gateway, text: &str) {
    let log = gw.log();
    assert!(log.contains(text), "`{text}` not in the log:\n{log}");
}

async fn admin_answers(gw: &Gateway) -> bool {
    matches!(
        http_client().get(gw.admin_url("/v1/health")).send().await,
        Ok(r) if r.status() == 200
    )
}

// === HTTP/2 frames, by hand ===

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 4;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const PING: u8 = 6;
const DATA: u8 = 0;
const CONTINUATION: u8 = 9;
const GOAWAY: u8 = 7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const END_STREAM_AND_HEADERS: u8 = 0x5;
/// `GET /` for authority `x`: `:method GET`, `:scheme http`, `:path /`
/// from HPACK's static table, `:authority` a literal with an indexed name.
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The preface and an empty SETTINGS frame: a complete HTTP/2 handshake
/// from the client's side.
fn h2_handshake() -> Vec<u8> {
    let mut out = H2_PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// Reads frames until a GOAWAY and returns its error code; `None` when
/// the connection closes without one or `limit` passes.
async fn goaway_code<R: AsyncRead + Unpin>(stream: &mut R, limit: Duration) -> Option<u32> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == GOAWAY && len >= 8 {
                return Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// 512 streams, each opened (`GET /get`, HPACK static indices) and reset
/// at once, in one write.
fn rapid_resets() -> Vec<u8> {
    let mut out = h2_handshake();
    for i in 0..512u32 {
        let id = 2 * i + 1;
        out.extend(frame(HEADERS, END_STREAM_AND_HEADERS, id, GET_BLOCK));
        // CANCEL
        out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    out
}

// === Settings ===

#[test]
fn connection_settings_that_cannot_work_are_refused_by_name() {
    rejected(
        "settings:
  first_byte_timeout: 0s
  idle_timeout: 2h
  admin_header_read_timeout: 0s
  max_connections: 0
  admin_max_connections: 0
",
        &[
            "settings.first_byte_timeout: must be greater than zero",
            "settings.idle_timeout: must be at most 1h",
            "settings.admin_header_read_timeout: must be greater than zero",
            "settings.max_connections: must be between 1 and 10000000",
            "settings.admin_max_connections: must be between 1 and 10000000",
        ],
    );
}

// === Timeouts ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_closed_within_the_header_timeout_while_others_are_served() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "").await;
    let addr = gw.proxy_addr();
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /get HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Normal clients are served while the 500 hold their heads open.
    let c = http_client();
    for _ in 0..20 {
        let r = c.get(gw.url("/get")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Every slow connection is closed by its head deadline (1 s from its
    // first byte), however many there are.
    let limit = started.elapsed() + Duration::from_secs(1) + MARGIN;
    let closes = slow.iter_mut().map(|s| closed_within(s, started, limit));
    let took = futures_util::future::join_all(closes).await;
    let slowest = took.iter().max().unwrap();
    assert!(*slowest < limit, "slowest close after {slowest:?}");
    // And the gateway still serves.
    assert_eq!(c.get(gw.url("/get")).send().await.unwrap().status(), 200);
    assert_logged(
        &gw,
        "the request head took longer than the header read timeout",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_a_partial_http2_preface_are_closed() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "").await;
    let addr = gw.proxy_addr();

    // Never a byte: closed at the first-byte deadline.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut silent, started, Duration::from_secs(1) + MARGIN).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed early, after {took:?}"
    );

    // Half a preface: closed at the head deadline.
    let started = Instant::now();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(&H2_PREFACE[..10]).await.unwrap();
    closed_within(&mut partial, started, Duration::from_secs(1) + MARGIN).await;

    // The whole preface but no SETTINGS frame: still a head.
    let started = Instant::now();
    let mut no_settings = TcpStream::connect(addr).await.unwrap();
    no_settings.write_all(H2_PREFACE).await.unwrap();
    closed_within(&mut no_settings, started, Duration::from_secs(1) + MARGIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway_after_the_idle_timeout_pings_or_not() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "").await;
    let mut s = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    s.write_all(&h2_handshake()).await.unwrap();
    let started = Instant::now();
    // A PING every 200 ms: control frames do not keep a connection with
    // no stream open alive (a PING flood is bounded by the idle timeout).
    let (mut rd, mut wr) = s.into_split();
    let pinger = tokio::spawn(async move {
        let mut n = 0u64;
        while wr
            .write_all(&frame(PING, 0, 0, &n.to_be_bytes()))
            .await
            .is_ok()
        {
            n += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        n
    });
    let code = goaway_code(&mut rd, Duration::from_secs(2) + MARGIN)
        .await
        .expect("GOAWAY within the idle timeout");
    assert_eq!(code, 0, "an idle close is NO_ERROR");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "GOAWAY early, after {took:?}"
    );
    let pings = pinger.await.unwrap();
    assert!(pings >= 5, "only {pings} PINGs were sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "").await;
    let stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    let mut raw = RawHttp::from_stream(stream);
    raw.send("GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw.read_response().await.unwrap().status, 200);
    let idle_from = Instant::now();
    let mut stream = raw.into_inner();
    let took = closed_within(&mut stream, idle_from, Duration::from_secs(2) + MARGIN).await;
    // The idle timeout (2 s), not the head timeout (1 s), applies between
    // requests.
    assert!(took >= Duration::from_millis(1800), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_of_its_response_is_closed() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "").await;
    let mut s = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    // 1 GB that the client never reads: the socket buffers fill, and then
    // nothing moves.
    s.write_all(b"GET /bytes/1000000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let stalled = "the client read nothing of its response for longer than the idle timeout";
    wait_until(
        "the stalled connection is closed",
        Duration::from_secs(2) + MARGIN + Duration::from_secs(3),
        || async { gw.log().contains(stalled) },
    )
    .await;
    // What had reached our socket is still readable; then it ends.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(MARGIN, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("still open after {total} bytes"),
        }
    }
    assert!(total < 100_000_000, "{total} bytes");
    assert_eq!(
        http_client()
            .get(gw.url("/get"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_carries_at_most_max_requests() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "  max_requests_per_connection: 3\n").await;
    let stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    let mut raw = RawHttp::from_stream(stream);
    for i in 1..=3 {
        raw.send("GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = raw.read_response().await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection") == Some("close"),
            i == 3,
            "{i}: {r:?}"
        );
    }
    let mut stream = raw.into_inner();
    closed_within(&mut stream, Instant::now(), MARGIN).await;

    // HTTP/2: GOAWAY (NO_ERROR) once the third stream is in.
    let mut s = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    let mut out = h2_handshake();
    for id in [1, 3, 5] {
        out.extend(frame(HEADERS, END_STREAM_AND_HEADERS, id, GET_BLOCK));
    }
    s.write_all(&out).await.unwrap();
    assert_eq!(goaway_code(&mut s, MARGIN).await, Some(0));
}

// === Caps ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_connections_are_refused_while_the_admin_port_answers() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "  max_connections: 5\n  idle_timeout: 30s\n").await;
    let addr = gw.proxy_addr();
    // Five established connections, each served once and kept alive.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut raw = RawHttp::from_stream(TcpStream::connect(addr).await.unwrap());
        raw.send("GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(raw.read_response().await.unwrap().status, 200);
        held.push(raw);
    }
    // The sixth is accepted and closed at once.
    for _ in 0..3 {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        closed_within(&mut s, started, Duration::from_millis(900)).await;
    }
    assert!(!answered(TcpStream::connect(addr).await.unwrap()).await);
    // The admin port answers, and the established ones are still served.
    assert!(admin_answers(&gw).await);
    for raw in &mut held {
        raw.send("GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(raw.read_response().await.unwrap().status, 200);
    }
    // A closed one makes room again.
    drop(held.pop());
    wait_until("a place frees up", Duration::from_secs(5), || async {
        answered(TcpStream::connect(addr).await.unwrap()).await
    })
    .await;
    assert_logged(
        &gw,
        "connection refused: the listener holds its cap of 5 connections",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_keeps_its_place_under_the_cap() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start("ws").await;
    let gw = gateway_with(&up, "  max_connections: 1\n").await;
    let addr = gw.proxy_addr();
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("upgrade through weir");
    assert_eq!(resp.status(), 101);
    // The upgraded connection still holds the only place...
    assert!(!answered(TcpStream::connect(addr).await.unwrap()).await);
    ws.send(Message::text("still here")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "still here");
    // ...until it closes.
    ws.close(None).await.unwrap();
    drop(ws);
    wait_until(
        "the tunnel's place frees up",
        Duration::from_secs(5),
        || async { answered(TcpStream::connect(addr).await.unwrap()).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_at_its_cap_does_not_keep_another_ip_out() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "  max_connections_per_ip: 3\n  idle_timeout: 30s\n").await;
    let addr = gw.proxy_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut raw = RawHttp::from_stream(connect_from([127, 0, 0, 2], addr).await.unwrap());
        raw.send("GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(raw.read_response().await.unwrap().status, 200);
        held.push(raw);
    }
    assert!(!answered(connect_from([127, 0, 0, 2], addr).await.unwrap()).await);
    assert!(answered(connect_from([127, 0, 0, 3], addr).await.unwrap()).await);
    assert!(answered(connect_from([127, 0, 0, 1], addr).await.unwrap()).await);
    assert_logged(&gw, "the client IP holds its cap of 3 connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_closes_a_dribbled_head_and_keeps_its_own_budget() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "  admin_max_connections: 4\n").await;
    let admin = gw.admin_addr();

    // A head dribbled one byte every 300 ms: closed at the head deadline
    // (1 s), however steadily it trickles.
    let started = Instant::now();
    let s = TcpStream::connect(admin).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let dribble = tokio::spawn(async move {
        for b in b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(1) + MARGIN, rd.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "admin connection still open after {:?}",
        started.elapsed()
    );
    dribble.abort();

    // Its own budget: four silent connections fill it; the proxy is
    // unaffected, and the admin port answers again once they time out.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    wait_until(
        "the admin budget is full",
        Duration::from_secs(2),
        || async { !admin_answers(&gw).await },
    )
    .await;
    assert_eq!(
        http_client()
            .get(gw.url("/get"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wait_until(
        "the admin port answers once the silent ones time out",
        Duration::from_secs(1) + MARGIN,
        || async { admin_answers(&gw).await },
    )
    .await;
}

// === HTTP/2 abuse and the log ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_and_a_flood_of_them_a_bounded_log() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "").await;
    let addr = gw.proxy_addr();
    let c = h2c_client();

    let attack = rapid_resets();
    let mut attacks = 0;
    let reset = |attack: Vec<u8>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The gateway may close while we still write: that is the point.
        let _ = s.write_all(&attack).await;
        goaway_code(&mut s, Duration::from_secs(5)).await
    };
    // Each attacking connection gets GOAWAY ENHANCE_YOUR_CALM, and a
    // well-behaved client on its own connection is served meanwhile.
    for _ in 0..30 {
        assert_eq!(reset(attack.clone()).await, Some(ENHANCE_YOUR_CALM));
        attacks += 1;
        assert_eq!(c.get(gw.url("/get")).send().await.unwrap().status(), 200);
    }
    // One line per 10 s, whatever the flood: the next one after the
    // interval carries the count of those left out.
    let deadline = Instant::now() + Duration::from_secs(15);
    let warning = "closed an HTTP/2 connection with GOAWAY";
    loop {
        let log = gw.log();
        let lines: Vec<_> = log.lines().filter(|l| l.contains(warning)).collect();
        if lines.len() >= 2 {
            assert_eq!(lines.len(), 2, "{log}");
            assert!(lines[0].contains("similar_suppressed=0"), "{log}");
            let counted = lines[1]
                .split("similar_suppressed=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count: {}", lines[1]));
            assert!((1..attacks).contains(&counted), "{counted} of {attacks}");
            break;
        }
        assert!(Instant::now() < deadline, "no second line: {log}");
        assert_eq!(lines.len(), 1, "{log}");
        assert_eq!(reset(attack.clone()).await, Some(ENHANCE_YOUR_CALM));
        attacks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // h2's own per-connection warning stays out of the log.
    assert!(!gw.log().contains("reached limit"), "{}", gw.log());
    assert_eq!(c.get(gw.url("/get")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_and_made_you_reset_get_goaway() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(&up, "").await;
    let addr = gw.proxy_addr();

    // A header block that never ends: CONTINUATION after CONTINUATION.
    let mut flood = h2_handshake();
    flood.extend(frame(HEADERS, 0, 1, GET_BLOCK));
    for _ in 0..64 {
        flood.extend(frame(CONTINUATION, 0, 1, &[0x40, 0x01, b'a', 0x01, b'b']));
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&flood).await;
    assert_eq!(
        goaway_code(&mut s, Duration::from_secs(5)).await,
        Some(ENHANCE_YOUR_CALM)
    );

    // MadeYouReset: streams the server must reset itself, each declaring
    // `content-length: 0` and then sending a byte of body.
    let mut block = GET_BLOCK.to_vec();
    block.extend_from_slice(&[0x5c, 0x01, b'0']);
    let mut made = h2_handshake();
    for i in 0..1100u32 {
        let id = 2 * i + 1;
        made.extend(frame(HEADERS, 0x4, id, &block));
        made.extend(frame(DATA, 0, id, b"x"));
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&made).await;
    assert_eq!(
        goaway_code(&mut s, Duration::from_secs(10)).await,
        Some(ENHANCE_YOUR_CALM)
    );

    // Other clients are served throughout.
    let c = h2c_client();
    assert_eq!(c.get(gw.url("/get")).send().await.unwrap().status(), 200);
}

// === File descriptors ===

/// The hard `nofile` limit of this process (inherited by the gateway).
fn hard_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

/// Starts weir after `ulimit {ulimit}` in a shell (the script lives in
/// `dir`).
async fn gateway_under_ulimit(dir: &std::path::Path, ulimit: &str, up: &Upstream) -> Gateway {
    let script = dir.join("ulimit.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nulimit {ulimit}\nexec \"{}\" \"$@\"\n",
            weir_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = format!("{SHORT}{}", one_upstream(&[up.target()], ""));
    Gateway::builder(&script)
        .config(Gateway::config(&yaml))
        .start()
        .await
        .expect("weir starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_fd_limit_is_raised_to_the_hard_limit_at_start() {
    let hard = hard_nofile();
    let up = Upstream::start("a").await;
    // Start weir with a low soft limit, the way a default shell does.
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_under_ulimit(dir.path(), "-Sn 256", &up).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(soft, hard, "{limits}");
    let log = gw.log();
    assert!(log.contains(&format!("fd_limit={hard}")), "{log}");
    assert!(log.contains("proxy_connections="), "{log}");
    assert_eq!(
        http_client()
            .get(gw.url("/get"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_accepts_pause_and_warn_once_then_recover() {
    let up = Upstream::start("a").await;
    // A hard limit of 64: the admin budget (256) is more than the process
    // can open, so a burst of admin connections runs it out of fds.
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_under_ulimit(dir.path(), "-n 64", &up).await;
    let admin = gw.admin_addr();
    let mut held = Vec::new();
    for _ in 0..100 {
        // The kernel completes connections into the backlog even while
        // weir cannot accept them.
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    wait_until("an accept fails", Duration::from_secs(5), || async {
        gw.log().contains("accept failed")
    })
    .await;
    drop(held);
    // The silent connections it did accept time out (1 s), the rest are
    // gone: the admin port answers again.
    wait_until(
        "the admin port answers again",
        Duration::from_secs(10),
        || async { admin_answers(&gw).await },
    )
    .await;
    assert_eq!(
        http_client()
            .get(gw.url("/get"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // However many accepts failed, one line said so (the interval is
    // 10 s, longer than this test).
    let log = gw.log();
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
    assert!(log.contains("similar_suppressed=0"), "{log}");
}
