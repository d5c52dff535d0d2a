//! Catch-up of a large state over the sealed transport: a node whose keys
//! take several datagrams to send is caught up by a fresh peer, on real
//! loopback UDP sockets.
//!
//! chitchat fills each reply up to the largest UDP payload without knowing
//! about the 41 bytes the seal adds (ADR 0033). Whether a reply then
//! overflows depends on how close chitchat's conservative size bound comes
//! to the limit, which compression of the last block usually spoils: with
//! values zstd cannot compress and records sized against chitchat's digest,
//! both of the replies that carry a node's state to a fresh peer (the
//! SYN-ACK, and the ACK when the node gossips first) come within a few
//! bytes of the limit. Before ADR 0033 both were dropped every round and
//! the fresh peer never learned a single key; now they go in parts.

use std::time::Duration;

use weir_cluster::gossip::GossipTransport;
use weir_cluster::membership::{GossipTiming, Member, Membership, MembershipConfig, NodeInfo};

const CLUSTER: &str = "weir-gossip-catchup-test";
const SECRET: &str = "a secret for the catch-up test";
const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// The shape of the state, found by scanning the pad length against
/// chitchat 0.11 and zstd in steps of 4: pads from 58 to 94 bytes made
/// every catch-up reply overflow once sealed (54 and 98 did not); 76 sits
/// in the middle, so the few bytes that vary between runs (ports,
/// generations) do not move it out.
const PAD: usize = 76;
/// Pairs of records: one large, one small.
const PAIRS: usize = 150;
/// A delta record is its key and value plus 14 bytes (tag, two lengths,
/// version, status).
const RECORD_OVERHEAD: usize = 14;
/// Large records: most of the state, in values zstd cannot shrink.
const LARGE_RECORD: usize = 1000;
/// Small records: chitchat's digest of two nodes (86 bytes) plus 5, so a
/// reply cut just before one still has room for it in the other reply,
/// whose bound is exactly a digest larger.
const SMALL_RECORD: usize = 91;
/// Keys are `b:0000` / `s:0000`.
const KEY_LEN: usize = 6;

fn cfg(id: &str, seeds: &[&Membership]) -> MembershipConfig {
    MembershipConfig {
        cluster_name: CLUSTER.into(),
        node_id: id.into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise_ip: None,
        seeds: seeds.iter().map(|m| m.gossip_addr().to_string()).collect(),
        secret: Some(SECRET.as_bytes().to_vec()),
        info: NodeInfo::default(),
        timing: GossipTiming {
            gossip_interval: Duration::from_millis(50),
            initial_interval: Duration::from_millis(100),
            ..GossipTiming::default()
        },
        transport: GossipTransport::default(),
    }
}

/// A string of exactly `bytes` bytes of UTF-8 whose bytes are spread
/// almost evenly over the values UTF-8 allows (one, two and three byte
/// characters mixed in the right proportions), so zstd's byte-wise entropy
/// coder gains next to nothing on it.
fn dense(rng: &mut fastrand::Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes);
    while s.len() < bytes {
        let room = bytes - s.len();
        let c = match rng.u8(..100) {
            73..91 if room >= 2 => char::from_u32(rng.u32(0x80..0x800)),
            91.. if room >= 3 => char::from_u32(rng.u32(0x1000..0xD000)),
            _ => char::from_u32(rng.u32(1..0x80)),
        };
        if let Some(c) = c {
            s.push(c);
        }
    }
    s
}

/// The published state: a pad, then large and small records in turn, from
/// a seeded generator so every run gossips the same values.
fn state() -> Vec<(String, String)> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut out = vec![("pad".to_string(), dense(&mut rng, PAD))];
    for i in 0..PAIRS {
        out.push((
            format!("b:{i:04}"),
            dense(&mut rng, LARGE_RECORD - RECORD_OVERHEAD - KEY_LEN),
        ));
        out.push((
            format!("s:{i:04}"),
            dense(&mut rng, SMALL_RECORD - RECORD_OVERHEAD - KEY_LEN),
        ));
    }
    out
}

/// How many of `keys` `viewer` has from member `id`, with the right value.
async fn known(viewer: &Membership, id: &str, keys: &[(String, String)]) -> usize {
    let members: Vec<Member> = viewer.members().await;
    members.iter().find(|m| m.id == id).map_or(0, |m| {
        keys.iter()
            .filter(|(k, v)| m.keys.get(k) == Some(v))
            .count()
    })
}

#[tokio::test]
async fn a_fresh_peer_catches_up_on_a_state_larger_than_a_datagram() {
    let keys = state();
    let total: usize = keys.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(total > 100_000, "the state is {total} bytes");

    let a = Membership::start(cfg("a", &[])).await.expect("a");
    for (k, v) in &keys {
        a.set_key(k, v).await;
    }
    let b = Membership::start(cfg("b", &[&a])).await.expect("b");

    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = known(&b, "a", &keys).await;
        if got == keys.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b knows {got} of a's {} keys after {DEADLINE:?}; a's gossip: {:?}",
            keys.len(),
            a.stats(),
        );
        tokio::time::sleep(POLL).await;
    }
    let stats = a.stats();
    assert_eq!(stats.oversized_datagrams, 0, "{stats:?}");
    // The state did reach the limit: some reply went in parts. If this
    // fails after an upgrade of chitchat or zstd, the state no longer
    // tests the limit; scan PAD again.
    assert!(stats.split_messages > 0, "{stats:?}");
    let b_stats = b.stats();
    assert_eq!(b_stats.rejected_datagrams, 0, "{b_stats:?}");
    assert_eq!(b_stats.malformed_datagrams, 0, "{b_stats:?}");
}
