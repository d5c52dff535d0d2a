//! In-process simulation of gossip membership at scale, over chitchat's
//! in-memory `ChannelTransport`, with weir's default timing.
//!
//! For each cluster size N: start N nodes (each seeded with the first
//! three), measure the time until every node sees all N alive, the gossip
//! bytes per node per second over a steady window, then stop one node
//! abruptly and measure the time until every other node no longer lists
//! it as alive.
//!
//! ```sh
//! cargo run -p weir-cluster --example gossip_sim -- 100 300 1000
//! ```
//!
//! Not a test: it asserts nothing and takes minutes at 1,000 nodes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::transport::ChannelTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, spawn_chitchat};
use weir_cluster::membership::{GossipTiming, failure_detector_config};

const POLL: Duration = Duration::from_millis(100);
const STEADY: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(300);

fn addr(i: usize) -> SocketAddr {
    let port = u16::try_from(10_000 + i).unwrap_or(u16::MAX);
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn live_counts(handles: &[ChitchatHandle]) -> Vec<usize> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.chitchat().lock().await.live_nodes().count());
    }
    out
}

async fn run(n: usize) -> anyhow::Result<()> {
    let timing = GossipTiming::default();
    let transport = ChannelTransport::with_mtu(65_507);
    let seeds: Vec<String> = (0..3.min(n)).map(|i| addr(i).to_string()).collect();
    let started = Instant::now();
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
        let kv = vec![
            ("region".to_string(), format!("region-{}", i % 3)),
            (
                "proxy_addr".to_string(),
                format!("10.0.{}.{}:9080", i / 250, i % 250),
            ),
        ];
        handles.push(spawn_chitchat(config, kv, &transport).await?);
    }
    // Convergence: every node sees all n alive.
    let converged = loop {
        let counts = live_counts(&handles).await;
        if counts.iter().all(|&c| c == n) {
            break started.elapsed();
        }
        if started.elapsed() > LIMIT {
            anyhow::bail!(
                "{n} nodes: no convergence in {LIMIT:?}; min live {:?}",
                counts.iter().min()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    // Steady-state bytes.
    let b0 = transport.statistics();
    let t0 = Instant::now();
    tokio::time::sleep(STEADY).await;
    let b1 = transport.statistics();
    let secs = t0.elapsed().as_secs_f64();
    let bytes_per_node_sec = (b1.num_bytes_total - b0.num_bytes_total) as f64 / secs / n as f64;
    let msgs_per_node_sec =
        (b1.num_messages_total - b0.num_messages_total) as f64 / secs / n as f64;
    // Detection: stop the last node without a word.
    let victim = handles.pop().ok_or_else(|| anyhow::anyhow!("no node"))?;
    let victim_id = victim.chitchat_id().clone();
    victim.abort();
    drop(victim);
    let t_kill = Instant::now();
    let detected = loop {
        let mut all = true;
        for h in &handles {
            if h.chitchat()
                .lock()
                .await
                .live_nodes()
                .any(|id| *id == victim_id)
            {
                all = false;
                break;
            }
        }
        if all {
            break t_kill.elapsed();
        }
        if t_kill.elapsed() > LIMIT {
            anyhow::bail!("{n} nodes: dead node not detected in {LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    };
    println!(
        "| {n} | {:.1} s | {:.1} s | {:.0} | {:.1} |",
        converged.as_secs_f64(),
        detected.as_secs_f64(),
        bytes_per_node_sec,
        msgs_per_node_sec
    );
    for h in handles {
        h.abort();
    }
    Ok(())
}

#[tokio::main]
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
        "| nodes | all see all alive | dead node seen by all | bytes/node/s | messages/node/s |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for n in sizes {
        run(n).await?;
    }
    Ok(())
}
