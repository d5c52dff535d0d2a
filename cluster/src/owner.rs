//! Owner choice by rendezvous (highest-random-weight) hashing: given a key
//! and the live members, which `k` members own it.
//!
//! Every member scores `hash(key, member id)`; the owners are the `k`
//! highest scores. Every node that sees the same members computes the same
//! owners, without coordination, and a membership change moves only what it
//! must: a member that leaves hands on exactly the keys it owned, one that
//! joins takes over only keys it now outscores others on. Members are not
//! weighted. An optional preference (e.g. "in the key's region") ranks the
//! preferred members ahead of the rest; scores rank within each group.
//!
//! The hash is FNV-1a over the key, a zero byte and the member id, then a
//! 64-bit finaliser: stable across processes, builds and versions, since
//! every node must agree. Health-check sharding uses it today; the shared
//! cache and global counters are meant to. This module knows nothing about
//! what a key means or where members come from.

use crate::membership::Member;

/// Something that can own keys: a member with a stable, unique id.
pub trait Candidate {
    /// The id its score is computed from.
    fn candidate_id(&self) -> &str;
}

impl Candidate for String {
    fn candidate_id(&self) -> &str {
        self
    }
}

impl Candidate for &str {
    fn candidate_id(&self) -> &str {
        self
    }
}

impl Candidate for Member {
    fn candidate_id(&self) -> &str {
        &self.id
    }
}

/// A key made of several parts, joined by zero bytes, so that
/// `["ab", "c"]` and `["a", "bc"]` are different keys.
pub fn key(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// The rendezvous score of `member` for `key`.
pub fn score(key: &[u8], member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain(&[0]).chain(member.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The `k` owners of `key` among `members`, highest score first (fewer
/// when there are fewer members). A larger `k` extends the list of a
/// smaller one.
pub fn owners<'a, C: Candidate>(key: &[u8], members: &'a [C], k: usize) -> Vec<&'a C> {
    owners_preferring(key, members, k, |_| false)
}

/// Like [`owners`], with the members `prefer` picks ranked ahead of the
/// rest. Equal scores (only possible for equal ids) rank the greater id
/// first, then keep the order of `members`.
pub fn owners_preferring<'a, C: Candidate>(
    key: &[u8],
    members: &'a [C],
    k: usize,
    prefer: impl Fn(&C) -> bool,
) -> Vec<&'a C> {
    let mut ranked: Vec<(bool, u64, &C)> = members
        .iter()
        .map(|m| (prefer(m), score(key, m.candidate_id()), m))
        .collect();
    ranked.sort_by(|a, b| (b.0, b.1, b.2.candidate_id()).cmp(&(a.0, a.1, a.2.candidate_id())));
    ranked.into_iter().take(k).map(|(_, _, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    fn ids(owners: &[&String]) -> Vec<String> {
        owners.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scores_are_pinned() {
        // Every node must compute the same owners, whatever version it
        // runs: these values may never change.
        let s = |parts: &[&str], m| score(&key(parts), m);
        assert_eq!(s(&["u", "10.0.0.1:80"], "a"), 0xad86_e737_1237_8ff4);
        assert_eq!(s(&["u", "10.0.0.1:80"], "b"), 0x8a64_475d_47c6_9dbb);
        assert_eq!(
            s(&["api", "127.0.0.1:9001"], "node-1"),
            0x87cc_7a51_c220_3164
        );
        assert_eq!(s(&["", ""], ""), 0xdb01_c310_4e99_566d);
    }

    #[test]
    fn key_parts_are_separated() {
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        assert_eq!(key(&["a", "b"]), b"a\0b");
        assert_eq!(key(&["a"]), b"a");
        assert!(key(&[]).is_empty());
    }

    #[test]
    fn owners_are_k_distinct_highest_first() {
        let members: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let k = key(&["some", "key"]);
        let all = owners(&k, &members, 10);
        assert_eq!(all.len(), 4, "k beyond the members gives them all");
        let scores: Vec<u64> = all.iter().map(|m| score(&k, m)).collect();
        assert!(scores.windows(2).all(|w| w[0] > w[1]), "{scores:?}");
        assert_eq!(&owners(&k, &members, 2)[..], &all[..2]);
        assert!(owners(&k, &members, 0).is_empty());
        assert!(owners::<String>(&k, &[], 3).is_empty());
    }

    #[test]
    fn preferred_members_come_first() {
        let members = ["a", "b", "c", "d", "e"];
        for t in 0..50 {
            let k = key(&["u", &format!("t{t}")]);
            let chosen = owners_preferring(&k, &members, 3, |m| *m == "b" || *m == "e");
            let first: BTreeSet<&str> = chosen[..2].iter().map(|m| **m).collect();
            assert_eq!(first, BTreeSet::from(["b", "e"]));
            let rest = owners(&k, &["a", "c", "d"], 1);
            assert_eq!(chosen[2], rest[0], "then the best of the others");
        }
    }

    #[test]
    fn equal_ids_keep_their_order() {
        let members = vec!["x".to_string(), "x".to_string()];
        let chosen = owners(b"k", &members, 2);
        assert!(std::ptr::eq(chosen[0], &members[0]));
        assert!(std::ptr::eq(chosen[1], &members[1]));
    }

    fn member_sets() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set("[a-z0-9-]{1,12}", 2..10)
            .prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        /// Removing a member moves only the keys it owned: every other
        /// owner keeps its keys, for every k.
        #[test]
        fn removing_a_member_moves_only_its_keys(
            members in member_sets(),
            gone in any::<prop::sample::Index>(),
            k in 1usize..4,
        ) {
            let gone = members[gone.index(members.len())].clone();
            let rest: Vec<String> = members.iter().filter(|m| **m != gone).cloned().collect();
            for t in 0..200 {
                let key = key(&["key", &t.to_string()]);
                let before = ids(&owners(&key, &members, k));
                let after = ids(&owners(&key, &rest, k));
                for m in before.iter().filter(|m| **m != gone) {
                    prop_assert!(after.contains(m), "{m} lost key {t}: {before:?} -> {after:?}");
                }
                if !before.contains(&gone) {
                    prop_assert_eq!(&before, &after);
                }
            }
        }

        /// Adding a member moves keys only to it.
        #[test]
        fn adding_a_member_moves_keys_only_to_it(
            members in member_sets(),
            new in "[A-Z]{1,8}",
        ) {
            let mut more = members.clone();
            more.push(new.clone());
            for t in 0..200 {
                let key = key(&["key", &t.to_string()]);
                let before = ids(&owners(&key, &members, 1));
                let after = ids(&owners(&key, &more, 1));
                prop_assert!(after == before || after == [new.clone()]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Each member owns its share of 2,000 keys within half of it
        /// either way: at least eight standard deviations for an even hash.
        #[test]
        fn keys_spread_over_members(members in member_sets()) {
            let n = 2_000usize;
            let mut load: HashMap<&String, usize> = HashMap::new();
            for t in 0..n {
                let key = key(&["spread", &t.to_string()]);
                *load.entry(owners(&key, &members, 1)[0]).or_default() += 1;
            }
            let share = n / members.len();
            for m in &members {
                let got = load.get(m).copied().unwrap_or(0);
                prop_assert!(
                    (share / 2..=share * 3 / 2).contains(&got),
                    "{m} owns {got} of {n}, share {share}"
                );
            }
        }
    }
}
