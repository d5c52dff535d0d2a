//! The UDP fault proxy on real loopback sockets: per-client sessions,
//! latency with jitter, loss (seeded, within bounds), bandwidth,
//! blackhole, bounded queues, idle expiry, partitions symmetric and
//! one-way, and a late upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use weir_faultproxy::{Direction, Partition, Proxy, ProxyConfig, Source, Stream, Toxic, ToxicKind};

const LOCAL: &str = "127.0.0.1:0";
const DEADLINE: Duration = Duration::from_secs(10);

/// An upstream that answers each datagram with `SOURCE|payload`, and
/// counts what it received.
async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
    let s = UdpSocket::bind(LOCAL).await.expect("bind");
    let addr = s.local_addr().expect("addr");
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut reply = format!("{from}|").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    });
    (addr, seen)
}

fn cfg(upstream: Option<SocketAddr>) -> ProxyConfig {
    ProxyConfig::new("u", LOCAL.parse().expect("addr"), upstream).seed(7)
}

async fn client() -> UdpSocket {
    UdpSocket::bind(LOCAL).await.expect("bind")
}

/// The next datagram within `d`, as text.
async fn recv_within(s: &UdpSocket, d: Duration) -> Option<String> {
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(d, s.recv(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

async fn ask(s: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    s.send_to(msg.as_bytes(), to).await.expect("send");
    recv_within(s, DEADLINE).await.expect("an answer")
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_client_gets_its_own_session_and_its_own_replies() {
    let (up, _) = echo().await;
    let p = Proxy::udp(cfg(Some(up))).await.expect("proxy");
    let (a, b) = (client().await, client().await);
    let ra = ask(&a, p.listen_addr(), "from-a").await;
    let rb = ask(&b, p.listen_addr(), "from-b").await;
    assert!(
        ra.ends_with("|from-a") && rb.ends_with("|from-b"),
        "{ra} {rb}"
    );
    // The upstream saw two different sources, neither of them a client's.
    let (sa, sb) = (ra.split('|').next(), rb.split('|').next());
    assert_ne!(sa, sb);
    assert_ne!(sa, Some(a.local_addr().expect("a").to_string().as_str()));
    // Later datagrams of a client reuse its session.
    let again = ask(&a, p.listen_addr(), "again").await;
    assert_eq!(again.split('|').next(), sa);
    let h = p.handle();
    assert_eq!((h.stats().connections, h.stats().open), (2, 2));
    // A reply is counted just after it is sent.
    wait("three each way", || {
        let s = h.stats();
        (s.upstream.packets, s.downstream.packets) == (3, 3)
    })
    .await;
}

#[tokio::test]
async fn latency_with_jitter_delays_each_datagram_within_bounds() {
    let (up, _) = echo().await;
    let p = Proxy::udp(cfg(Some(up))).await.expect("proxy");
    p.handle()
        .add_toxic(Toxic::new(
            "lag",
            Stream::Upstream,
            ToxicKind::Latency {
                latency_ms: 60,
                jitter_ms: 40,
            },
        ))
        .expect("add");
    let c = client().await;
    for i in 0..10 {
        let t = Instant::now();
        ask(&c, p.listen_addr(), &format!("m{i}")).await;
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(20), "{e:?}");
        assert!(e < Duration::from_secs(5), "{e:?}");
    }
}

#[tokio::test]
async fn loss_drops_about_its_share_seeded() {
    let (up, seen) = echo().await;
    let p = Proxy::udp(cfg(Some(up))).await.expect("proxy");
    let h = p.handle();
    h.add_toxic(Toxic::new(
        "drop",
        Stream::Upstream,
        ToxicKind::Loss { probability: 0.3 },
    ))
    .expect("add");
    let c = client().await;
    const N: u64 = 2000;
    send_paced(&c, p.listen_addr(), N).await;
    wait("every datagram handled", || {
        let s = h.stats();
        s.dropped.loss + s.upstream.packets == N
    })
    .await;
    let lost = h.stats().dropped.loss;
    // Binomial(2000, 0.3): mean 600, sd 20.5; ±150 is over 7 sd.
    assert!((450..=750).contains(&lost), "lost {lost}");
    wait("the upstream got the rest", || {
        seen.load(Ordering::Relaxed) == N - lost
    })
    .await;
}

#[tokio::test]
async fn bandwidth_paces_datagrams() {
    let (up, seen) = echo().await;
    let p = Proxy::udp(cfg(Some(up))).await.expect("proxy");
    p.handle()
        .add_toxic(Toxic::new(
            "thin",
            Stream::Upstream,
            ToxicKind::Bandwidth {
                bytes_per_sec: 20_000,
            },
        ))
        .expect("add");
    let c = client().await;
    let t = Instant::now();
    let payload = vec![b'x'; 1000];
    for _ in 0..20 {
        c.send_to(&payload, p.listen_addr()).await.expect("send");
    }
    wait("all 20 arrive", || seen.load(Ordering::Relaxed) == 20).await;
    // 20 kB at 20 kB/s: the last leaves no earlier than 19 × 50 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn blackhole_drops_until_removed() {
    let (up, _) = echo().await;
    let p = Proxy::udp(cfg(Some(up))).await.expect("proxy");
    let h = p.handle();
    h.add_toxic(Toxic::new("hole", Stream::Downstream, ToxicKind::Blackhole))
        .expect("add");
    let c = client().await;
    c.send_to(b"lost", p.listen_addr()).await.expect("send");
    assert_eq!(recv_within(&c, Duration::from_millis(300)).await, None);
    wait("the drop is counted", || h.stats().dropped.blackhole == 1).await;
    h.remove_toxic("hole").expect("remove");
    assert!(ask(&c, p.listen_addr(), "found").await.ends_with("|found"));
}

#[tokio::test]
async fn a_slow_link_drops_beyond_its_queue_and_counts() {
    let (up, seen) = echo().await;
    let p = Proxy::udp(cfg(Some(up)).queue_packets(16))
        .await
        .expect("proxy");
    let h = p.handle();
    h.add_toxic(Toxic::new(
        "stall",
        Stream::Upstream,
        ToxicKind::Latency {
            latency_ms: 60_000,
            jitter_ms: 0,
        },
    ))
    .expect("add");
    let c = client().await;
    send_paced(&c, p.listen_addr(), 100).await;
    wait("every datagram queued or dropped", || {
        h.stats().dropped.queue_full == 84
    })
    .await;
    assert_eq!(seen.load(Ordering::Relaxed), 0, "none is due yet");
}

#[tokio::test]
async fn idle_sessions_expire_and_come_back() {
    let (up, _) = echo().await;
    let p = Proxy::udp(cfg(Some(up)).idle_timeout(Duration::from_millis(200)))
        .await
        .expect("proxy");
    let h = p.handle();
    let c = client().await;
    let first = ask(&c, p.listen_addr(), "one").await;
    wait("the session expires", || h.stats().expired == 1).await;
    assert_eq!(h.stats().open, 0);
    let second = ask(&c, p.listen_addr(), "two").await;
    assert_ne!(
        first.split('|').next(),
        second.split('|').next(),
        "a new session socket"
    );
    assert_eq!(h.stats().connections, 2);
}

#[tokio::test]
async fn sessions_are_bounded() {
    let (up, _) = echo().await;
    let p = Proxy::udp(cfg(Some(up)).max_sessions(1))
        .await
        .expect("proxy");
    let (a, b) = (client().await, client().await);
    ask(&a, p.listen_addr(), "a").await;
    b.send_to(b"b", p.listen_addr()).await.expect("send");
    let h = p.handle();
    wait("the second client is refused", || {
        h.stats().dropped.sessions_full == 1
    })
    .await;
}

/// `a` hears nothing back; `b` is not cut off.
async fn partition_case(to: SocketAddr, a: &UdpSocket, b: &UdpSocket) {
    a.send_to(b"a", to).await.expect("send");
    assert_eq!(recv_within(a, Duration::from_millis(300)).await, None);
    assert!(ask(b, to, "b").await.ends_with("|b"));
}

/// Sends `n` numbered datagrams, paced so that no socket buffer on the
/// way overflows (the kernel would drop them, not the proxy).
async fn send_paced(c: &UdpSocket, to: SocketAddr, n: u64) {
    for i in 0..n {
        c.send_to(format!("{i}").as_bytes(), to)
            .await
            .expect("send");
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test]
async fn partitions_cut_sources_both_ways_or_one_way_and_heal() {
    let (up, seen) = echo().await;
    let p = Proxy::udp(cfg(Some(up))).await.expect("proxy");
    let h = p.handle();
    let to = p.listen_addr();
    let (a, b) = (client().await, client().await);
    ask(&a, to, "hi").await;
    let a_src = Source::Addr(a.local_addr().expect("a"));

    // Symmetric.
    h.partition("a", Partition::sources([a_src])).expect("cut");
    let before = seen.load(Ordering::Relaxed);
    partition_case(to, &a, &b).await;
    assert_eq!(seen.load(Ordering::Relaxed), before + 1, "only b arrived");

    // One way, upstream: a cannot reach the upstream.
    h.partition(
        "a",
        Partition::sources([a_src]).one_way(Direction::Upstream),
    )
    .expect("cut");
    let before = seen.load(Ordering::Relaxed);
    partition_case(to, &a, &b).await;
    assert_eq!(seen.load(Ordering::Relaxed), before + 1, "only b arrived");

    // One way, downstream: the upstream hears a, a never hears back.
    h.partition(
        "a",
        Partition::sources([a_src]).one_way(Direction::Downstream),
    )
    .expect("cut");
    let before = seen.load(Ordering::Relaxed);
    partition_case(to, &a, &b).await;
    wait("a and b arrived", || {
        seen.load(Ordering::Relaxed) == before + 2
    })
    .await;

    // The whole proxy.
    h.partition("a", Partition::whole()).expect("cut");
    b.send_to(b"b", to).await.expect("send");
    assert_eq!(recv_within(&b, Duration::from_millis(300)).await, None);

    h.heal("a").expect("heal");
    assert!(ask(&a, to, "healed").await.ends_with("|healed"));
    assert!(h.stats().dropped.partition >= 4);
}

#[tokio::test]
async fn a_proxy_without_upstream_drops_until_one_is_set() {
    let (up, _) = echo().await;
    let p = Proxy::udp(cfg(None)).await.expect("proxy");
    let h = p.handle();
    let c = client().await;
    c.send_to(b"early", p.listen_addr()).await.expect("send");
    wait("the drop is counted", || h.stats().dropped.no_upstream == 1).await;
    h.set_upstream(up);
    assert!(ask(&c, p.listen_addr(), "late").await.ends_with("|late"));
}

#[tokio::test]
async fn the_same_seed_makes_the_same_choices() {
    async fn lost(seed: u64) -> u64 {
        let (up, _) = echo().await;
        let p = Proxy::udp(cfg(Some(up)).seed(seed)).await.expect("proxy");
        let h = p.handle();
        h.add_toxic(Toxic::new(
            "drop",
            Stream::Upstream,
            ToxicKind::Loss { probability: 0.5 },
        ))
        .expect("add");
        let c = client().await;
        send_paced(&c, p.listen_addr(), 200).await;
        wait("all handled", || {
            let s = h.stats();
            s.dropped.loss + s.upstream.packets == 200
        })
        .await;
        h.stats().dropped.loss
    }
    assert_eq!(lost(99).await, lost(99).await);
}
