//! Consistent hashing on a ketama continuum (nginx's `hash ... consistent`).
//!
//! pingora-ketama builds the ring: 160 points per unit of weight for each
//! target, placed by CRC32, and a key goes to the first point at or after
//! the CRC32 of the key. Adding a target only takes keys onto the new
//! target, and removing one only moves that target's keys.
//!
//! A target's points depend only on its `addr` and weight, never on its
//! position in the list or on anything random, so every gateway node with
//! the same config sends a key to the same target. An IP literal `addr` is
//! given to the ring as itself, which places its points exactly where nginx
//! places them; any other `addr` (a host name) is mapped to a synthetic IPv6
//! address derived from a fixed hash of the string.
//!
//! When the target owning the key's point is not eligible, the walk goes on
//! clockwise to the next point owned by an eligible target: the same target
//! the key would get if the ineligible ones were removed from the ring, so
//! only their keys move, and they come back when the target does.
//!
//! The key is the client IP in text form (as nginx's `$remote_addr`, with
//! IPv4-mapped IPv6 addresses shown as IPv4), the first value of a header,
//! the value of a cookie (the first match across all `Cookie` headers, not
//! percent-decoded), or the path and query. A missing header or cookie
//! hashes as the empty string, so all requests without it go to one target.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use cookie::Cookie;
use http::HeaderName;
use pingora_ketama::{Bucket, Continuum};

use super::PickCtx;
use crate::config::{HashOn, TargetConfig};

/// Targets up to this index are remembered in a bitset while walking the
/// ring, so each is asked about eligibility once; beyond it a target may be
/// asked again, which only costs time.
const TRACKED: usize = 256;

pub(super) struct ConsistentHash {
    key: Key,
    ring: Continuum,
    /// Target index of each point of `ring`, in ring order.
    owners: Box<[u32]>,
    /// Targets with weight above 0.
    positive: Box<[u32]>,
    len: usize,
}

/// Where the hash key comes from.
enum Key {
    Ip,
    /// `None` for a name that is not a valid header name (config
    /// validation rejects those): never present, so hashed as empty.
    Header(Option<HeaderName>),
    Cookie(Box<str>),
    Uri,
}

impl ConsistentHash {
    pub(super) fn new(hash_on: &HashOn, targets: &[TargetConfig]) -> Self {
        let key = match hash_on {
            HashOn::Ip => Key::Ip,
            HashOn::Header(name) => Key::Header(HeaderName::from_bytes(name.as_bytes()).ok()),
            HashOn::Cookie(name) => Key::Cookie(name.as_str().into()),
            HashOn::Uri => Key::Uri,
        };
        let mut by_node: HashMap<SocketAddr, u32> = HashMap::new();
        let mut buckets = Vec::new();
        let mut positive = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            if t.weight == 0 {
                continue;
            }
            // Duplicate addresses are a config error, but must not make two
            // targets share (and so fight over) the same points.
            let mut salt = 0u32;
            let mut node = ring_node(&t.addr, salt);
            while by_node.contains_key(&node) {
                salt += 1;
                node = ring_node(&t.addr, salt);
            }
            by_node.insert(node, i as u32);
            buckets.push(Bucket::new(node, t.weight));
            positive.push(i as u32);
        }
        let ring = Continuum::new(&buckets);
        // The continuum exposes points as addresses; map each to its target
        // once here so the walk on the request path is a plain array scan.
        let mut owners = Vec::new();
        let mut at = 0usize;
        while let Some(node) = ring.get_addr(&mut at) {
            owners.push(by_node[node]);
            if at == 0 {
                break;
            }
        }
        ConsistentHash {
            key,
            ring,
            owners: owners.into(),
            positive: positive.into(),
            len: targets.len(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn pick(
        &self,
        ctx: &PickCtx<'_>,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.owners.is_empty() {
            return None;
        }
        let start = self.start(ctx);
        let all_tracked = self
            .positive
            .last()
            .is_some_and(|&i| (i as usize) < TRACKED);
        let mut rejected = [0u64; TRACKED / 64];
        let mut rejected_count = 0;
        let mut last_rejected = u32::MAX;
        let (tail, head) = (&self.owners[start..], &self.owners[..start]);
        for &owner in tail.iter().chain(head) {
            let i = owner as usize;
            if owner == last_rejected || (i < TRACKED && rejected[i / 64] & (1 << (i % 64)) != 0) {
                continue;
            }
            if eligible(i) {
                return Some(i);
            }
            last_rejected = owner;
            if i < TRACKED {
                rejected[i / 64] |= 1 << (i % 64);
                rejected_count += 1;
                if all_tracked && rejected_count == self.positive.len() {
                    return None;
                }
            }
        }
        // Only reachable if a target lost every point to hash collisions
        // with other targets' points; it may still be picked.
        self.positive
            .iter()
            .map(|&i| i as usize)
            .find(|&i| eligible(i))
    }

    /// The ring position of the request's key.
    fn start(&self, ctx: &PickCtx<'_>) -> usize {
        match &self.key {
            Key::Ip => {
                let mut buf = [0u8; IP_TEXT_MAX];
                let len = ip_text(ctx.client_ip, &mut buf);
                self.ring.node_idx(&buf[..len])
            }
            Key::Header(name) => {
                let value = name.as_ref().and_then(|n| ctx.headers.get(n));
                self.ring.node_idx(value.map_or(&b""[..], |v| v.as_bytes()))
            }
            Key::Cookie(name) => {
                let value = cookie_value(ctx.headers, name).unwrap_or("");
                self.ring.node_idx(value.as_bytes())
            }
            Key::Uri => self.ring.node_idx(ctx.path_and_query.as_bytes()),
        }
    }
}

/// Longest text form of an IP address: IPv6 in full, 39 bytes.
const IP_TEXT_MAX: usize = 48;

/// Writes the text form of `ip` (as nginx's `$remote_addr`, IPv4-mapped
/// IPv6 as IPv4) into `buf` and returns its length. IPv4 is written by hand
/// because the formatting machinery would cost more than the rest of the
/// pick.
fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> usize {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (k, octet) in v4.octets().into_iter().enumerate() {
                if k > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        v6 => {
            let mut rest = &mut buf[..];
            let ok = write!(rest, "{v6}").is_ok();
            debug_assert!(ok, "an IPv6 address fits in {IP_TEXT_MAX} bytes");
            IP_TEXT_MAX - rest.len()
        }
    }
}

/// The value of cookie `name`, from the first `Cookie` header that has it.
/// Parsing borrows the header: no allocation.
fn cookie_value<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        // Parsing costs about 100 ns a cookie; skip headers that cannot
        // hold the name, as for every visitor without the cookie yet.
        .filter(|v| v.contains(name))
        .find_map(|v| {
            Cookie::split_parse(v)
                .filter_map(Result::ok)
                .find(|c| c.name() == name)
                .map(|c| c.value_raw().unwrap_or(""))
        })
}

/// The address a target is known by on the ring; `salt` above 0 only for
/// duplicates.
fn ring_node(addr: &str, salt: u32) -> SocketAddr {
    if salt == 0
        && let Ok(sa) = addr.parse::<SocketAddr>()
    {
        return sa;
    }
    // FNV-1a, twice with different offsets for 128 bits: fixed across
    // builds, platforms and processes, unlike std's randomly keyed hasher.
    let fnv = |offset: u64| {
        let mut h = offset;
        for &b in addr.as_bytes().iter().chain(&salt.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let bits =
        (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x6c62_272e_07bb_0142));
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(bits)), 0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn targets(addrs: &[(&str, u32)]) -> Vec<TargetConfig> {
        addrs
            .iter()
            .map(|&(a, w)| TargetConfig {
                addr: a.to_string(),
                weight: w,
                region: String::new(),
                zone: String::new(),
            })
            .collect()
    }

    fn equal(n: usize) -> Vec<TargetConfig> {
        (0..n)
            .map(|i| TargetConfig {
                addr: format!("10.0.0.{}:8080", i + 1),
                weight: 1,
                region: String::new(),
                zone: String::new(),
            })
            .collect()
    }

    /// A reproducible set of distinct-looking keys.
    fn keys(n: usize) -> Vec<String> {
        let mut rng = fastrand::Rng::with_seed(9);
        (0..n)
            .map(|_| format!("/item/{}?v={}", rng.u64(..), rng.u32(..)))
            .collect()
    }

    fn pick_uri(b: &ConsistentHash, key: &str, eligible: &dyn Fn(usize) -> bool) -> usize {
        let headers = HeaderMap::new();
        let ctx = PickCtx {
            client_ip: Ipv4Addr::LOCALHOST.into(),
            headers: &headers,
            path_and_query: key,
        };
        b.pick(&ctx, eligible).unwrap()
    }

    fn assign(b: &ConsistentHash, keys: &[String]) -> Vec<usize> {
        keys.iter().map(|k| pick_uri(b, k, &|_| true)).collect()
    }

    #[test]
    fn same_key_same_target() {
        let b = ConsistentHash::new(&HashOn::Uri, &equal(5));
        let again = ConsistentHash::new(&HashOn::Uri, &equal(5));
        for k in keys(200) {
            let first = pick_uri(&b, &k, &|_| true);
            assert_eq!(pick_uri(&b, &k, &|_| true), first);
            // A separately built ring (another node, or after a reload)
            // agrees.
            assert_eq!(pick_uri(&again, &k, &|_| true), first);
        }
    }

    #[test]
    fn ip_literals_match_nginx_placement() {
        // Sample assignments nginx makes for these two servers (the same
        // sample pingora-ketama checks against).
        let b = ConsistentHash::new(
            &HashOn::Uri,
            &targets(&[("127.0.0.1:7777", 1), ("127.0.0.1:7778", 1)]),
        );
        assert_eq!(pick_uri(&b, "/some/path", &|_| true), 1);
        assert_eq!(pick_uri(&b, "/some/longer/path", &|_| true), 0);
        assert_eq!(pick_uri(&b, "/g", &|_| true), 0);
    }

    /// Shares of `keys` per target. With 160 points per unit of weight a
    /// target's share of the ring deviates from its weight share by about
    /// `1/sqrt(160 * weight)` relative (8% for weight 1), plus the sampling
    /// noise of the keys (under 2% relative at 10,000 keys). The bounds
    /// below are about 4 of those deviations; the ring and keys are fixed,
    /// so the outcome is reproducible.
    fn shares(b: &ConsistentHash, n: usize, keys: &[String]) -> Vec<f64> {
        let mut c = vec![0usize; n];
        for i in assign(b, keys) {
            c[i] += 1;
        }
        c.iter().map(|&x| x as f64 / keys.len() as f64).collect()
    }

    #[test]
    fn keys_spread_across_equal_targets() {
        let ks = keys(10_000);
        let b = ConsistentHash::new(&HashOn::Uri, &equal(4));
        for s in shares(&b, 4, &ks) {
            assert!((s - 0.25).abs() <= 0.25 * 0.35, "share {s}");
        }
    }

    #[test]
    fn keys_spread_by_weight() {
        let ks = keys(10_000);
        let b = ConsistentHash::new(
            &HashOn::Uri,
            &targets(&[
                ("a.internal:80", 1),
                ("b.internal:80", 3),
                ("c.internal:80", 0),
            ]),
        );
        let s = shares(&b, 3, &ks);
        assert!((s[0] - 0.25).abs() <= 0.25 * 0.35, "{s:?}");
        assert!((s[1] - 0.75).abs() <= 0.75 * 0.2, "{s:?}");
        assert_eq!(s[2], 0.0);
    }

    #[test]
    fn adding_a_target_moves_about_one_in_n_plus_one_keys() {
        // 4 -> 5 equal targets: the new target takes 1/5 of the ring in
        // expectation and every key that moves goes to it. Its share of
        // the ring deviates by about 8% relative (see `shares`), so 0.30
        // is far more than 6 deviations above 0.20.
        let ks = keys(10_000);
        let before = assign(&ConsistentHash::new(&HashOn::Uri, &equal(4)), &ks);
        let after = assign(&ConsistentHash::new(&HashOn::Uri, &equal(5)), &ks);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, 4, "a key moved between old targets");
                moved += 1;
            }
        }
        let moved = moved as f64 / ks.len() as f64;
        assert!(moved > 0.10 && moved <= 0.30, "moved {moved}");
    }

    #[test]
    fn order_of_targets_does_not_matter() {
        let ks = keys(2_000);
        let fwd = targets(&[("a:1", 1), ("b:1", 2), ("c:1", 1)]);
        let rev: Vec<_> = fwd.iter().rev().cloned().collect();
        let x = assign(&ConsistentHash::new(&HashOn::Uri, &fwd), &ks);
        let y = assign(&ConsistentHash::new(&HashOn::Uri, &rev), &ks);
        for (a, b) in x.iter().zip(&y) {
            assert_eq!(*a, 2 - *b);
        }
    }

    #[test]
    fn ineligible_target_keys_go_where_removal_would_send_them() {
        let ks = keys(5_000);
        let all = equal(5);
        let b = ConsistentHash::new(&HashOn::Uri, &all);
        let full = assign(&b, &ks);
        // Target 2 taken out of the config entirely...
        let without: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 2)
            .map(|(_, t)| t.clone())
            .collect();
        let removed = assign(&ConsistentHash::new(&HashOn::Uri, &without), &ks);
        // ...and target 2 merely ineligible agree on every key, and only
        // target 2's keys changed.
        for (k, (&f, &r)) in ks.iter().zip(full.iter().zip(&removed)) {
            let r = if r >= 2 { r + 1 } else { r };
            let got = pick_uri(&b, k, &|i| i != 2);
            assert_eq!(got, r);
            if f != 2 {
                assert_eq!(got, f);
            }
        }
    }

    #[test]
    fn walks_past_several_ineligible_targets() {
        let b = ConsistentHash::new(&HashOn::Uri, &equal(6));
        for k in keys(500) {
            assert_eq!(pick_uri(&b, &k, &|i| i == 5), 5);
        }
        let headers = HeaderMap::new();
        let ctx = PickCtx {
            client_ip: Ipv4Addr::LOCALHOST.into(),
            headers: &headers,
            path_and_query: "/",
        };
        assert_eq!(b.pick(&ctx, &|_| false), None);
    }

    #[test]
    fn many_targets_beyond_the_bitset() {
        let many: Vec<_> = (0..300)
            .map(|i| TargetConfig {
                addr: format!("host-{i}:80"),
                weight: 1,
                region: String::new(),
                zone: String::new(),
            })
            .collect();
        let b = ConsistentHash::new(&HashOn::Uri, &many);
        for k in keys(50) {
            assert_eq!(pick_uri(&b, &k, &|i| i == 299), 299);
            assert_eq!(pick_uri(&b, &k, &|i| i == 7), 7);
        }
    }

    #[test]
    fn duplicate_addresses_are_separate_targets() {
        let b = ConsistentHash::new(
            &HashOn::Uri,
            &targets(&[("10.0.0.1:80", 1), ("10.0.0.1:80", 1)]),
        );
        let s = shares(&b, 2, &keys(10_000));
        assert!(s[0] > 0.3 && s[1] > 0.3, "{s:?}");
    }

    fn ctx_parts(ip: IpAddr, headers: &[(&'static str, &str)]) -> (IpAddr, HeaderMap) {
        let mut map = HeaderMap::new();
        for &(k, v) in headers {
            map.append(k, HeaderValue::from_str(v).unwrap());
        }
        (ip, map)
    }

    fn pick_with(
        b: &ConsistentHash,
        ip: IpAddr,
        headers: &[(&'static str, &str)],
        uri: &str,
    ) -> usize {
        let (ip, headers) = ctx_parts(ip, headers);
        let ctx = PickCtx {
            client_ip: ip,
            headers: &headers,
            path_and_query: uri,
        };
        b.pick(&ctx, &|_| true).unwrap()
    }

    /// The target a plain URI ring gives `key`: the reference for keys taken
    /// from elsewhere, since only the bytes hashed matter.
    fn reference(key: &str) -> usize {
        pick_uri(&ConsistentHash::new(&HashOn::Uri, &equal(8)), key, &|_| {
            true
        })
    }

    #[test]
    fn ip_text_matches_display() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut ips: Vec<IpAddr> = ["0.0.0.0", "255.255.255.255", "10.0.9.99", "::", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ips.extend((0..2_000).map(|_| IpAddr::from(rng.u32(..).to_be_bytes())));
        ips.extend((0..2_000).map(|_| IpAddr::from(rng.u128(..).to_be_bytes())));
        ips.push(IpAddr::from([u16::MAX; 8]));
        for ip in ips {
            let mut buf = [0u8; IP_TEXT_MAX];
            let len = ip_text(ip, &mut buf);
            assert_eq!(&buf[..len], ip.to_canonical().to_string().as_bytes());
        }
    }

    #[test]
    fn ip_key_is_the_text_form() {
        let b = ConsistentHash::new(&HashOn::Ip, &equal(8));
        for ip in ["192.0.2.7", "198.51.100.200", "2001:db8::1", "10.1.2.3"] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(pick_with(&b, addr, &[], "/x"), reference(ip), "{ip}");
        }
        // An IPv4 client seen through a dual-stack socket is the same key.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(pick_with(&b, mapped, &[], "/"), reference("192.0.2.7"));
        // The path plays no part.
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(pick_with(&b, ip, &[], "/other"), reference("192.0.2.7"));
    }

    #[test]
    fn header_key_uses_the_first_value_and_empty_when_missing() {
        let b = ConsistentHash::new(&HashOn::Header("x-user".into()), &equal(8));
        let ip = Ipv4Addr::LOCALHOST.into();
        for user in ["alice", "bob", "carol", "dave", "eve"] {
            assert_eq!(pick_with(&b, ip, &[("x-user", user)], "/"), reference(user));
            assert_eq!(
                pick_with(&b, ip, &[("x-user", user), ("x-user", "zed")], "/"),
                reference(user)
            );
        }
        assert_eq!(
            pick_with(&b, ip, &[("x-other", "alice")], "/"),
            reference("")
        );
    }

    #[test]
    fn cookie_key_finds_the_cookie_in_any_cookie_header() {
        let b = ConsistentHash::new(&HashOn::Cookie("sid".into()), &equal(8));
        let ip = Ipv4Addr::LOCALHOST.into();
        for sid in ["s1", "s2", "abc%20def", "\"quoted\"", "x=y"] {
            let want = reference(sid);
            let one = format!("a=1; sid={sid}; b=2");
            assert_eq!(pick_with(&b, ip, &[("cookie", &one)], "/"), want, "{sid}");
            let later = format!("sid={sid}");
            assert_eq!(
                pick_with(&b, ip, &[("cookie", "a=1"), ("cookie", &later)], "/"),
                want
            );
        }
        // Absent, or only a cookie whose name merely contains ours.
        assert_eq!(pick_with(&b, ip, &[], "/"), reference(""));
        assert_eq!(
            pick_with(&b, ip, &[("cookie", "xsid=s1")], "/"),
            reference("")
        );
    }

    #[test]
    fn uri_key_includes_the_query() {
        let b = ConsistentHash::new(&HashOn::Uri, &equal(8));
        let ip = Ipv4Addr::LOCALHOST.into();
        for k in ["/a", "/a?x=1", "/a?x=2", "/b/c?d"] {
            assert_eq!(pick_with(&b, ip, &[], k), reference(k));
        }
    }

    #[test]
    fn ring_node_is_stable() {
        // Pinned: changing how names map to ring addresses would move every
        // key of every host-name target on upgrade, and nodes running
        // different versions would disagree.
        assert_eq!(
            ring_node("api.internal:8080", 0),
            "[549:b405:1c8f:1960:84cd:6d11:449d:6709]:0"
                .parse::<SocketAddr>()
                .unwrap()
        );
        assert_ne!(
            ring_node("api.internal:8080", 0),
            ring_node("api.internal:8080", 1)
        );
        assert_eq!(
            ring_node("10.0.0.1:80", 0),
            "10.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
    }
}
