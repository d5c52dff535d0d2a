//! What one limit decision costs on the request path: `hit_window` of the
//! node-local store and of the credit store that shared limits use
//! (`scope: region | cluster`, ADR 0035), timed call by call, p50 / p99 /
//! p99.9 over a million decisions on one hot key and over 10,000 keys.
//! The credit store settles with an in-process ledger in the background
//! (its own runtime thread), as an owner node does for its own keys; the
//! decision itself never waits for it. Prints a Markdown table; see
//! `docs/benchmarks.md`.
//!
//! ```sh
//! cargo bench -p weir-limits --bench decision
//! ```

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_limits::credit::{CreditConfig, CreditCounters, FairShare, LedgerAuthority};
use weir_limits::{
    CounterSpec, CounterStore, CreditLedger, LedgerConfig, LimitId, LocalCounters, Scale,
    WindowPolicy, wall_clock_us,
};

const CALLS: usize = 1_000_000;
const WARMUP: usize = 100_000;

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Times `CALLS` decisions of `store` (after a warm-up), each on key
/// `keys[i % keys.len()]`; returns the sorted latencies in ns and the
/// admitted count.
fn run(store: &dyn CounterStore, keys: &[String], policy: &WindowPolicy) -> (Vec<u64>, u64) {
    for i in 0..WARMUP {
        black_box(store.hit_window(&keys[i % keys.len()], policy, wall_clock_us(), 1));
    }
    let mut lat = Vec::with_capacity(CALLS);
    let mut admitted = 0;
    for i in 0..CALLS {
        let key = &keys[i % keys.len()];
        let t0 = Instant::now();
        let v = store.hit_window(key, policy, wall_clock_us(), 1);
        lat.push(t0.elapsed().as_nanos() as u64);
        admitted += u64::from(black_box(v).admitted);
    }
    lat.sort_unstable();
    (lat, admitted)
}

fn main() {
    // Only under `cargo bench`: test runners list every target and must
    // not sit through a million timed calls.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let spec = CounterSpec {
        max_keys: 100_000,
        idle: Duration::from_secs(3_600),
    };
    // A limit no run reaches: every decision admits, so every call does
    // the full work (and the credit store keeps asking for refills).
    let policy = WindowPolicy {
        limit: 1_000_000_000,
        window_us: 60_000_000,
        sliding: false,
    };
    let id = LimitId {
        owner: "route:bench".into(),
        plugin: "limit-count".into(),
        config: 1,
    };
    let hot = vec!["203.0.113.7".to_string()];
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();

    println!("| store | keys | p50 ns | p99 ns | p99.9 ns | admitted |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, keys) in [("hot key", &hot), ("10,000 keys", &many)] {
        let local = LocalCounters::new(spec.max_keys, spec.idle);
        let (lat, admitted) = run(&local, keys, &policy);
        row("node-local", name, &lat, admitted);

        let ledger = Arc::new(Mutex::new(CreditLedger::new(LedgerConfig::default())));
        let authority = Arc::new(LedgerAuthority::new(
            ledger,
            "bench",
            Arc::new(wall_clock_us),
        ));
        let credit = CreditCounters::new(
            id.clone(),
            &spec,
            authority,
            FairShare::new(Scale::FULL),
            CreditConfig::default(),
            rt.handle(),
        );
        let (lat, admitted) = run(&credit, keys, &policy);
        row("credit (shared scope)", name, &lat, admitted);
        let st = credit.stats();
        eprintln!(
            "credit, {name}: {} grants, {} from credit, {} ahead, {} fair share, {} queue full",
            st.grants, st.admitted_credit, st.admitted_ahead, st.admitted_fair_share, st.queue_full
        );
    }
}

fn row(store: &str, keys: &str, lat: &[u64], admitted: u64) {
    println!(
        "| {store} | {keys} | {} | {} | {} | {admitted} |",
        pct(lat, 0.50),
        pct(lat, 0.99),
        pct(lat, 0.999)
    );
}
