//! Gossip membership over an injected transport: real `Membership`
//! instances on loopback UDP, with link faults between them, and a tap that
//! shows the injected transport only ever carries sealed bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use weir_cluster::faults::{Faults, FaultyTransport};
use weir_cluster::gossip::{DatagramSocket, DatagramTransport, GossipTransport, Udp};
use weir_cluster::membership::{
    GossipTiming, Member, MemberState, Membership, MembershipConfig, NodeInfo,
};

/// The cluster name: every SYN carries it, uncompressed.
const CLUSTER: &str = "weir-gossip-fault-test";
const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

fn cfg(
    id: &str,
    seeds: &[&Membership],
    secret: Option<&str>,
    transport: GossipTransport,
) -> MembershipConfig {
    MembershipConfig {
        cluster_name: CLUSTER.into(),
        node_id: id.into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise_ip: None,
        seeds: seeds.iter().map(|m| m.gossip_addr().to_string()).collect(),
        secret: secret.map(|s| s.as_bytes().to_vec()),
        info: NodeInfo {
            region: format!("region-of-{id}"),
            ..NodeInfo::default()
        },
        // Fast rounds: a silent peer is declared dead after well under a
        // second, so the deadlines below are generous.
        timing: GossipTiming {
            gossip_interval: Duration::from_millis(50),
            initial_interval: Duration::from_millis(100),
            ..GossipTiming::default()
        },
        transport,
    }
}

fn state_of(ms: &[Member], id: &str) -> Option<MemberState> {
    ms.iter().find(|m| m.id == id).map(|m| m.state)
}

/// Waits until `viewer` sees each of `ids` in `state`.
async fn wait_for(viewer: &Membership, ids: &[&str], state: MemberState) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let members = viewer.members().await;
        if ids.iter().all(|id| state_of(&members, id) == Some(state)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not see {ids:?} {} within {DEADLINE:?}; members: {members:#?}",
            viewer.node_id(),
            state.as_str(),
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn a_cut_off_node_is_declared_dead_and_returns_when_healed() {
    let faults = Faults::default();
    let faulty = GossipTransport::new(FaultyTransport::new(Udp, faults.clone()));
    let secret = Some("a secret for the fault test");
    let a = Membership::start(cfg("a", &[], secret, faulty.clone()))
        .await
        .expect("a");
    let b = Membership::start(cfg("b", &[&a], secret, faulty.clone()))
        .await
        .expect("b");
    let c = Membership::start(cfg("c", &[&a], secret, faulty))
        .await
        .expect("c");
    for m in [&a, &b, &c] {
        wait_for(m, &["a", "b", "c"], MemberState::Alive).await;
    }

    // Heartbeats travel with gossip, so cutting one link is not enough: a
    // would still hear of c through b. Cut c off from both.
    faults.cut(c.gossip_addr(), a.gossip_addr());
    faults.cut(c.gossip_addr(), b.gossip_addr());
    wait_for(&a, &["c"], MemberState::Dead).await;
    wait_for(&b, &["c"], MemberState::Dead).await;
    wait_for(&c, &["a", "b"], MemberState::Dead).await;
    wait_for(&a, &["a", "b"], MemberState::Alive).await;
    assert!(faults.dropped() > 0);

    faults.heal_all();
    for m in [&a, &b, &c] {
        wait_for(m, &["a", "b", "c"], MemberState::Alive).await;
    }
    for m in [&a, &b, &c] {
        assert_eq!(m.stats().rejected_datagrams, 0, "{}", m.node_id());
    }
}

/// Records every datagram its sockets send.
#[derive(Clone, Default)]
struct Tap {
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Tap {
    fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().expect("tap").clone()
    }
}

#[async_trait]
impl DatagramTransport for Tap {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>> {
        Ok(Box::new(TapSocket {
            inner: Udp.bind(addr).await?,
            sent: self.sent.clone(),
        }))
    }
}

struct TapSocket {
    inner: Box<dyn DatagramSocket>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[async_trait]
impl DatagramSocket for TapSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sent.lock().expect("tap").push(datagram.to_vec());
        self.inner.send_to(datagram, to).await
    }
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner.recv_from(buf).await
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs two nodes over a tap until each sees the other, and returns what
/// the tap saw.
async fn tapped(secret: Option<&str>) -> Vec<Vec<u8>> {
    let tap = Tap::default();
    let a = Membership::start(cfg("a", &[], secret, GossipTransport::new(tap.clone())))
        .await
        .expect("a");
    let b = Membership::start(cfg("b", &[&a], secret, GossipTransport::new(tap.clone())))
        .await
        .expect("b");
    wait_for(&a, &["a", "b"], MemberState::Alive).await;
    wait_for(&b, &["a", "b"], MemberState::Alive).await;
    tap.sent()
}

#[tokio::test]
async fn an_injected_transport_only_carries_sealed_datagrams() {
    let sealed = tapped(Some("a secret for the tap test")).await;
    assert!(!sealed.is_empty());
    for d in &sealed {
        assert_eq!(d.first(), Some(&0x01), "sealed format byte");
        assert!(
            !contains(d, CLUSTER.as_bytes()),
            "the cluster name in the clear"
        );
    }
    // The same check catches clear gossip, which a loopback node without a
    // secret sends: so the check above can fail.
    let open = tapped(None).await;
    assert!(open.iter().all(|d| d.first() == Some(&0x00)));
    assert!(open.iter().any(|d| contains(d, CLUSTER.as_bytes())));
}
