//! Route matching: which configured route serves a request.
//!
//! [`Router::build`] compiles validated [`RouteConfig`]s into an immutable
//! table; [`Router::lookup`] finds the best route for a request without
//! allocating, locking, or running a regex unless a candidate has a regex
//! condition. This module owns host, path, method, header, query and API
//! version matching. It does not own what a route does once chosen
//! (upstreams, plugins, rewriting): the table stores an opaque payload `T`.
//!
//! # Patterns
//!
//! - Hosts: exact (`api.example.com`, case-insensitive) or wildcard
//!   (`*.example.com`: any host ending in `.example.com`, with one or more
//!   labels in front, so not `example.com` itself). No hosts means any
//!   host, including requests without one.
//! - Paths, compared on the request path as the proxy normalised it
//!   ([`crate::uri_path`]: unreserved characters decoded, every other
//!   percent-encoding as received, no dot segments): exact
//!   (`/a/b`), parameters (`/users/:id`, one whole non-empty segment) and a
//!   trailing wildcard (`/static/*`, which matches `/static`, `/static/`
//!   and everything below). A trailing slash is significant: `/a/` and
//!   `/a` are different paths.
//! - Methods (case-sensitive), header and query conditions (exact value,
//!   regex, present or absent). A header or argument sent several times
//!   passes when any of its values does. Query names and values are
//!   form-decoded (`+` and `%XX`) before comparing.
//! - API versions: `from: path` puts `/<value>` in front of each of the
//!   route's paths (and `strip: true` reports its length in
//!   [`RouteMatch::strip_len`]); `from: header` and `from: query` require
//!   the header or argument to equal the value. `default: true` also
//!   serves requests that state no version: for `path`, requests whose
//!   first segment is not the value of any path-versioned route in the
//!   table; for `header`/`query`, requests without that header/argument.
//!
//! # Which route wins
//!
//! Among all routes whose every condition matches, the winner is the one
//! with, in this order:
//!
//! 1. the highest `priority`;
//! 2. the most specific path: exact beats parameterised beats wildcard
//!    (a path with both a parameter and a wildcard counts as wildcard);
//!    within a kind, more literal segments before the first parameter or
//!    wildcard (for two paths that match the same request this is the
//!    same as more literal characters). A `from: path` version prefix
//!    counts as a literal segment;
//! 3. the most specific host: exact beats wildcard (longer suffix first)
//!    beats any host;
//! 4. more conditions: a non-empty method list counts as one, each header
//!    rule and each query rule as one, a version as one;
//! 5. the earlier route in config order.
//!
//! Each (route, path, host) combination gets this ranking as a precomputed
//! sort key at build time, so a lookup only compares keys.
//!
//! # How a lookup runs
//!
//! Routes are indexed by host (a hash map for exact hosts, one for wildcard
//! suffixes, and a bucket for routes without hosts), then by path in a
//! segment trie per bucket. A lookup searches the request host's exact
//! bucket, each wildcard suffix of the host, and the any-host bucket with
//! one shared best-so-far. In the trie it tries the literal child, then the
//! parameter child, then wildcard candidates, and backtracks when a node's
//! candidates fail their other conditions. Each node records the best key
//! in its subtree, so subtrees that cannot beat the current best are
//! skipped. Cost grows with path depth and with how many candidates share a
//! path, not with the number of routes.

mod compile;
mod tree;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cmp::Reverse;
use std::fmt;
use std::sync::Arc;

use crate::config::{ConfigErrors, Problems, RouteConfig};

pub use compile::RegexCache;
use compile::{CompiledRoute, HostPattern, PathPattern, Seg};
use tree::{Entry, FastMap, Node, SortKey, next_segment, path_specificity};

/// The parts of a request the router looks at.
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a http::Method,
    /// Host without port, lowercased by the caller; `None` when absent.
    pub host: Option<&'a str>,
    /// Path, normalised by [`crate::uri_path::normalize`] (other
    /// percent-encodings left as received).
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
}

/// A successful lookup.
pub struct RouteMatch<'r, T> {
    /// The value stored with the route.
    pub value: &'r T,
    /// Bytes at the start of the path to remove before proxying (a
    /// stripped version prefix such as `/v2`); 0 when nothing is stripped.
    /// What remains may be empty (`/v2` with a `/*` route), which the
    /// proxy forwards as `/`.
    pub strip_len: usize,
    index: usize,
    path_index: usize,
    params: &'r [(Box<str>, usize)],
}

impl<'r, T> RouteMatch<'r, T> {
    /// Position of the matched route in the `Vec` given to
    /// [`Router::build`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// Position, in the route's `paths`, of the path pattern that matched
    /// (for `http.route`).
    pub fn path_index(&self) -> usize {
        self.path_index
    }

    /// The value of path parameter `name` (`id` for `/users/:id`), taken
    /// from `path`, which must be the `path` of the request that was looked
    /// up. Values are raw, not percent-decoded.
    pub fn param<'p>(&self, name: &str, path: &'p str) -> Option<&'p str> {
        let (_, at) = self.params.iter().find(|(n, _)| &**n == name)?;
        segment(path, *at)
    }

    /// All path parameters as (name, value) pairs, in path order; `path`
    /// as for [`RouteMatch::param`].
    pub fn params<'p>(
        &self,
        path: &'p str,
    ) -> impl Iterator<Item = (&'r str, &'p str)> + use<'r, 'p, T> {
        let params: &'r [(Box<str>, usize)] = self.params;
        params
            .iter()
            .filter_map(move |(n, at)| Some((&**n, segment(path, *at)?)))
    }
}

/// Segment `i` of a path, counting from 0 after the leading `/`.
fn segment(path: &str, i: usize) -> Option<&str> {
    path.strip_prefix('/')?.split('/').nth(i)
}

impl<T> Clone for RouteMatch<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RouteMatch<'_, T> {}

impl<T: fmt::Debug> fmt::Debug for RouteMatch<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMatch")
            .field("value", self.value)
            .field("strip_len", &self.strip_len)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// One route's conditions in matching form: made once per route config
/// by [`Matcher::compile`] (which is also the route's validation), shared
/// by every table built while the route does not change.
#[derive(Clone)]
pub struct Matcher(Arc<CompiledRoute>);

impl Matcher {
    /// Checks `r` and compiles its conditions, or returns `None` after
    /// pushing every problem found (with its field path under `at`).
    pub(crate) fn compile(
        r: &RouteConfig,
        at: &str,
        p: &mut Problems,
        regexes: &mut RegexCache,
    ) -> Option<Matcher> {
        compile::compile(r, at, p, regexes).map(|c| Matcher(Arc::new(c)))
    }

    /// The identity of this compiled route: two matchers are the same
    /// route compiled once exactly when their addresses are equal.
    fn addr(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

/// An immutable table of routes.
#[derive(Clone)]
pub struct Router<T> {
    /// Payloads by route index (config order).
    values: Vec<T>,
    /// The routes by slot: a route keeps its slot, and the trie entries
    /// that point at it, while it is unchanged, however the routes around
    /// it move.
    slots: Vec<Option<Slot>>,
    exact_hosts: FastMap<Box<str>, Arc<Node>>,
    /// Keyed by the suffix after `*.`.
    suffix_hosts: FastMap<Box<str>, Arc<Node>>,
    /// Longest key of `suffix_hosts`: longer host suffixes need no lookup.
    max_suffix_len: usize,
    any_host: Arc<Node>,
    /// Values of every `from: path` version, to tell whether a request
    /// states a version (for `default: true`), with how many routes use
    /// each.
    path_versions: FastMap<Box<str>, u32>,
}

/// One route of a table.
#[derive(Clone)]
struct Slot {
    matcher: Matcher,
    /// Position in config order.
    index: usize,
    /// Grows with `index`; the config-order part of the route's sort keys.
    rank: u64,
}

/// Ranks of a table built from scratch are this far apart, so routes
/// inserted between two others later find free ranks (32 halvings at one
/// spot before the table is rebuilt).
const RANK_STEP: u64 = 1 << 32;

/// Where a candidate goes: which host bucket.
#[derive(Clone, Copy)]
enum Bucket<'a> {
    Any,
    Exact(&'a str),
    Suffix(&'a str),
}

// === impl Router ===

impl<T> Router<T> {
    /// Compiles routes; `routes` pairs each config with its payload, in
    /// config order. Problems are reported at `routes[i]`, `i` being the
    /// position in `routes`.
    pub fn build(routes: Vec<(&RouteConfig, T)>) -> Result<Self, ConfigErrors> {
        let mut problems = Problems::default();
        let mut compiled = Vec::with_capacity(routes.len());
        let mut regexes = RegexCache::default();
        for (i, (config, value)) in routes.into_iter().enumerate() {
            if let Some(c) =
                Matcher::compile(config, &format!("routes[{i}]"), &mut problems, &mut regexes)
            {
                compiled.push((c, value));
            }
        }
        if !problems.0.is_empty() {
            return Err(ConfigErrors(problems.0));
        }
        Router::from_compiled(compiled)
    }

    /// Builds the table from routes whose conditions are already compiled
    /// (each [`Matcher`] made once and reused while its route does not
    /// change), in config order.
    pub fn from_compiled(routes: Vec<(Matcher, T)>) -> Result<Self, ConfigErrors> {
        if u32::try_from(routes.len()).is_err() {
            return Err(ConfigErrors::one("routes", "too many routes"));
        }
        let (compiled, values): (Vec<Matcher>, Vec<T>) = routes.into_iter().unzip();
        let mut router = Router {
            values,
            ..Router::default()
        };
        router.slots = compiled
            .into_iter()
            .enumerate()
            .map(|(i, matcher)| {
                Some(Slot {
                    matcher,
                    index: i,
                    rank: (i as u64 + 1).saturating_mul(RANK_STEP),
                })
            })
            .collect();
        for slot in 0..router.slots.len() {
            router.add(slot, false);
        }
        for node in std::iter::once(&mut router.any_host)
            .chain(router.exact_hosts.values_mut())
            .chain(router.suffix_hosts.values_mut())
        {
            Arc::make_mut(node).finish();
        }
        router.exact_hosts.shrink_to_fit();
        router.suffix_hosts.shrink_to_fit();
        Ok(router)
    }

    /// The table for `routes` (in config order), made by patching `prev`:
    /// a route whose [`Matcher`] is the one `prev` has keeps its place in
    /// the trie, and only the routes that were added, changed or removed
    /// are taken out of or put into it. The nodes on their paths are
    /// copied; every other node is shared with `prev`. Lookups in the
    /// result answer as in the table [`Router::from_compiled`] would build,
    /// which it falls back to when many routes changed, when routes were
    /// reordered, or when no rank is left between two neighbours.
    pub fn update(prev: &Router<T>, routes: Vec<(Matcher, T)>) -> Result<Self, ConfigErrors> {
        let n = routes.len();
        if u32::try_from(n).is_err() {
            return Err(ConfigErrors::one("routes", "too many routes"));
        }
        let mut prev_slots: FastMap<usize, usize> = prev
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s.matcher.addr(), i)))
            .collect();
        let kept: Vec<Option<usize>> = routes
            .iter()
            .map(|(m, _)| prev_slots.remove(&m.addr()))
            .collect();
        let removed: Vec<usize> = prev_slots.into_values().collect();
        let added = kept.iter().filter(|k| k.is_none()).count();
        if added + removed.len() > (n / 4).max(16) {
            return Router::from_compiled(routes);
        }
        let rank_of = |slot: usize| prev.slots[slot].as_ref().map_or(0, |s| s.rank);
        let Some(ranks) = patch_ranks(&kept, rank_of) else {
            return Router::from_compiled(routes);
        };

        let (matchers, values): (Vec<Matcher>, Vec<T>) = routes.into_iter().unzip();
        let mut router = Router {
            values,
            slots: vec![None; prev.slots.len()],
            exact_hosts: prev.exact_hosts.clone(),
            suffix_hosts: prev.suffix_hosts.clone(),
            max_suffix_len: prev.max_suffix_len,
            any_host: prev.any_host.clone(),
            path_versions: prev.path_versions.clone(),
        };
        for &slot in &removed {
            if let Some(s) = &prev.slots[slot] {
                router.remove(slot, &s.matcher.0);
            }
        }
        let mut free = removed;
        let mut new_slots = Vec::with_capacity(added);
        for (index, ((matcher, slot), rank)) in
            matchers.into_iter().zip(kept).zip(ranks).enumerate()
        {
            let slot = match slot {
                Some(slot) => slot,
                None => {
                    let slot = free.pop().unwrap_or_else(|| {
                        router.slots.push(None);
                        router.slots.len() - 1
                    });
                    new_slots.push(slot);
                    slot
                }
            };
            router.slots[slot] = Some(Slot {
                matcher,
                index,
                rank,
            });
        }
        while router.slots.last().is_some_and(Option::is_none) {
            router.slots.pop();
        }
        for slot in new_slots {
            router.add(slot, true);
        }
        router.exact_hosts.retain(|_, node| !node.is_empty());
        router.suffix_hosts.retain(|_, node| !node.is_empty());
        router.max_suffix_len = router
            .suffix_hosts
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(0);
        Ok(router)
    }

    /// Puts the candidates of the route in `slot` into the trie: appended
    /// for a build from scratch, at their places when patching (`sorted`).
    fn add(&mut self, slot: usize, sorted: bool) {
        let Some(Slot { matcher, rank, .. }) = &self.slots[slot] else {
            return;
        };
        let route = matcher.0.clone();
        let order = Reverse(*rank);
        if let Some(v) = &route.path_version {
            *self.path_versions.entry(v.value.clone()).or_default() += 1;
        }
        let conditions = route.condition_count();
        for_each_candidate(&route, |bucket, host_rank, prefix, path, path_index| {
            let tree = match bucket {
                Bucket::Any => &mut self.any_host,
                Bucket::Exact(h) => self.exact_hosts.entry(h.into()).or_default(),
                Bucket::Suffix(s) => {
                    self.max_suffix_len = self.max_suffix_len.max(s.len());
                    self.suffix_hosts.entry(s.into()).or_default()
                }
            };
            let (kind, mut literal_segments) = path_specificity(&path.segs, path.wildcard);
            if prefix.is_some() {
                literal_segments = literal_segments.saturating_add(1);
            }
            let key = SortKey {
                priority: route.priority,
                kind,
                literal_segments,
                host: host_rank,
                conditions,
                order,
            };
            let params = prefix
                .into_iter()
                .chain(&path.segs)
                .enumerate()
                .filter_map(|(j, s)| match s {
                    Seg::Param(n) => Some((n.clone(), j)),
                    Seg::Lit(_) => None,
                })
                .collect();
            let (strip_len, unversioned_only) = match (&route.path_version, prefix) {
                (Some(v), Some(_)) if v.strip => (1 + v.value.len(), false),
                (Some(_), None) => (0, true),
                _ => (0, false),
            };
            Arc::make_mut(tree).insert(
                prefix.into_iter().chain(&path.segs),
                path.wildcard,
                Entry {
                    key,
                    route: slot,
                    path: path_index,
                    strip_len,
                    unversioned_only,
                    params,
                },
                sorted,
            );
        });
    }

    /// Takes the candidates of `route`, in `slot`, out of the trie.
    fn remove(&mut self, slot: usize, route: &CompiledRoute) {
        if let Some(v) = &route.path_version
            && let Some(count) = self.path_versions.get_mut(&v.value)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.path_versions.remove(&v.value);
            }
        }
        for_each_candidate(route, |bucket, _, prefix, path, _| {
            let tree = match bucket {
                Bucket::Any => Some(&mut self.any_host),
                Bucket::Exact(h) => self.exact_hosts.get_mut(h),
                Bucket::Suffix(s) => self.suffix_hosts.get_mut(s),
            };
            if let Some(tree) = tree {
                let segs: Vec<&Seg> = prefix.into_iter().chain(&path.segs).collect();
                Arc::make_mut(tree).remove(&segs, path.wildcard, slot);
            }
        });
    }

    /// Finds the best route for a request (see the module docs for the
    /// ranking). Does not allocate unless the host has upper-case letters
    /// or a regex query condition meets an encoded value.
    pub fn lookup<'r>(&'r self, req: &RequestView<'_>) -> Option<RouteMatch<'r, T>> {
        if !req.path.starts_with('/') {
            return None;
        }
        let mut search = Search {
            router: self,
            req,
            path_version_stated: None,
            best: None,
        };
        if let Some(host) = req.host {
            // The caller lowercases; this keeps a missed spot from turning
            // into a silent 404.
            let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(host.to_ascii_lowercase())
            } else {
                Cow::Borrowed(host)
            };
            if let Some(tree) = self.exact_hosts.get(&*host) {
                search.walk(tree, req.path);
            }
            if !self.suffix_hosts.is_empty() {
                // Leftmost dot first: longest suffix first, which tends to
                // find the better-ranked candidate early.
                for (i, b) in host.bytes().enumerate() {
                    // Slice only after a `.`: it is ASCII, so `i + 1` is a
                    // char boundary even in a host with non-ASCII bytes.
                    if b != b'.' || i == 0 {
                        continue;
                    }
                    let suffix = &host[i + 1..];
                    if suffix.len() <= self.max_suffix_len
                        && let Some(tree) = self.suffix_hosts.get(suffix)
                    {
                        search.walk(tree, req.path);
                    }
                }
            }
        }
        search.walk(&self.any_host, req.path);
        let e = search.best?;
        let index = self.slots.get(e.route)?.as_ref()?.index;
        Some(RouteMatch {
            value: self.values.get(index)?,
            strip_len: e.strip_len,
            index,
            path_index: e.path,
            params: &e.params,
        })
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The payloads in config order.
    pub fn values(&self) -> &[T] {
        &self.values
    }
}

impl<T> Default for Router<T> {
    /// A table without routes: every lookup misses.
    fn default() -> Self {
        Router {
            values: Vec::new(),
            slots: Vec::new(),
            exact_hosts: FastMap::default(),
            suffix_hosts: FastMap::default(),
            max_suffix_len: 0,
            any_host: Arc::default(),
            path_versions: FastMap::default(),
        }
    }
}

impl<T> fmt::Debug for Router<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.values.len())
            .field("exact_hosts", &self.exact_hosts.len())
            .field("wildcard_hosts", &self.suffix_hosts.len())
            .finish_non_exhaustive()
    }
}

/// Calls `f` for every (host bucket, path pattern) a route is indexed
/// under, with the host part of the sort key, the version segment put in
/// front of the path (`from: path`; `None` for the unversioned pattern of
/// `default: true` and for routes without a path version) and the path's
/// position in the route's `paths`.
fn for_each_candidate<'r>(
    route: &'r CompiledRoute,
    mut f: impl FnMut(Bucket<'r>, u32, Option<&'r Seg>, &'r PathPattern, usize),
) {
    let hosts: Vec<Option<&'r HostPattern>> = if route.hosts.is_empty() {
        vec![None]
    } else {
        route.hosts.iter().map(Some).collect()
    };
    for host in hosts {
        let (bucket, host_rank) = match host {
            None => (Bucket::Any, 0),
            Some(HostPattern::Exact(h)) => (Bucket::Exact(h), u32::MAX),
            Some(HostPattern::Suffix(s)) => {
                let rank = u32::try_from(s.len())
                    .map_or(u32::MAX - 1, |l| l.saturating_add(1).min(u32::MAX - 1));
                (Bucket::Suffix(s), rank)
            }
        };
        for (path_index, path) in route.paths.iter().enumerate() {
            match &route.path_version {
                None => f(bucket, host_rank, None, path, path_index),
                Some(v) => {
                    f(bucket, host_rank, Some(&v.segment), path, path_index);
                    if v.default {
                        f(bucket, host_rank, None, path, path_index);
                    }
                }
            }
        }
    }
}

/// The ranks of the routes of a patched table, in config order: a kept
/// route (`kept[i]` is its slot in the old table) keeps its rank, and the
/// routes between two kept ones share the ranks between theirs. `None`
/// when kept ranks are out of order (routes were reordered) or there is no
/// room between two of them.
fn patch_ranks(kept: &[Option<usize>], rank_of: impl Fn(usize) -> u64) -> Option<Vec<u64>> {
    let mut ranks = Vec::with_capacity(kept.len());
    let mut lo = 0u64;
    let mut i = 0;
    while i < kept.len() {
        if let Some(slot) = kept[i] {
            let rank = rank_of(slot);
            if rank <= lo {
                return None;
            }
            ranks.push(rank);
            lo = rank;
            i += 1;
            continue;
        }
        let j = kept[i..]
            .iter()
            .position(Option::is_some)
            .map_or(kept.len(), |p| i + p);
        let new = (j - i) as u64;
        let hi = match kept.get(j).copied().flatten() {
            Some(slot) => rank_of(slot),
            None => lo.saturating_add(new.saturating_add(1).saturating_mul(RANK_STEP)),
        };
        let step = hi.checked_sub(lo)? / (new + 1);
        if step == 0 {
            return None;
        }
        for t in 1..=new {
            ranks.push(lo + step * t);
        }
        lo += step * new;
        i = j;
    }
    Some(ranks)
}

/// One lookup's state: the best candidate so far, shared across host
/// buckets so that each bucket's search can prune against it.
struct Search<'r, 'q, T> {
    router: &'r Router<T>,
    req: &'q RequestView<'q>,
    /// Whether the first path segment is a known path version; computed
    /// the first time an unversioned-only candidate needs it.
    path_version_stated: Option<bool>,
    best: Option<&'r Entry>,
}

impl<'r, T> Search<'r, '_, T> {
    fn walk(&mut self, node: &'r Node, rest: &str) {
        if self.best.is_some_and(|b| node.max <= b.key) {
            return;
        }
        match next_segment(rest) {
            None => {
                self.consider(&node.exact);
                self.consider(&node.wild);
            }
            Some((seg, tail)) => {
                if let Some(child) = node.static_child_of(seg) {
                    self.walk(child, tail);
                }
                if !seg.is_empty()
                    && let Some(child) = &node.param
                {
                    self.walk(child, tail);
                }
                self.consider(&node.wild);
            }
        }
    }

    /// `entries` is sorted best first, so the first one that passes is the
    /// best here, and nothing after one that cannot beat `best` can either.
    fn consider(&mut self, entries: &'r [Entry]) {
        for e in entries {
            if self.best.is_some_and(|b| e.key <= b.key) {
                return;
            }
            if self.accepts(e) {
                self.best = Some(e);
                return;
            }
        }
    }

    fn accepts(&mut self, e: &Entry) -> bool {
        if e.unversioned_only && self.path_version_stated() {
            return false;
        }
        let req = self.req;
        self.router.slots.get(e.route).is_some_and(|s| {
            s.as_ref().is_some_and(|s| {
                s.matcher
                    .0
                    .conditions
                    .matches(req.method, req.headers, req.query)
            })
        })
    }

    fn path_version_stated(&mut self) -> bool {
        let versions = &self.router.path_versions;
        let path = self.req.path;
        *self.path_version_stated.get_or_insert_with(|| {
            next_segment(path).is_some_and(|(first, _)| versions.contains_key(first))
        })
    }
}

/// Checks a route's match conditions (paths, hosts, methods, headers,
/// query, version); problems are pushed with field paths under `at`.
#[cfg(test)]
pub(crate) fn validate_route(r: &RouteConfig, at: &str, p: &mut Problems) {
    let _ = compile::compile(r, at, p, &mut compile::RegexCache::default());
}
