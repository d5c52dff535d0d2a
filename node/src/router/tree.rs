//! The segment trie one host bucket keeps its paths in, and the sort key
//! that ranks candidates.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::compile::Seg;

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
    /// Config order: earlier wins. A rank that grows with the route's
    /// position rather than the position itself, so a table can be patched
    /// without renumbering the routes after an inserted one.
    pub(super) order: Reverse<u64>,
}

impl SortKey {
    /// Below every real key, so empty subtrees never look promising.
    pub(super) const MIN: SortKey = SortKey {
        priority: i32::MIN,
        kind: 0,
        literal_segments: 0,
        host: 0,
        conditions: 0,
        order: Reverse(u64::MAX),
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
    /// The route's slot in the table (stable while the route is unchanged).
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

/// Nodes with more literal children than this keep them in a hash map;
/// below it a binary search over a few short strings is faster than
/// hashing.
const INDEX_ABOVE: usize = 8;

/// A node's literal children. Children are shared (`Arc`) between the
/// tables of successive snapshots: patching a table copies only the nodes
/// on the paths it changes.
#[derive(Debug, Clone)]
enum Children {
    /// Sorted by segment, for binary search.
    Few(Vec<(Arc<str>, Arc<Node>)>),
    /// A wide node (a root with thousands of first segments).
    Many(FastMap<Arc<str>, Arc<Node>>),
}

/// A trie node: one path segment deep.
#[derive(Debug, Clone)]
pub(super) struct Node {
    statics: Children,
    pub(super) param: Option<Arc<Node>>,
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
            statics: Children::Few(Vec::new()),
            param: None,
            exact: Vec::new(),
            wild: Vec::new(),
            max: SortKey::MIN,
        }
    }
}

impl Node {
    /// Adds `entry` under `segs` (followed by `/*` when `wildcard`).
    ///
    /// Building a table from scratch appends (`sorted: false`) and calls
    /// [`Node::finish`] once at the end; patching a finished table inserts
    /// each entry at its place and raises the maxima on the way down
    /// (`sorted: true`), touching only the nodes on the path.
    pub(super) fn insert<'s>(
        &mut self,
        segs: impl Iterator<Item = &'s Seg>,
        wildcard: bool,
        entry: Entry,
        sorted: bool,
    ) {
        let mut node = self;
        for seg in segs {
            if sorted {
                node.max = node.max.max(entry.key);
            }
            node = match seg {
                Seg::Lit(l) => Arc::make_mut(node.static_child(l)),
                Seg::Param(_) => Arc::make_mut(node.param.get_or_insert_with(Arc::default)),
            };
        }
        let list = if wildcard {
            &mut node.wild
        } else {
            &mut node.exact
        };
        if sorted {
            node.max = node.max.max(entry.key);
            let at = list.partition_point(|e| e.key >= entry.key);
            list.insert(at, entry);
        } else {
            list.push(entry);
        }
    }

    /// Removes the entries of route slot `route` under `segs` (as inserted
    /// with the same arguments), dropping nodes left empty. Returns the
    /// best key removed. A node's maximum is recomputed only when that key
    /// was it: otherwise it is still exact, and a wide node is not walked.
    pub(super) fn remove(
        &mut self,
        segs: &[&Seg],
        wildcard: bool,
        route: usize,
    ) -> Option<SortKey> {
        let removed = match segs.split_first() {
            None => {
                let list = if wildcard {
                    &mut self.wild
                } else {
                    &mut self.exact
                };
                let best = list
                    .iter()
                    .filter(|e| e.route == route)
                    .map(|e| e.key)
                    .max();
                list.retain(|e| e.route != route);
                best
            }
            Some((Seg::Lit(l), rest)) => {
                let child = self.static_child_mut(l)?;
                let removed = Arc::make_mut(child).remove(rest, wildcard, route);
                if child.is_empty() {
                    self.remove_static(l);
                }
                removed
            }
            Some((Seg::Param(_), rest)) => {
                let child = self.param.as_mut()?;
                let removed = Arc::make_mut(child).remove(rest, wildcard, route);
                if child.is_empty() {
                    self.param = None;
                }
                removed
            }
        };
        if removed.is_some_and(|k| k >= self.max) {
            self.max = self.own_max();
        }
        removed
    }

    /// Whether nothing is stored here or below.
    pub(super) fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wild.is_empty()
            && self.param.is_none()
            && match &self.statics {
                Children::Few(v) => v.is_empty(),
                Children::Many(m) => m.is_empty(),
            }
    }

    /// The best key here and in the children, from their maxima.
    fn own_max(&self) -> SortKey {
        let mut max = SortKey::MIN;
        for list in [&self.exact, &self.wild] {
            if let Some(e) = list.first() {
                max = max.max(e.key);
            }
        }
        match &self.statics {
            Children::Few(v) => v.iter().for_each(|(_, c)| max = max.max(c.max)),
            Children::Many(m) => m.values().for_each(|c| max = max.max(c.max)),
        }
        if let Some(c) = &self.param {
            max = max.max(c.max);
        }
        max
    }

    /// The literal child for `seg`, added when missing (in order, so a
    /// node is always ready for lookups).
    fn static_child(&mut self, seg: &str) -> &mut Arc<Node> {
        if let Children::Few(v) = &mut self.statics
            && v.len() >= INDEX_ABOVE
            && v.binary_search_by(|(k, _)| (**k).cmp(seg)).is_err()
        {
            self.statics = Children::Many(std::mem::take(v).into_iter().collect());
        }
        match &mut self.statics {
            Children::Few(v) => {
                let i = match v.binary_search_by(|(k, _)| (**k).cmp(seg)) {
                    Ok(i) => i,
                    Err(i) => {
                        v.insert(i, (seg.into(), Arc::default()));
                        i
                    }
                };
                &mut v[i].1
            }
            Children::Many(m) => m.entry(seg.into()).or_default(),
        }
    }

    fn static_child_mut(&mut self, seg: &str) -> Option<&mut Arc<Node>> {
        match &mut self.statics {
            Children::Few(v) => {
                let i = v.binary_search_by(|(k, _)| (**k).cmp(seg)).ok()?;
                Some(&mut v[i].1)
            }
            Children::Many(m) => m.get_mut(seg),
        }
    }

    fn remove_static(&mut self, seg: &str) {
        match &mut self.statics {
            Children::Few(v) => v.retain(|(k, _)| &**k != seg),
            Children::Many(m) => {
                m.remove(seg);
            }
        }
    }

    /// Sorts candidates best first and computes subtree maxima; called once
    /// after the appends of a build from scratch.
    pub(super) fn finish(&mut self) -> SortKey {
        for list in [&mut self.exact, &mut self.wild] {
            list.sort_by_key(|e| Reverse(e.key));
            list.shrink_to_fit();
        }
        match &mut self.statics {
            Children::Few(v) => v.iter_mut().for_each(|(_, c)| {
                Arc::make_mut(c).finish();
            }),
            Children::Many(m) => {
                m.shrink_to_fit();
                m.values_mut().for_each(|c| {
                    Arc::make_mut(c).finish();
                })
            }
        }
        if let Some(c) = &mut self.param {
            Arc::make_mut(c).finish();
        }
        self.max = self.own_max();
        self.max
    }

    pub(super) fn static_child_of(&self, seg: &str) -> Option<&Node> {
        match &self.statics {
            Children::Few(v) => {
                let i = v.binary_search_by(|(k, _)| (**k).cmp(seg)).ok()?;
                v.get(i).map(|(_, c)| &**c)
            }
            Children::Many(m) => m.get(seg).map(|c| &**c),
        }
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
