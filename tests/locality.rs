//! Region-aware balancing with real processes: two nodes in two regions,
//! targets labelled with regions, `prefer-local` with spill-over,
//! `strict-local`, `none`, and zones inside a region.

mod common;

use std::time::Duration;

use common::weir_bin;
use weir_chaos::{Cluster, ClusterSpec, NodeSpec};
use weir_testsupport::Upstream;

fn config(ups: &[(&str, &str, &Upstream, &Upstream)]) -> String {
    let mut y = String::from("upstreams:\n");
    for (id, locality, eu, us) in ups {
        y.push_str(&format!(
            "  - id: {id}\n    locality: {locality}\n    retries: 1\n    targets:\n      - {{addr: \"{}\", region: eu}}\n      - {{addr: \"{}\", region: us}}\n",
            eu.target(),
            us.target()
        ));
    }
    y.push_str("routes:\n");
    for (id, ..) in ups {
        y.push_str(&format!(
            "  - id: {id}\n    paths: [\"/{id}/*\"]\n    upstream: {id}\n"
        ));
    }
    y
}

async fn get_n(url: &str, n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let status = client
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        out.push(status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_prefer_their_region_and_spill_over_when_it_is_down() {
    let (pe, pu) = (Upstream::start("p-eu").await, Upstream::start("p-us").await);
    let (se, su) = (Upstream::start("s-eu").await, Upstream::start("s-us").await);
    let (ne, nu) = (Upstream::start("n-eu").await, Upstream::start("n-us").await);
    let mut spec = ClusterSpec::new(0).config(config(&[
        ("p", "prefer-local", &pe, &pu),
        ("s", "strict-local", &se, &su),
        ("n", "none", &ne, &nu),
    ]));
    spec.nodes = vec![
        NodeSpec::new("eu-node", "eu"),
        NodeSpec::new("us-node", "us"),
    ];
    let c = Cluster::start(weir_bin(), spec).await.expect("starts");
    let (eu, us) = (c.node(0).gateway(), c.node(1).gateway());

    // Each node keeps to its own region.
    assert!(get_n(&eu.url("/p/x"), 20).await.iter().all(|s| *s == 200));
    assert!(get_n(&us.url("/p/x"), 20).await.iter().all(|s| *s == 200));
    assert_eq!((pe.hits_for("/p/"), pu.hits_for("/p/")), (20, 20));
    assert!(get_n(&eu.url("/s/x"), 10).await.iter().all(|s| *s == 200));
    assert_eq!((se.hits_for("/s/"), su.hits_for("/s/")), (10, 0));
    // `none` ignores regions: both get traffic.
    assert!(get_n(&eu.url("/n/x"), 40).await.iter().all(|s| *s == 200));
    assert!(ne.hits_for("/n/") > 0 && nu.hits_for("/n/") > 0);

    // The eu targets die: prefer-local spills over to us without a failed
    // request (the retry goes to the other region); strict-local does not.
    pe.kill().await;
    se.kill().await;
    let statuses = get_n(&eu.url("/p/x"), 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(pu.hits_for("/p/"), 40);
    let statuses = get_n(&eu.url("/s/x"), 5).await;
    assert!(statuses.iter().all(|s| *s >= 500), "{statuses:?}");
    assert_eq!(
        su.hits_for("/s/"),
        0,
        "strict-local never leaves the region"
    );

    // Back in its region once it recovers (passive health lets it back
    // after fail_timeout; wait for the first request that lands there).
    pe.restart().await;
    weir_testsupport::wait_until("eu target used again", Duration::from_secs(20), || async {
        let _ = get_n(&eu.url("/p/x"), 1).await;
        pe.hits_for("/p/") > 20
    })
    .await;
    let before = pu.hits_for("/p/");
    assert!(get_n(&eu.url("/p/x"), 10).await.iter().all(|s| *s == 200));
    assert_eq!(
        pu.hits_for("/p/"),
        before,
        "no more spill once local is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_prefer_their_zone_then_their_region() {
    let a = Upstream::start("eu-1").await;
    let b = Upstream::start("eu-2").await;
    let u = Upstream::start("us-1").await;
    let config = format!(
        "upstreams:\n  - id: z\n    retries: 1\n    targets:\n      - {{addr: \"{}\", region: eu, zone: eu-1}}\n      - {{addr: \"{}\", region: eu, zone: eu-2}}\n      - {{addr: \"{}\", region: us, zone: us-1}}\nroutes:\n  - id: z\n    paths: [\"/z/*\"]\n    upstream: z\n",
        a.target(),
        b.target(),
        u.target()
    );
    let mut spec = ClusterSpec::new(0).config(config);
    let in_zone = |id: &str, zone: &str| {
        let mut n = NodeSpec::new(id, "eu");
        n.zone = zone.to_string();
        n
    };
    spec.nodes = vec![in_zone("eu-1-node", "eu-1"), in_zone("eu-2-node", "eu-2")];
    let c = Cluster::start(weir_bin(), spec).await.expect("starts");
    let (n1, n2) = (c.node(0).gateway(), c.node(1).gateway());

    // Each node keeps to its own zone.
    let hits = || (a.hits_for("/z/"), b.hits_for("/z/"), u.hits_for("/z/"));
    assert!(get_n(&n1.url("/z/x"), 20).await.iter().all(|s| *s == 200));
    assert_eq!(hits(), (20, 0, 0));
    assert!(get_n(&n2.url("/z/x"), 20).await.iter().all(|s| *s == 200));
    assert_eq!(hits(), (20, 20, 0));

    // Its zone's target dies: the node moves to the other zone of its
    // region, not to the other region, and the retry hides the failure.
    a.kill().await;
    let statuses = get_n(&n1.url("/z/x"), 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!((b.hits_for("/z/"), u.hits_for("/z/")), (40, 0));

    // The whole region is down: now the other region.
    b.kill().await;
    let statuses = get_n(&n1.url("/z/x"), 10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(u.hits_for("/z/"), 10);
}
