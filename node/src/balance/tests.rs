//! Properties every balancer shares, through the public API.

use std::net::Ipv4Addr;
use std::time::Duration;

use http::HeaderMap;
use proptest::prelude::*;

use super::*;
use crate::config::HashOn;

fn all_kinds() -> Vec<BalancerConfig> {
    vec![
        BalancerConfig::RoundRobin,
        BalancerConfig::LeastConn,
        BalancerConfig::Random,
        BalancerConfig::ConsistentHash {
            hash_on: HashOn::Ip,
        },
        BalancerConfig::ConsistentHash {
            hash_on: HashOn::Header("x-user".into()),
        },
        BalancerConfig::ConsistentHash {
            hash_on: HashOn::Cookie("sid".into()),
        },
        BalancerConfig::ConsistentHash {
            hash_on: HashOn::Uri,
        },
        BalancerConfig::PeakEwma {
            decay: Duration::from_secs(10),
        },
    ]
}

fn targets(weights: &[u32]) -> Vec<TargetConfig> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| TargetConfig {
            addr: format!("10.0.{}.{}:80", i / 200, i % 200 + 1),
            weight,
            region: String::new(),
            zone: String::new(),
        })
        .collect()
}

/// Picks once with a request built from `key`, then runs the request
/// through `on_start`/`on_end` as the proxy would.
fn pick_and_serve(b: &Balancer, key: u32, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", key.to_string().parse().unwrap());
    headers.insert("cookie", format!("sid={key}").parse().unwrap());
    let path = format!("/k/{key}");
    let ctx = PickCtx {
        client_ip: Ipv4Addr::from(key).into(),
        headers: &headers,
        path_and_query: &path,
    };
    let picked = b.pick(&ctx, eligible);
    if let Some(i) = picked {
        b.on_start(i);
        b.on_end(i, Duration::from_micros(u64::from(key % 5000)));
    }
    picked
}

#[test]
fn is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Balancer>();
}

#[test]
fn ineligible_and_zero_weight_targets_are_never_picked() {
    let t = targets(&[3, 0, 1, 2]);
    for cfg in all_kinds() {
        let b = Balancer::with_seed(&cfg, &t, 1);
        for key in 0..500 {
            let i = pick_and_serve(&b, key, &|i| i != 2).unwrap();
            assert!(i == 0 || i == 3, "{cfg:?} picked {i}");
        }
    }
}

#[test]
fn none_only_when_nothing_is_eligible() {
    for cfg in all_kinds() {
        let b = Balancer::with_seed(&cfg, &targets(&[1, 0, 1]), 1);
        assert_eq!(pick_and_serve(&b, 1, &|_| false), None, "{cfg:?}");
        assert_eq!(pick_and_serve(&b, 1, &|i| i == 1), None, "{cfg:?}");
        assert_eq!(pick_and_serve(&b, 1, &|i| i == 2), Some(2), "{cfg:?}");
        let empty = Balancer::with_seed(&cfg, &[], 1);
        assert_eq!(pick_and_serve(&empty, 1, &|_| true), None, "{cfg:?}");
        let zero = Balancer::with_seed(&cfg, &targets(&[0, 0]), 1);
        assert_eq!(pick_and_serve(&zero, 1, &|_| true), None, "{cfg:?}");
    }
}

#[test]
fn production_constructor_picks_too() {
    for cfg in all_kinds() {
        let b = Balancer::new(&cfg, &targets(&[1, 2, 3]));
        assert!(pick_and_serve(&b, 7, &|_| true).is_some());
        assert!(format!("{b:?}").contains("targets: 3"));
    }
}

#[test]
fn shared_across_threads() {
    // Two threads hammering one balancer (and, for round robin, its
    // try_lock fallback) still only return eligible targets, and every
    // in-flight counter returns to zero.
    for cfg in all_kinds() {
        let b = std::sync::Arc::new(Balancer::new(&cfg, &targets(&[1, 2, 0, 4])));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for key in 0..5_000 {
                        let i = pick_and_serve(&b, key * 2 + t, &|i| i != 0).unwrap();
                        assert!(i == 1 || i == 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        if let Algo::LeastConn(l) = &b.algo {
            assert!((0..4).all(|i| l.in_flight_at(i) == 0));
        }
    }
}

proptest! {
    #[test]
    fn picks_only_eligible_positive_weight_targets(
        weights in prop::collection::vec(0u32..6, 1..12),
        mask in prop::collection::vec(any::<bool>(), 12),
        kind in 0usize..8,
        seed in any::<u64>(),
        keys in prop::collection::vec(any::<u32>(), 1..20),
    ) {
        let cfg = &all_kinds()[kind];
        let b = Balancer::with_seed(cfg, &targets(&weights), seed);
        let eligible = |i: usize| mask[i];
        let any_ok = weights.iter().enumerate().any(|(i, &w)| w > 0 && mask[i]);
        for key in keys {
            b.advance_clock(Duration::from_millis(u64::from(key % 3000)));
            match pick_and_serve(&b, key, &eligible) {
                Some(i) => {
                    prop_assert!(i < weights.len());
                    prop_assert!(mask[i], "ineligible {} picked", i);
                    prop_assert!(weights[i] > 0, "weight-0 {} picked", i);
                }
                None => prop_assert!(!any_ok, "None although a target was eligible"),
            }
        }
    }
}
