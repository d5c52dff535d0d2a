//! Write unavailability when the Raft leader dies, on a 3-node loopback
//! cluster of real `weir` processes with default timing: `kill -9` of the
//! leader, then a write to a survivor every 10 ms until one succeeds; the
//! time from the kill to that success, over 20 kills (the killed node is
//! restarted and caught up before the next). Prints a Markdown table with
//! p50/p99/max; see `docs/benchmarks.md`. Not part of CI.
//!
//! ```sh
//! cargo bench --profile dev --bench raft_failover
//! WEIR_BENCH_KILLS=5 WEIR_BENCH_BIN=/path/to/weir cargo bench --profile dev --bench raft_failover
//! ```

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_testsupport::raftnode::{Node, cluster, leader_index};
use weir_testsupport::{http_client, wait_until};

const CONVERGE: Duration = Duration::from_secs(60);

fn kills() -> usize {
    std::env::var("WEIR_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Until every node is a voter in one agreed leader's cluster and has
/// applied as far as the leader.
async fn settled(nodes: &[Node]) {
    wait_until("three voters, one leader, caught up", CONVERGE, || async {
        let mut seen = Vec::new();
        for n in nodes {
            let Some(s) = n.status().await else {
                return false;
            };
            let c = &s["cluster"];
            let voters = c["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["role"] == "voter").count());
            if voters != 3 || c["leader"].is_null() {
                return false;
            }
            seen.push((c["leader"].clone(), c["applied_index"].clone()));
        }
        seen.windows(2).all(|w| w[0] == w[1])
    })
    .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let Some(bin) = weir_testsupport::raftnode::bench_bin(env!("CARGO_BIN_EXE_weir")) else {
        return Ok(());
    };
    let load_before = loadavg();
    let root = tempfile::tempdir()?;
    let mut nodes = cluster(&bin, root.path()).await?;
    let c = http_client();
    let mut samples = Vec::new();
    let mut refused = 0usize;
    let mut write = 0usize;
    for k in 0..kills() {
        settled(&nodes).await;
        let leader = leader_index(&nodes).await;
        let survivor = &nodes[(leader + 1 + k % 2) % 3].admin.clone();
        nodes[leader].kill();
        let killed = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            write += 1;
            let r = c
                .put(format!("http://{survivor}/v1/consumers/k{write}"))
                .timeout(Duration::from_secs(10))
                .json(&json!({"labels": {"kill": k.to_string()}}))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => break,
                Ok(r) => {
                    let status = r.status();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    anyhow::ensure!(status == 503, "kill {k}: write answered {status}: {v}");
                    refused += 1;
                }
                Err(e) => anyhow::bail!("kill {k}: write got no answer: {e}"),
            }
            anyhow::ensure!(
                killed.elapsed() < CONVERGE,
                "kill {k}: no write succeeded within {CONVERGE:?}"
            );
        }
        let took = killed.elapsed();
        eprintln!("kill {k}: writes unavailable for {took:?}");
        samples.push(took);
        nodes[leader].restart().await?;
    }
    let load_after = loadavg();
    samples.sort();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| write unavailability after a leader kill ({} kills): p50 / p99 / max | {:.2} s / {:.2} s / {:.2} s |",
        samples.len(),
        pct(&samples, 0.5).as_secs_f64(),
        pct(&samples, 0.99).as_secs_f64(),
        pct(&samples, 1.0).as_secs_f64()
    );
    println!("| fastest | {:.2} s |", pct(&samples, 0.0).as_secs_f64());
    println!("| writes answered 503 meanwhile | {refused} |");
    println!("| load average before / after | {load_before} / {load_after} |");
    Ok(())
}
