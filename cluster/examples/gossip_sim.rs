//! In-process simulation of gossip membership at scale, over chitchat's
//! in-memory `ChannelTransport`, with weir's default timing.
//!
//! For each cluster size N: start N nodes (each seeded with the first
//! three), their starts spread evenly over one gossip interval so their
//! rounds are not in lock-step; then measure
//!
//! 1. the time from the last start until every node sees all N alive;
//! 2. gossip bytes and messages per node per second over a steady window,
//!    and the largest message (against the 1,400-byte path MTU and the
//!    65,507-byte UDP limit);
//! 3. the time for a key set on one node to reach every other node (what
//!    Serf/memberlist's "about 2 s at 1,000 nodes" measures);
//! 4. the time from stopping one node abruptly until no other node lists
//!    it as alive.
//!
//! Time is tokio's **paused** clock: the runtime is single-threaded and
//! starts paused, and whenever every task is idle the clock jumps to the
//! next timer. chitchat reads time only through `tokio::time` (its gossip
//! interval, its failure detector's heartbeat arrival times, its grace
//! periods), so every figure is in simulated time: what the protocol needs
//! on a network with no latency and CPUs that are never short, however
//! loaded the machine running the simulation is. Processing a message takes
//! no simulated time, which is why the figures are a lower bound for a real
//! cluster, where each round also pays the network round trip and the CPU
//! time of serializing and merging digests.
//!
//! ```sh
//! cargo run --release -p weir-cluster --example gossip_sim -- 100 300 1000
//! ```
//!
//! Not a test: it asserts nothing and takes minutes of real time at 1,000
//! nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage, Serializable as _, spawn_chitchat,
};
use tokio::time::Instant;
use weir_cluster::gossip::{MAX_DATAGRAM, SEAL_OVERHEAD};
use weir_cluster::membership::{GossipTiming, failure_detector_config};

const POLL: Duration = Duration::from_millis(50);
const STEADY: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(300);
/// A common path MTU less IP and UDP headers, with room for tunnels.
const PATH_MTU_PAYLOAD: usize = 1_400;

fn addr(i: usize) -> SocketAddr {
    let port = u16::try_from(10_000 + i).unwrap_or(u16::MAX);
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Message sizes as they would be on the wire (sealed), for every message
/// sent through the transport.
#[derive(Default)]
struct SizeStats {
    messages: AtomicU64,
    sealed_bytes: AtomicU64,
    max_sealed: AtomicU64,
    over_path_mtu: AtomicU64,
    /// Messages that sealed exceed one UDP datagram: weir's transport
    /// sends them in parts (`split_messages`); this simulation drops them.
    oversized: AtomicU64,
}

impl SizeStats {
    fn record(&self, msg: &ChitchatMessage) {
        let sealed = (msg.serialized_len() + SEAL_OVERHEAD) as u64;
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.sealed_bytes.fetch_add(sealed, Ordering::Relaxed);
        self.max_sealed.fetch_max(sealed, Ordering::Relaxed);
        if sealed > PATH_MTU_PAYLOAD as u64 {
            self.over_path_mtu.fetch_add(1, Ordering::Relaxed);
        }
        if sealed > MAX_DATAGRAM as u64 {
            self.oversized.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.messages.load(Ordering::Relaxed),
            self.sealed_bytes.load(Ordering::Relaxed),
            self.over_path_mtu.load(Ordering::Relaxed),
        )
    }
}

/// chitchat's in-memory transport, measuring what each node sends.
struct Measured {
    inner: ChannelTransport,
    stats: Arc<SizeStats>,
}

struct MeasuredSocket {
    inner: Box<dyn Socket>,
    stats: Arc<SizeStats>,
}

#[async_trait]
impl Transport for Measured {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(MeasuredSocket {
            inner: self.inner.open(listen_addr).await?,
            stats: self.stats.clone(),
        }))
    }
}

#[async_trait]
impl Socket for MeasuredSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.stats.record(&msg);
        self.inner.send(to, msg).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inner.recv().await
    }
}

/// Polls `check` every [`POLL`] until it holds; the simulated time taken.
async fn wait_for<F>(
    what: &str,
    n: usize,
    handles: &[ChitchatHandle],
    check: F,
) -> anyhow::Result<Duration>
where
    F: Fn(&chitchat::Chitchat) -> bool,
{
    let start = Instant::now();
    loop {
        let mut all = true;
        for h in handles {
            if !check(&*h.chitchat().lock().await) {
                all = false;
                break;
            }
        }
        if all {
            return Ok(start.elapsed());
        }
        if start.elapsed() > LIMIT {
            anyhow::bail!("{n} nodes: {what} not reached in {LIMIT:?} (simulated)");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn run(n: usize) -> anyhow::Result<()> {
    let real_start = std::time::Instant::now();
    let timing = GossipTiming::default();
    let stats = Arc::new(SizeStats::default());
    let transport = Measured {
        inner: ChannelTransport::with_mtu(MAX_DATAGRAM - SEAL_OVERHEAD),
        stats: stats.clone(),
    };
    let seeds: Vec<String> = (0..3.min(n)).map(|i| addr(i).to_string()).collect();
    let stagger = timing.gossip_interval / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let id = ChitchatId::new(format!("node-{i:04}"), 1, addr(i));
        let config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: "sim".to_string(),
            gossip_interval: timing.gossip_interval,
            listen_addr: addr(i),
            seed_nodes: seeds.clone(),
            failure_detector_config: failure_detector_config(&timing),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        // What a weir node publishes.
        let kv = vec![
            ("region".to_string(), format!("region-{}", i % 3)),
            ("zone".to_string(), format!("zone-{}", i % 9)),
            ("version".to_string(), "0.1.0".to_string()),
            ("started_at_ms".to_string(), "1763851800123".to_string()),
            ("status".to_string(), "alive".to_string()),
            (
                "proxy_addr".to_string(),
                format!("10.0.{}.{}:9080", i / 250, i % 250),
            ),
            (
                "admin_addr".to_string(),
                format!("10.0.{}.{}:9180", i / 250, i % 250),
            ),
        ];
        handles.push(spawn_chitchat(config, kv, &transport).await?);
        tokio::time::sleep(stagger).await;
    }

    let converged = wait_for("all see all alive", n, &handles, |c| {
        c.live_nodes().count() == n
    })
    .await?;

    // Steady state.
    let (m0, b0, o0) = stats.snapshot();
    tokio::time::sleep(STEADY).await;
    let (m1, b1, o1) = stats.snapshot();
    let secs = STEADY.as_secs_f64();
    let bytes_per_node_sec = (b1 - b0) as f64 / secs / n as f64;
    let msgs_per_node_sec = (m1 - m0) as f64 / secs / n as f64;
    let over_mtu_share = if m1 > m0 {
        (o1 - o0) as f64 / (m1 - m0) as f64
    } else {
        0.0
    };

    // Propagation of one change.
    let origin = handles
        .first()
        .ok_or_else(|| anyhow::anyhow!("no node"))?
        .chitchat_id()
        .clone();
    handles[0]
        .chitchat()
        .lock()
        .await
        .self_node_state()
        .set("health", "[[\"api\",\"10.0.1.20:8080\"]]");
    let spread = wait_for("a key reaching every node", n, &handles, |c| {
        c.node_state(&origin)
            .is_some_and(|s| s.get("health").is_some())
    })
    .await?;

    // Detection: stop the last node without a word.
    let victim = handles.pop().ok_or_else(|| anyhow::anyhow!("no node"))?;
    let victim_id = victim.chitchat_id().clone();
    victim.abort();
    drop(victim);
    let detected = wait_for("the dead node detected everywhere", n, &handles, |c| {
        c.live_nodes().all(|id| *id != victim_id)
    })
    .await?;

    let max = stats.max_sealed.load(Ordering::Relaxed);
    let oversized = stats.oversized.load(Ordering::Relaxed);
    println!(
        "| {n} | {:.2} s | {:.2} s | {:.2} s | {:.0} | {:.1} | {max} | {:.0}% | {oversized} | {:.0} s |",
        converged.as_secs_f64(),
        spread.as_secs_f64(),
        detected.as_secs_f64(),
        bytes_per_node_sec,
        msgs_per_node_sec,
        over_mtu_share * 100.0,
        real_start.elapsed().as_secs_f64(),
    );
    for h in handles {
        h.abort();
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![100, 300, 1000]
    } else {
        sizes
    };
    println!(
        "| nodes | all see all alive | one change reaches all | dead node seen by all | sealed bytes/node/s | messages/node/s | largest message (bytes) | messages over 1,400 B | dropped as oversized | real time |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for n in sizes {
        run(n).await?;
    }
    Ok(())
}
