//! The mesh over real loopback sockets: links, requests and datagrams,
//! dedupe, reconnection, bounded queues, timeouts, and every way a peer or
//! a frame is refused (another cluster, a key that does not match the pin,
//! a forged sender, a replayed sequence number, replayed UDP packets, and
//! malformed input from a client that holds valid credentials).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use weir_mesh::frame::{FLAG_RESPONSE, VERSION};
use weir_mesh::stats::MeshCounters;
use weir_mesh::{
    Frame, Identity, LinkState, MAX_FRAME, Mesh, MeshConfig, MeshSnapshot, PeerSpec, SendError,
};

const DEADLINE: Duration = Duration::from_secs(20);
const ECHO: u16 = 1;
const TICK: u16 = 2;

fn config(id: &str) -> MeshConfig {
    let mut c = MeshConfig::new(
        Identity::generate(id).expect("identity"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    c.keep_alive = Duration::from_millis(300);
    c.idle_timeout = Duration::from_secs(3);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c
}

fn node(id: &str) -> Mesh {
    let m = Mesh::start(config(id)).expect("mesh starts");
    let me = id.to_string();
    m.on_request(ECHO, move |inb| {
        let me = me.clone();
        async move {
            if inb.body.as_ref() == b"fail" {
                return Err("asked to fail".to_string());
            }
            Ok(Bytes::from(format!(
                "{me} got {} from {}",
                String::from_utf8_lossy(&inb.body),
                inb.from
            )))
        }
    });
    m
}

fn spec(m: &Mesh) -> PeerSpec {
    PeerSpec {
        node_id: m.identity().node_id().to_string(),
        addr: m.local_addr(),
        fingerprint: m.identity().fingerprint(),
    }
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state(m: &Mesh, peer: &str) -> Option<LinkState> {
    m.snapshot().peer(peer).map(|p| p.state)
}

fn connected(m: &Mesh, peer: &str) -> bool {
    state(m, peer) == Some(LinkState::Connected)
}

fn refused(s: &MeshSnapshot, reason: &str) -> u64 {
    s.refused_frames.get(reason).copied().unwrap_or(0)
}

fn handshakes(s: &MeshSnapshot, reason: &str) -> u64 {
    s.refused_handshakes.get(reason).copied().unwrap_or(0)
}

async fn pair() -> (Mesh, Mesh) {
    let a = node("a");
    let b = node("b");
    a.set_peers(vec![spec(&b), spec(&a)]);
    b.set_peers(vec![spec(&a), spec(&b)]);
    wait_for("a and b linked", || {
        connected(&a, "b") && connected(&b, "a")
    })
    .await;
    (a, b)
}

#[tokio::test]
async fn two_nodes_link_once_and_exchange_requests_and_datagrams() {
    let (a, b) = pair().await;
    // Both dialled; one connection survives on each side.
    wait_for("duplicates closed", || {
        a.open_connections() == 1 && b.open_connections() == 1
    })
    .await;
    assert_eq!(a.connected_peers(), ["b"]);
    // Hellos of the dials so far are frames too; count from here.
    let a0 = a.snapshot().peer("b").expect("b").clone();
    let b0 = b.snapshot().peer("a").expect("a").clone();

    let t = Duration::from_secs(5);
    let answer = a
        .request("b", ECHO, Bytes::from_static(b"hi"), t)
        .await
        .expect("answer");
    assert_eq!(answer.as_ref(), b"b got hi from a");
    let answer = b
        .request("a", ECHO, Bytes::from_static(b"yo"), t)
        .await
        .expect("answer");
    assert_eq!(answer.as_ref(), b"a got yo from b");
    assert_eq!(
        a.request("b", ECHO, Bytes::from_static(b"fail"), t).await,
        Err(SendError::Remote {
            peer: "b".into(),
            reason: "asked to fail".into()
        })
    );
    assert!(matches!(
        a.request("b", 99, Bytes::new(), t).await,
        Err(SendError::Remote { .. })
    ));
    assert_eq!(refused(&b.snapshot(), "unknown_kind"), 1);
    let unknown = a.request("nobody", ECHO, Bytes::new(), t).await;
    assert_eq!(unknown, Err(SendError::UnknownPeer("nobody".into())));
    assert!(!unknown.expect_err("unknown").is_retryable());
    assert!(SendError::NotConnected("b".into()).is_retryable());

    let ticks = Arc::new(AtomicUsize::new(0));
    let seen = ticks.clone();
    b.on_datagram(TICK, move |inb| {
        assert_eq!(inb.from, "a");
        seen.fetch_add(1, Ordering::Relaxed);
    });
    for i in 0..10u8 {
        a.send_datagram("b", TICK, Bytes::from(vec![i; 100]))
            .expect("queued");
    }
    wait_for("ten datagrams", || ticks.load(Ordering::Relaxed) == 10).await;
    assert!(matches!(
        a.send_datagram("b", TICK, Bytes::from(vec![0u8; 100_000])),
        Err(SendError::TooLarge(_))
    ));

    let sa = a.snapshot();
    let pb = sa.peer("b").expect("b listed");
    assert_eq!(pb.state, LinkState::Connected);
    assert!(pb.rtt_ms.is_some_and(|r| r >= 0.0), "{pb:?}");
    // 3 requests + 10 datagrams out, 3 answers + 1 request in.
    assert_eq!(pb.frames_out - a0.frames_out, 14, "{pb:?}");
    assert_eq!(pb.frames_in - a0.frames_in, 4, "{pb:?}");
    assert!(pb.bytes_out > 1000 && pb.bytes_in > 0, "{pb:?}");
    assert_eq!(pb.drops_by_reason["too_large"], 1, "{pb:?}");
    assert_eq!(pb.refused_frames, 0);
    assert_eq!(sa.refused_handshakes.values().sum::<u64>(), 0);
    let pa = b.snapshot();
    let pa = pa.peer("a").expect("a listed");
    assert_eq!(pa.frames_in - b0.frames_in, 14, "{pa:?}");
    assert_eq!(pa.reconnects, 0);
    a.close();
    b.close();
}

#[tokio::test]
async fn a_peer_that_comes_back_is_redialled_with_backoff() {
    let a = node("a");
    let b = node("b");
    // b does not know a yet, so it refuses a's dials: a backs off.
    a.set_peers(vec![spec(&b)]);
    wait_for("a refused and backing off", || {
        handshakes(&b.snapshot(), "unknown_node") >= 2 && state(&a, "b") == Some(LinkState::Backoff)
    })
    .await;
    b.set_peers(vec![spec(&a)]);
    wait_for("linked", || connected(&a, "b") && connected(&b, "a")).await;

    // b goes away; a new incarnation (new key, new port) is announced.
    b.close();
    wait_for("a sees the link down", || !connected(&a, "b")).await;
    let b2 = node("b");
    b2.set_peers(vec![spec(&a)]);
    a.set_peers(vec![spec(&b2)]);
    wait_for("relinked", || connected(&a, "b") && connected(&b2, "a")).await;
    let answer = a
        .request(
            "b",
            ECHO,
            Bytes::from_static(b"again"),
            Duration::from_secs(5),
        )
        .await
        .expect("answer");
    assert_eq!(answer.as_ref(), b"b got again from a");
    assert_eq!(a.snapshot().peer("b").expect("b").reconnects, 1);

    // A peer removed from the set is disconnected and forgotten.
    a.set_peers(vec![]);
    assert!(a.snapshot().peers.is_empty());
    wait_for("b2 sees a gone", || !connected(&b2, "a")).await;
    a.close();
    b2.close();
}

#[tokio::test]
async fn queues_are_bounded_and_drops_counted() {
    let mut ca = config("a");
    ca.datagram_queue = 1;
    ca.max_in_flight = 1;
    let a = Mesh::start(ca).expect("a");
    let b = node("b");
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(AtomicUsize::new(0));
    let (wait, inside) = (gate.clone(), entered.clone());
    b.on_request(3, move |_| {
        let wait = wait.clone();
        inside.fetch_add(1, Ordering::Relaxed);
        async move {
            wait.notified().await;
            Ok(Bytes::from_static(b"late"))
        }
    });
    a.set_peers(vec![spec(&b)]);
    b.set_peers(vec![spec(&a)]);
    wait_for("linked", || connected(&a, "b") && connected(&b, "a")).await;

    let mut full = 0u64;
    for _ in 0..1000 {
        match a.send_datagram("b", TICK, Bytes::from_static(b"x")) {
            Ok(()) => {}
            Err(SendError::QueueFull(_)) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full > 0);

    let a2 = a.clone();
    let pending = tokio::spawn(async move {
        a2.request("b", 3, Bytes::new(), Duration::from_secs(10))
            .await
    });
    wait_for("the first request in flight", || {
        entered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        a.request("b", 3, Bytes::new(), Duration::from_secs(1))
            .await,
        Err(SendError::QueueFull("b".into()))
    );
    gate.notify_one();
    assert_eq!(
        pending.await.expect("joined").expect("answer").as_ref(),
        b"late"
    );
    // No answer within the caller's timeout: a timeout, counted.
    assert!(matches!(
        a.request("b", 3, Bytes::new(), Duration::from_millis(200))
            .await,
        Err(SendError::Timeout { .. })
    ));
    let drops = a.snapshot().peer("b").expect("b").drops_by_reason.clone();
    assert_eq!(drops["queue_full"], full + 1, "{drops:?}");
    assert_eq!(drops["timeout"], 1, "{drops:?}");
    gate.notify_one();
    a.close();
    b.close();
}

#[tokio::test]
async fn a_node_without_a_pin_is_refused() {
    // `x` stands for a node of another cluster (another secret): its
    // identity never reaches a's pins, because a cannot read its gossip.
    let a = node("a");
    let b = node("b");
    let x = node("x");
    a.set_peers(vec![spec(&b)]);
    b.set_peers(vec![spec(&a)]);
    x.set_peers(vec![spec(&a)]);
    wait_for("x refused at least twice", || {
        handshakes(&a.snapshot(), "unknown_node") >= 2
    })
    .await;
    wait_for("a and b linked", || connected(&a, "b")).await;
    assert!(!connected(&x, "a"));
    assert!(a.snapshot().peer("x").is_none());
    assert_eq!(
        x.request("a", ECHO, Bytes::new(), Duration::from_secs(1))
            .await,
        Err(SendError::NotConnected("a".into()))
    );
    // Even under a member's node id, a key other than the pinned one is
    // refused.
    let fake_b = node("b");
    fake_b.set_peers(vec![spec(&a)]);
    wait_for("fake b refused", || {
        handshakes(&a.snapshot(), "identity_mismatch") >= 1
    })
    .await;
    assert!(!connected(&fake_b, "a"));
    for m in [a, b, x, fake_b] {
        m.close();
    }
}

#[tokio::test]
async fn a_peer_whose_gossip_identity_does_not_match_its_certificate_is_refused() {
    let a = node("a");
    let b = node("b");
    let other = Identity::generate("b").expect("another key for b");
    // a pins another key for b: a refuses b's certificate both when it
    // dials b and when b dials it.
    a.set_peers(vec![PeerSpec {
        fingerprint: other.fingerprint(),
        ..spec(&b)
    }]);
    b.set_peers(vec![spec(&a)]);
    wait_for("refused both ways", || {
        let s = a.snapshot();
        handshakes(&s, "identity_mismatch") >= 2
    })
    .await;
    assert!(!connected(&a, "b"));
    assert!(!connected(&b, "a"));
    // A certificate naming another node than the one dialled is refused
    // too: a pins `c`'s key under the id `b`.
    let c = node("c");
    a.set_peers(vec![PeerSpec {
        node_id: "b".into(),
        addr: c.local_addr(),
        fingerprint: c.identity().fingerprint(),
    }]);
    let before = handshakes(&a.snapshot(), "identity_mismatch");
    wait_for("c refused as b", || {
        handshakes(&a.snapshot(), "identity_mismatch") > before
    })
    .await;
    assert!(!connected(&a, "b"));
    // Once gossip says the truth, they link.
    a.set_peers(vec![spec(&b)]);
    wait_for("linked", || connected(&a, "b") && connected(&b, "a")).await;
    for m in [a, b, c] {
        m.close();
    }
}

/// A quinn client holding valid credentials (`r`, pinned at `a`), which
/// writes whatever bytes the test gives it.
async fn raw_client(a: &Mesh) -> (quinn::Endpoint, quinn::Connection, Identity) {
    let r = Identity::generate("r").expect("identity");
    let crypto = weir_mesh::tls::client_config(
        &r,
        "a",
        a.identity().fingerprint(),
        Arc::new(MeshCounters::default()),
    )
    .expect("tls");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let cfg = quinn::ClientConfig::new(Arc::new(crypto));
    // `a` must know `r` to accept it; its own dials to `r` go nowhere (the
    // raw endpoint does not serve), the incoming connection is the link.
    a.set_peers(vec![PeerSpec {
        node_id: "r".into(),
        addr: ep.local_addr().expect("addr"),
        fingerprint: r.fingerprint(),
    }]);
    let conn = ep
        .connect_with(cfg, a.local_addr(), weir_mesh::tls::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake with valid credentials");
    wait_for("a links r", || connected(a, "r")).await;
    (ep, conn, r)
}

/// Sends raw bytes on a new stream; the answer, or `None` when the stream
/// is reset (refused).
async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Option<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    // A refused frame may reset the stream before all of it is written.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    recv.read_to_end(MAX_FRAME).await.ok()
}

fn frame(sender: &str, seq: u64, body: &'static [u8]) -> Vec<u8> {
    Frame {
        flags: 0,
        kind: ECHO,
        seq,
        sender: sender.into(),
        body: Bytes::from_static(body),
    }
    .encode()
    .expect("encodes")
    .to_vec()
}

#[tokio::test]
async fn forged_replayed_and_malformed_frames_are_refused_and_counted() {
    let a = node("a");
    let (_ep, conn, _r) = raw_client(&a).await;

    // A well-formed request is answered.
    let answer = raw_request(&conn, &frame("r", 1, b"one"))
        .await
        .expect("answer");
    let answer = Frame::decode(Bytes::from(answer)).expect("answer decodes");
    assert_eq!(answer.flags, FLAG_RESPONSE);
    assert_eq!(answer.sender, "a");
    assert_eq!(answer.body.as_ref(), b"a got one from r");

    // Forged: claims to come from another member.
    assert_eq!(raw_request(&conn, &frame("b", 2, b"forged")).await, None);
    // Replayed: the sequence number of the first request again.
    assert_eq!(raw_request(&conn, &frame("r", 1, b"one")).await, None);
    // Malformed, unknown version, oversized.
    assert_eq!(raw_request(&conn, b"\x01\x00garbage").await, None);
    let mut v9 = frame("r", 3, b"x");
    v9[0] = 9;
    assert_eq!(raw_request(&conn, &v9).await, None);
    let mut huge = vec![VERSION; MAX_FRAME + 10];
    huge[1] = 0;
    assert_eq!(raw_request(&conn, &huge).await, None);
    // A malformed datagram and a forged one.
    conn.send_datagram(Bytes::from_static(b"\x01junk"))
        .expect("datagram");
    conn.send_datagram(Bytes::from(frame("b", 1, b"d")))
        .expect("datagram");

    wait_for("every refusal counted", || {
        let s = a.snapshot();
        refused(&s, "forged_sender") == 2
            && refused(&s, "replayed") == 1
            && refused(&s, "malformed") == 2
            && refused(&s, "unknown_version") == 1
            && refused(&s, "oversized") == 1
    })
    .await;
    assert_eq!(a.snapshot().peer("r").expect("r").refused_frames, 7);

    // The node keeps serving, on this connection and others.
    let answer = raw_request(&conn, &frame("r", 4, b"still"))
        .await
        .expect("answer");
    assert_eq!(
        Frame::decode(Bytes::from(answer))
            .expect("decodes")
            .body
            .as_ref(),
        b"a got still from r"
    );
    let b = node("b");
    let r_spec = a.snapshot().peer("r").map(|p| PeerSpec {
        node_id: "r".into(),
        addr: p.addr,
        fingerprint: p.fingerprint.parse().expect("fingerprint"),
    });
    a.set_peers(vec![spec(&b), r_spec.expect("r")]);
    b.set_peers(vec![spec(&a)]);
    wait_for("b linked", || connected(&b, "a")).await;
    let answer = b
        .request(
            "a",
            ECHO,
            Bytes::from_static(b"ok?"),
            Duration::from_secs(5),
        )
        .await
        .expect("answer");
    assert_eq!(answer.as_ref(), b"a got ok? from b");
    a.close();
    b.close();
}

/// A UDP relay between `b` and `a` that sends every packet twice and
/// keeps the ones from `b` to replay later.
struct Replayer {
    addr: SocketAddr,
    recorded: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    upstream: Arc<tokio::net::UdpSocket>,
    target: SocketAddr,
}

async fn replayer(target: SocketAddr) -> Replayer {
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let upstream = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, u, rec, cl) = (
        front.clone(),
        upstream.clone(),
        recorded.clone(),
        client.clone(),
    );
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *cl.lock().expect("lock") = Some(from);
            rec.lock().expect("lock").push(buf[..n].to_vec());
            for _ in 0..2 {
                let _ = u.send_to(&buf[..n], target).await;
            }
        }
    });
    let (f, u) = (front.clone(), upstream.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = u.recv_from(&mut buf).await {
            let to = *client.lock().expect("lock");
            if let Some(to) = to {
                for _ in 0..2 {
                    let _ = f.send_to(&buf[..n], to).await;
                }
            }
        }
    });
    Replayer {
        addr: front.local_addr().expect("addr"),
        recorded,
        upstream,
        target,
    }
}

#[tokio::test]
async fn udp_packets_replayed_through_a_proxy_deliver_nothing_twice() {
    let a = Mesh::start(config("a")).expect("a");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    a.on_request(ECHO, move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Ok(Bytes::from_static(b"ok")) }
    });
    let b = node("b");
    let proxy = replayer(a.local_addr()).await;
    // a dials b at an address where nothing answers, so the only link is
    // the one b dials through the proxy.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    a.set_peers(vec![PeerSpec {
        addr: silent.local_addr().expect("addr"),
        ..spec(&b)
    }]);
    b.set_peers(vec![PeerSpec {
        addr: proxy.addr,
        ..spec(&a)
    }]);
    wait_for("linked through the proxy", || {
        connected(&a, "b") && connected(&b, "a")
    })
    .await;
    let t = Duration::from_secs(5);
    for _ in 0..5 {
        b.request("a", ECHO, Bytes::from_static(b"x"), t)
            .await
            .expect("answer");
    }
    assert_eq!(calls.load(Ordering::Relaxed), 5);

    // Every packet b ever sent, replayed again at a.
    let packets = proxy.recorded.lock().expect("lock").clone();
    assert!(packets.len() > 10);
    for p in &packets {
        let _ = proxy.upstream.send_to(p, proxy.target).await;
    }
    // One more request, sent after the replay on the same path, is
    // answered; no replayed request ran again and nothing was refused:
    // QUIC discarded the copies below the frame layer.
    b.request("a", ECHO, Bytes::from_static(b"x"), t)
        .await
        .expect("answer after the replay");
    assert_eq!(calls.load(Ordering::Relaxed), 6);
    let s = a.snapshot();
    assert_eq!(s.refused_frames.values().sum::<u64>(), 0, "{s:?}");
    // Five requests, the one after the replay, and b's hello.
    assert_eq!(s.peer("b").expect("b").frames_in, 7);
    assert!(connected(&a, "b"));
    a.close();
    b.close();
}
