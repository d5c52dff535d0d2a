//! The TCP fault proxy on real loopback sockets: clean forwarding, each
//! toxic (latency with jitter, bandwidth, reset, blackhole, slicer) in the
//! direction it names, live changes, and partitions by source.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use weir_faultproxy::{Direction, Partition, Proxy, ProxyConfig, Source, Stream, Toxic, ToxicKind};

mod common;

use common::{LOCAL, tcp_echo as echo};

/// An upstream that sends `n` bytes to each client, then closes.
async fn source(n: usize) -> SocketAddr {
    let l = TcpListener::bind(LOCAL).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let _ = s.write_all(&data).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    Proxy::tcp(ProxyConfig::new("t", LOCAL.parse().expect("addr"), Some(upstream)).seed(42))
        .await
        .expect("proxy starts")
}

/// Writes `msg` and reads the same number of bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("answer within 10 s")
        .expect("read");
    back
}

/// Whether anything arrives within `d`.
async fn silent_for(s: &mut TcpStream, d: Duration) -> bool {
    let mut b = [0u8; 64];
    tokio::time::timeout(d, s.read(&mut b)).await.is_err()
}

#[tokio::test]
async fn forwards_both_ways_and_counts() {
    let p = proxy(echo().await).await;
    let mut c = TcpStream::connect(p.listen_addr()).await.expect("connect");
    assert_eq!(round_trip(&mut c, b"hello").await, b"hello");
    let h = p.handle();
    assert_eq!(h.stats().connections, 1);
    // A write is counted just after it is made.
    let end = Instant::now() + Duration::from_secs(10);
    while (h.stats().upstream.bytes, h.stats().downstream.bytes) != (5, 5) {
        assert!(Instant::now() < end, "{:?}", h.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn latency_with_jitter_delays_one_direction_and_changes_live() {
    let p = proxy(echo().await).await;
    let h = p.handle();
    let mut c = TcpStream::connect(p.listen_addr()).await.expect("connect");
    round_trip(&mut c, b"warm").await;
    h.add_toxic(Toxic::new(
        "lag",
        Stream::Downstream,
        ToxicKind::Latency {
            latency_ms: 150,
            jitter_ms: 50,
        },
    ))
    .expect("add");
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        round_trip(&mut c, b"ping").await;
        let e = t.elapsed();
        // Never earlier than the latency minus the jitter.
        assert!(e >= Duration::from_millis(100), "{e:?}");
        slowest = slowest.max(e);
    }
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    // Moved to the other direction, then removed: both take effect at once.
    h.update_toxic(Toxic::new(
        "lag",
        Stream::Upstream,
        ToxicKind::Latency {
            latency_ms: 120,
            jitter_ms: 0,
        },
    ))
    .expect("update");
    let t = Instant::now();
    round_trip(&mut c, b"ping").await;
    assert!(t.elapsed() >= Duration::from_millis(120));
    h.remove_toxic("lag").expect("remove");
    assert!(h.toxics().is_empty());
}

#[tokio::test]
async fn bandwidth_caps_the_rate() {
    let p = proxy(source(100_000).await).await;
    p.handle()
        .add_toxic(Toxic::new(
            "slow",
            Stream::Downstream,
            ToxicKind::Bandwidth {
                bytes_per_sec: 100_000,
            },
        ))
        .expect("add");
    let mut c = TcpStream::connect(p.listen_addr()).await.expect("connect");
    let t = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut got))
        .await
        .expect("done within 20 s")
        .expect("read");
    let e = t.elapsed();
    assert_eq!(got.len(), 100_000);
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    // 100 kB at 100 kB/s, less the first twentieth of a second sent at once.
    assert!(e >= Duration::from_millis(900), "{e:?}");
}

#[tokio::test]
async fn reset_cuts_the_connection_mid_stream() {
    let p = proxy(source(50_000).await).await;
    p.handle()
        .add_toxic(Toxic::new(
            "rst",
            Stream::Downstream,
            ToxicKind::Reset { after_bytes: 1000 },
        ))
        .expect("add");
    let mut c = TcpStream::connect(p.listen_addr()).await.expect("connect");
    let mut got = 0usize;
    let mut buf = [0u8; 4096];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("no hang")
        {
            Ok(0) => break None,
            Ok(n) => got += n,
            Err(e) => break Some(e.kind()),
        }
    };
    assert_eq!(got, 1000, "exactly the bytes before the reset");
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(p.handle().stats().resets, 1);
}

#[tokio::test]
async fn blackhole_accepts_and_never_answers_until_removed() {
    let p = proxy(echo().await).await;
    let h = p.handle();
    h.add_toxic(Toxic::new("hole", Stream::Upstream, ToxicKind::Blackhole))
        .expect("add");
    let mut c = TcpStream::connect(p.listen_addr())
        .await
        .expect("the proxy accepts");
    c.write_all(b"lost").await.expect("write");
    assert!(silent_for(&mut c, Duration::from_millis(300)).await);
    assert!(h.stats().dropped.blackhole >= 1);
    h.remove_toxic("hole").expect("remove");
    assert_eq!(round_trip(&mut c, b"found").await, b"found");
}

#[tokio::test]
async fn slicer_cuts_writes_into_delayed_slices() {
    let p = proxy(echo().await).await;
    p.handle()
        .add_toxic(Toxic::new(
            "cut",
            Stream::Downstream,
            ToxicKind::Slicer {
                average_size: 10,
                size_variation: 0,
                delay_us: 20_000,
            },
        ))
        .expect("add");
    let mut c = TcpStream::connect(p.listen_addr()).await.expect("connect");
    let msg: Vec<u8> = (0..100u8).collect();
    let t = Instant::now();
    assert_eq!(round_trip(&mut c, &msg).await, msg);
    // Ten slices, nine pauses of 20 ms between them.
    assert!(
        t.elapsed() >= Duration::from_millis(180),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(p.handle().stats().slices, 10);
}

#[tokio::test]
async fn a_partition_cuts_a_source_and_heals() {
    let p = proxy(echo().await).await;
    let h = p.handle();
    let mut a = TcpStream::connect(p.listen_addr()).await.expect("a");
    round_trip(&mut a, b"hi").await;
    let a_addr = a.local_addr().expect("addr");
    // One way: what goes back to `a` is dropped, what it sends arrives.
    h.partition(
        "a-deaf",
        Partition::sources([Source::Addr(a_addr)]).one_way(Direction::Downstream),
    )
    .expect("partition");
    let up_before = h.stats().upstream.bytes;
    a.write_all(b"x").await.expect("write");
    assert!(silent_for(&mut a, Duration::from_millis(300)).await);
    assert_eq!(
        h.stats().upstream.bytes,
        up_before + 1,
        "the upstream heard"
    );
    // Another client is not cut off.
    let mut b = TcpStream::connect(p.listen_addr()).await.expect("b");
    assert_eq!(round_trip(&mut b, b"ok").await, b"ok");
    h.heal("a-deaf").expect("heal");
    assert_eq!(round_trip(&mut a, b"back").await, b"back");

    // The whole proxy, both ways: a new client is accepted but never
    // reaches the upstream until the cut heals.
    h.partition("all", Partition::whole()).expect("partition");
    let mut c = TcpStream::connect(p.listen_addr()).await.expect("c");
    c.write_all(b"held").await.expect("write");
    assert!(silent_for(&mut c, Duration::from_millis(300)).await);
    assert!(h.heal("nope").is_err());
    h.heal("all").expect("heal");
    // What it wrote while held waited in its socket and follows now.
    c.write_all(b"again").await.expect("write");
    let mut back = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
        .await
        .expect("answer within 10 s")
        .expect("read");
    assert_eq!(&back, b"heldagain");
}
