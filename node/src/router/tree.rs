//! The segment trie one host bucket keeps its paths in, and the sort key
//! that ranks candidates.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::compile::{PathPattern, Seg};

/// Ranks one (route, path, host bucket) candidate; larger wins. Field order
/// is the tie-break order documented in the module docs, so the derived
/// lexicographic `Ord` is the whole ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SortKey {
    pub(super) priority: i32,
    /// 2 exact, 1 parameterised, 0 wildcard.
    pub(super) kind: u8,
    /// Literal segments before the first parameter or wildcard. Two
    /// patterns that match one request share those segments, so counting
    /// literal bytes instead would give the same order.
    pub(super) literal_segments: u32,
    /// 0 any host, 1 + suffix length for a wildcard, `u32::MAX` exact.
    pub(super) host: u32,
    pub(super) conditions: u32,
    /// Config order: earlier wins.
    pub(super) order: Reverse<u32>,
}

impl SortKey {
    /// Below every real key, so empty subtrees never look promising.
    pub(super) const MIN: SortKey = SortKey {
        priority: i32::MIN,
        kind: 0,
        literal_segments: 0,
        host: 0,
        conditions: 0,
        order: Reverse(u32::MAX),
    };
}

/// The path part of the sort key: (kind, literal segments).
pub(super) fn path_specificity(segs: &[Seg], wildcard: bool) -> (u8, u32) {
    let first_param = segs.iter().position(|s| matches!(s, Seg::Param(_)));
    let kind = match (first_param, wildcard) {
        (_, true) => 0,
        (Some(_), false) => 1,
        (None, false) => 2,
    };
    let literal = first_param.unwrap_or(segs.len());
    (kind, u32::try_from(literal).unwrap_or(u32::MAX))
}

/// One candidate stored at a trie node.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key: SortKey,
    pub(super) route: usize,
    /// Which of the route's `paths` this entry was built from.
    pub(super) path: usize,
    /// Bytes to strip from the front of the path (a version prefix).
    pub(super) strip_len: usize,
    /// Matches only requests that state no path version (`default: true`
    /// of a `from: path` version).
    pub(super) unversioned_only: bool,
    /// Parameter names with the index of the path segment they take.
    pub(super) params: Box<[(Box<str>, usize)]>,
}

/// Nodes with more literal children than this get a hash index; below it
/// a binary search over a few short strings is faster than hashing.
const INDEX_ABOVE: usize = 8;

/// A trie node: one path segment deep.
#[derive(Debug, Clone)]
pub(super) struct Node {
    /// Literal children, sorted by segment for binary search.
    pub(super) statics: Vec<(Box<str>, Node)>,
    /// Position in `statics` by segment, for wide nodes (a root with
    /// thousands of first segments).
    index: Option<FastMap<Box<str>, usize>>,
    pub(super) param: Option<Box<Node>>,
    /// Candidates whose pattern ends at this node; best first.
    pub(super) exact: Vec<Entry>,
    /// Candidates whose pattern is this node followed by `/*`; best first.
    pub(super) wild: Vec<Entry>,
    /// The best key anywhere in this subtree, so a search can skip
    /// subtrees that cannot beat what it already found.
    pub(super) max: SortKey,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            statics: Vec::new(),
            index: None,
            param: None,
            exact: Vec::new(),
            wild: Vec::new(),
            max: SortKey::MIN,
        }
    }
}

impl Node {
    /// Adds `entry` under the segments of `path`.
    pub(super) fn insert(&mut self, path: &PathPattern, entry: Entry) {
        let mut node = self;
        for seg in &path.segs {
            node = match seg {
                Seg::Lit(l) => node.static_child(l),
                Seg::Param(_) => node.param.get_or_insert_with(Box::default),
            };
        }
        if path.wildcard {
            node.wild.push(entry)
        } else {
            node.exact.push(entry)
        }
    }

    /// The literal child for `seg`, added when missing. While a table is
    /// built children are appended unsorted (a wide node is found through
    /// `index`), and [`Node::finish`] sorts them once: inserting in order
    /// would move half the children on every insert, quadratic in the
    /// width of a node such as a root with thousands of first segments.
    fn static_child(&mut self, seg: &str) -> &mut Node {
        let found = match &self.index {
            Some(index) => index.get(seg).copied(),
            None => self.statics.iter().position(|(k, _)| &**k == seg),
        };
        let i = match found {
            Some(i) => i,
            None => {
                let i = self.statics.len();
                self.statics.push((seg.into(), Node::default()));
                if let Some(index) = &mut self.index {
                    index.insert(seg.into(), i);
                } else if self.statics.len() > INDEX_ABOVE {
                    self.index = Some(
                        self.statics
                            .iter()
                            .enumerate()
                            .map(|(i, (seg, _))| (seg.clone(), i))
                            .collect(),
                    );
                }
                i
            }
        };
        &mut self.statics[i].1
    }

    /// Sorts candidates best first and computes subtree maxima; called once
    /// after all inserts.
    pub(super) fn finish(&mut self) -> SortKey {
        let mut max = SortKey::MIN;
        for list in [&mut self.exact, &mut self.wild] {
            list.sort_by_key(|e| Reverse(e.key));
            list.shrink_to_fit();
            if let Some(e) = list.first() {
                max = max.max(e.key);
            }
        }
        self.statics.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, child) in &mut self.statics {
            max = max.max(child.finish());
        }
        self.statics.shrink_to_fit();
        self.index = (self.statics.len() > INDEX_ABOVE).then(|| {
            self.statics
                .iter()
                .enumerate()
                .map(|(i, (seg, _))| (seg.clone(), i))
                .collect()
        });
        if let Some(child) = &mut self.param {
            max = max.max(child.finish());
        }
        self.max = max;
        max
    }

    pub(super) fn static_child_of(&self, seg: &str) -> Option<&Node> {
        let i = match &self.index {
            Some(index) => *index.get(seg)?,
            None => self
                .statics
                .binary_search_by(|(k, _)| (**k).cmp(seg))
                .ok()?,
        };
        self.statics.get(i).map(|(_, node)| node)
    }
}

/// Splits the next segment off a path remainder: `/a/b` gives `a` and
/// `/b`; `/` gives `` and ``; `` gives nothing.
pub(super) fn next_segment(rest: &str) -> Option<(&str, &str)> {
    let body = rest.strip_prefix('/')?;
    Some(match body.find('/') {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    })
}

/// A hash map keyed by config strings (hosts, path segments) and probed
/// with request strings.
pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The set flavour of [`FastMap`].
pub(super) type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// A multiply-rotate hasher in the style of rustc's `FxHasher`: a few
/// cycles per 8 bytes, against tens of nanoseconds for SipHash on every
/// lookup. Flooding resistance is not needed here: the keys come from
/// config, and a request can only probe the table, never add to it, so a
/// crafted colliding host costs one extra comparison at most per probe.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// The multiply leaves the low bits weakly mixed and the table picks
    /// buckets from them, so rotate the well-mixed high bits down.
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}
