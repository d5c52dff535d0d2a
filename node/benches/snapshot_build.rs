//! What one config change costs a node in store mode with 10,000 routes,
//! piece by piece: the validator the store runs on every write
//! (`docs::problems`), turning stored documents into a `Config`
//! (`docs::config_from_docs`, with each document already read once, as
//! after the first write), and the route snapshot rebuild
//! (`State::apply`: validation, upstreams, plugin chains, router).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_node::config::{Config, RouteConfig, UpstreamConfig};
use weir_node::docs;
use weir_node::snapshot::State;
use weir_storage::{Docs, Document};

const ROUTES: usize = 10_000;

// The weir binary's allocator: the rebuild allocates a great deal, and
// glibc's malloc would make it look several times slower than it is.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.upstreams.push(
        serde_yaml_ng::from_str::<UpstreamConfig>("{id: u, targets: [{addr: '127.0.0.1:9'}]}")
            .expect("an upstream"),
    );
    for i in 0..ROUTES {
        let path = match i % 3 {
            0 => format!("/api/r{i}/items"),
            1 => format!("/api/r{i}/users/:id"),
            _ => format!("/static/r{i}/*"),
        };
        cfg.routes.push(RouteConfig {
            id: format!("r{i}"),
            paths: vec![path],
            upstream: Some("u".into()),
            ..RouteConfig::default()
        });
    }
    cfg
}

fn stored(cfg: &Config) -> Docs {
    let mut out = BTreeMap::new();
    for (kind, id, value) in docs::docs_of_config(cfg).expect("documents of the config") {
        let doc = Document {
            kind: kind.clone(),
            id: id.clone(),
            revision: 1,
            created: 1,
            value,
            memo: Default::default(),
        };
        out.insert((kind, id), Arc::new(doc));
    }
    out
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let docs = stored(&cfg);
    let base = Config::default();
    // The first read fills every document's memo, as the first write does.
    assert!(docs::problems(&docs).is_empty(), "the documents validate");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let state = State::new(&cfg).expect("the config compiles");

    let mut g = c.benchmark_group("store_mode_10k_routes");
    g.sample_size(10);
    g.bench_function("validator (docs::problems)", |b| {
        b.iter(|| black_box(docs::problems(black_box(&docs))))
    });
    g.bench_function("config_from_docs", |b| {
        b.iter(|| black_box(docs::config_from_docs(&base, black_box(&docs))))
    });
    g.bench_function("snapshot rebuild (State::apply)", |b| {
        b.iter(|| black_box(state.apply(black_box(&cfg)).expect("applies")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
