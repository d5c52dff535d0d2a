//! What one config change costs a node with 10,000 routes: a one-route
//! write in store mode (the store's validator compiles the documents,
//! reusing every unchanged route, and keeps the snapshot; the follower
//! publishes it) and a one-route file reload (`State::apply`); then the
//! pieces from scratch: the validator without reuse (`docs::problems`),
//! turning stored documents into a `Config` (`docs::config_from_docs`,
//! each document already read once, as after the first write), and a full
//! compile (`snapshot::validate`).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_node::config::{Config, RouteConfig, UpstreamConfig};
use weir_node::docs;
use weir_node::snapshot::{self, State};
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
        cfg.routes.push(Arc::new(RouteConfig {
            id: format!("r{i}"),
            paths: vec![path],
            upstream: Some("u".into()),
            ..RouteConfig::default()
        }));
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

/// Two versions of the stored documents that differ in one route, as two
/// successive one-route writes leave them: each bench iteration applies
/// the other one, so every iteration is a one-route change.
fn two_versions(cfg: &Config, docs: &Docs) -> [(Config, Docs); 2] {
    [1, 2].map(|n| {
        let mut cfg = cfg.clone();
        // A reloaded file is parsed anew: no route is shared with the
        // config before it.
        cfg.routes = cfg.routes.iter().map(|r| Arc::new((**r).clone())).collect();
        Arc::make_mut(&mut cfg.routes[0]).paths = vec![format!("/api/r0/items-v{n}")];
        let mut docs = docs.clone();
        let value = serde_json::to_value(&cfg.routes[0]).expect("a route document");
        let key = ("routes".to_string(), cfg.routes[0].id.clone());
        docs.insert(
            key.clone(),
            Arc::new(Document {
                kind: key.0,
                id: key.1,
                revision: 1 + n,
                created: 1,
                value,
                memo: Default::default(),
            }),
        );
        (cfg, docs)
    })
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let docs = stored(&cfg);
    let base = Arc::new(Config::default());
    // The first read fills every document's memo, as the first write does.
    assert!(docs::problems(&docs).is_empty(), "the documents validate");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();

    // What one write of one route costs each node, with 10,000 routes
    // stored: the store's validator when the node applies the write (it
    // compiles and keeps the snapshot), then the follower publishing it.
    let versions = two_versions(&cfg, &docs);
    let state = State::new(&versions[1].0).expect("the config compiles");
    let validator = docs::validator(state.clone(), base.clone());
    let mut g = c.benchmark_group("one_route_write_10k_routes");
    g.sample_size(20);
    let mut n = 0usize;
    g.bench_function("store write, per node (validator + follower)", |b| {
        b.iter(|| {
            n += 1;
            let docs = &versions[n % 2].1;
            assert!(validator(black_box(docs)).is_empty());
            state
                .publish_prepared(
                    || unreachable!("the validator prepared it"),
                    docs::DocsKey::of(docs),
                )
                .expect("publishes")
        })
    });
    g.bench_function("file reload (State::apply)", |b| {
        b.iter(|| {
            n += 1;
            black_box(state.apply(&versions[n % 2].0).expect("applies"))
        })
    });
    g.finish();

    // The same pieces from scratch, as at start-up or for a tool.
    let mut g = c.benchmark_group("store_mode_10k_routes");
    g.sample_size(10);
    g.bench_function("validator without reuse (docs::problems)", |b| {
        b.iter(|| black_box(docs::problems(black_box(&docs))))
    });
    g.bench_function("config_from_docs", |b| {
        b.iter(|| black_box(docs::config_from_docs(&base, black_box(&docs))))
    });
    g.bench_function("full compile (snapshot::validate)", |b| {
        b.iter(|| snapshot::validate(black_box(&cfg)).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
