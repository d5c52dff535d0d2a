//! The node's limit and cache state across snapshot builds (ADR 0030).
//!
//! [`Stores`] is owned by the running gateway (`snapshot::State`) and
//! outlives every snapshot; each build gets a [`BuildStores`] handle
//! through the plugins' build environment, and a plugin asks it for its
//! counter store, in-flight table, cache store and collapser instead of
//! constructing them. A limit is named by a
//! [`LimitId`]: where it is configured ([`Owner`]), its plugin, and a
//! fingerprint of its own config, so an unchanged limit keeps its counts
//! across reloads and admin writes and a changed one starts fresh.
//!
//! Which stores are behind the handle is decided when [`Stores`] is made:
//! node-local for `scope: node`, credit stores settling over the mesh for
//! `scope: region | cluster` (`cluster_limits`); the limiter
//! and cache machinery live in `weir-limits` and `weir-cache`.

use std::sync::Arc;

use std::sync::Mutex;

use crate::cluster_limits::{ClusterLimits, Scope, ScopeProvider};
use crate::redis_limits::{PerRequest, RedisLimits, RedisUse};
use weir_cache::{CacheStore, CacheStores, Collapse};
use weir_limits::conn::InFlight;
use weir_limits::{BuildMark, CounterSpec, CounterStore, LimitId, LimitStores, LocalProvider};
use weir_storage::redis_store::RedisSettings;

/// The limit and cache state of one running gateway.
pub struct Stores {
    limits: LimitStores,
    /// Limits with `scope: region` and `scope: cluster`, in that order.
    shared: [LimitStores; 2],
    cluster: Arc<ClusterLimits>,
    redis: RedisLimits,
    cache: CacheStores,
}

impl Default for Stores {
    /// Node-local limits and cache.
    fn default() -> Self {
        Stores::new(
            LimitStores::new(Arc::new(LocalProvider)),
            CacheStores::default(),
        )
    }
}

impl Stores {
    /// State kept by `limits` and `cache`.
    pub fn new(limits: LimitStores, cache: CacheStores) -> Stores {
        let cluster = Arc::new(ClusterLimits::default());
        let shared = [Scope::Region, Scope::Cluster]
            .map(|s| LimitStores::new(Arc::new(ScopeProvider::new(cluster.clone(), s))));
        Stores {
            limits,
            shared,
            cluster,
            redis: RedisLimits::default(),
            cache,
        }
    }

    /// The cluster-wide limits (attached to the cluster once it runs).
    pub fn cluster_limits(&self) -> &Arc<ClusterLimits> {
        &self.cluster
    }

    /// Starts a snapshot build.
    pub fn begin(self: &Arc<Self>) -> BuildStores {
        BuildStores {
            limits_mark: self.limits.begin(),
            shared_marks: [self.shared[0].begin(), self.shared[1].begin()],
            cache_mark: self.cache.begin(),
            redis: Arc::default(),
            stores: self.clone(),
        }
    }

    /// The snapshot built with `build` is published: drops what no build
    /// since then asked for (removed or changed limits, an old cache
    /// capacity).
    pub fn published(&self, build: &BuildStores) {
        self.limits.sweep(build.limits_mark);
        for (s, mark) in self.shared.iter().zip(build.shared_marks) {
            s.sweep(mark);
        }
        self.cache.sweep(build.cache_mark);
        self.redis.published(lock(&build.redis).as_ref());
    }

    /// The limits with `store: redis`.
    pub fn redis(&self) -> &RedisLimits {
        &self.redis
    }

    /// The limit state.
    pub fn limits(&self) -> &LimitStores {
        &self.limits
    }

    /// The response-cache stores and collapser.
    pub fn cache(&self) -> &CacheStores {
        &self.cache
    }
}

/// One build's handle on the node's [`Stores`].
#[derive(Clone)]
pub struct BuildStores {
    stores: Arc<Stores>,
    limits_mark: BuildMark,
    shared_marks: [BuildMark; 2],
    cache_mark: u64,
    /// The build's use of Redis, from its first `store: redis` limit on.
    redis: Arc<Mutex<Option<RedisUse>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BuildStores {
    /// A handle on fresh node-local stores that nothing else sees, for
    /// checking a config without touching a running gateway's state
    /// (`weir validate`, the admin preview).
    pub fn scratch() -> BuildStores {
        Arc::new(Stores::default()).begin()
    }

    /// The counter store of the limit `id`.
    pub fn counters(&self, id: &LimitId, spec: &CounterSpec) -> Arc<dyn CounterStore> {
        self.stores.limits.counters(self.limits_mark, id, spec)
    }

    /// The counter store of the limit `id` shared over `scope`.
    pub fn counters_in(
        &self,
        id: &LimitId,
        spec: &CounterSpec,
        scope: Scope,
    ) -> Arc<dyn CounterStore> {
        match scope {
            Scope::Node => self.counters(id, spec),
            Scope::Region => self.stores.shared[0].counters(self.shared_marks[0], id, spec),
            Scope::Cluster => self.stores.shared[1].counters(self.shared_marks[1], id, spec),
        }
    }

    /// The build's use of the Redis of `settings` (this node in
    /// `region`), or why it cannot be used (a password that cannot be
    /// read). `None` where no runtime runs (a config check): the limit
    /// then counts on this node.
    fn redis_use(
        &self,
        settings: &RedisSettings,
        region: &str,
    ) -> Result<Option<RedisUse>, String> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(None);
        }
        let mut used = lock(&self.redis);
        if let Some(u) = used.as_ref() {
            return Ok(Some(u.clone()));
        }
        let u = self
            .stores
            .redis
            .begin(settings, region, &self.stores.cluster)?;
        *used = Some(u.clone());
        Ok(Some(u))
    }

    /// The counter store of the limit `id` shared over `scope` through
    /// the Redis of `settings` (credit settled in the background).
    pub fn redis_counters(
        &self,
        settings: &RedisSettings,
        region: &str,
        id: &LimitId,
        spec: &CounterSpec,
        scope: Scope,
    ) -> Result<Arc<dyn CounterStore>, String> {
        Ok(match self.redis_use(settings, region)? {
            Some(u) => u.counters(id, spec, scope),
            None => self.counters(id, spec),
        })
    }

    /// The `sync: per_request` counter of the limit `id` over `scope`
    /// through the Redis of `settings`; `None` where no runtime runs.
    pub fn redis_per_request(
        &self,
        settings: &RedisSettings,
        region: &str,
        id: &LimitId,
        spec: &CounterSpec,
        scope: Scope,
    ) -> Result<Option<PerRequest>, String> {
        let Some(u) = self.redis_use(settings, region)? else {
            return Ok(None);
        };
        let share = self
            .stores
            .cluster
            .share(scope)
            .unwrap_or_else(|| weir_limits::credit::FairShare::new(weir_limits::Scale::FULL));
        Ok(Some(u.per_request(
            id,
            scope,
            self.counters(id, spec),
            share,
        )))
    }

    /// The in-flight table of the limit `id`.
    pub fn in_flight(&self, id: &LimitId) -> Arc<InFlight> {
        self.stores.limits.in_flight(self.limits_mark, id)
    }

    /// The node's response store of `max_bytes` capacity.
    pub fn cache_store(&self, max_bytes: u64) -> Arc<dyn CacheStore> {
        self.stores.cache.store(self.cache_mark, max_bytes)
    }

    /// The node's collapser.
    pub fn collapse(&self) -> Arc<dyn Collapse> {
        self.stores.cache.collapse().clone()
    }
}

/// Where a `plugins:` map is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The top-level `plugins:`.
    Global,
    /// A service's `plugins:`, by service id.
    Service(String),
    /// A route's `plugins:`, by route id.
    Route(String),
    /// A consumer's own `plugins:`, by consumer name.
    Consumer(String),
}

impl Owner {
    fn label(&self) -> String {
        match self {
            Owner::Global => "global".into(),
            Owner::Service(id) => format!("service:{id}"),
            Owner::Route(id) => format!("route:{id}"),
            Owner::Consumer(name) => format!("consumer:{name}"),
        }
    }
}

/// The id of the limit that the plugin `plugin` configured at `owner`
/// with `config` keeps its state under. Two configs that differ only in
/// the order of mapping keys have the same id.
pub fn limit_id(owner: &Owner, plugin: &str, config: &serde_yaml_ng::Value) -> LimitId {
    let mut canon = String::new();
    canonical(config, &mut canon);
    LimitId {
        owner: owner.label().into(),
        plugin: plugin.into(),
        config: weir_limits::store::fingerprint(canon.as_bytes()),
    }
}

/// Writes `v` with mapping keys sorted, every scalar tagged by its kind,
/// so equal configs write equal strings.
fn canonical(v: &serde_yaml_ng::Value, out: &mut String) {
    use serde_yaml_ng::Value;
    match v {
        Value::Null => out.push('~'),
        Value::Bool(b) => out.push_str(if *b { "T" } else { "F" }),
        Value::Number(n) => {
            out.push('#');
            out.push_str(&n.to_string());
        }
        Value::String(s) => {
            // Length-prefixed, so no content can fake a separator.
            out.push_str(&format!("s{}:", s.len()));
            out.push_str(s);
        }
        Value::Sequence(items) => {
            out.push('[');
            for i in items {
                canonical(i, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Mapping(m) => {
            let mut entries: Vec<(String, &Value)> = m
                .iter()
                .map(|(k, v)| {
                    let mut key = String::new();
                    canonical(k, &mut key);
                    (key, v)
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (k, v) in entries {
                out.push_str(&k);
                out.push('=');
                canonical(v, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Tagged(t) => {
            out.push('!');
            out.push_str(&t.tag.to_string());
            canonical(&t.value, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn a_limit_is_named_by_owner_plugin_and_its_own_config() {
        let route = Owner::Route("r1".into());
        let a = limit_id(&route, "limit-count", &yaml("{count: 2, time_window: 60s}"));
        let reordered = limit_id(&route, "limit-count", &yaml("{time_window: 60s, count: 2}"));
        assert_eq!(a, reordered, "key order is not a change");
        assert_eq!(&*a.owner, "route:r1");
        let changed = limit_id(&route, "limit-count", &yaml("{count: 3, time_window: 60s}"));
        assert_ne!(a.config, changed.config);
        let as_string = limit_id(
            &route,
            "limit-count",
            &yaml("{count: '2', time_window: 60s}"),
        );
        assert_ne!(a.config, as_string.config, "a string is not a number");
        let elsewhere = limit_id(
            &Owner::Service("r1".into()),
            "limit-count",
            &yaml("{count: 2, time_window: 60s}"),
        );
        assert_ne!(a, elsewhere);
    }

    #[test]
    fn a_build_handle_reaches_the_same_state_until_it_is_swept() {
        let stores = Arc::new(Stores::default());
        let id = limit_id(&Owner::Global, "limit-conn", &yaml("{max: 1}"));
        let b1 = stores.begin();
        let t = b1.in_flight(&id);
        stores.published(&b1);
        let b2 = stores.begin();
        assert!(Arc::ptr_eq(&t, &b2.in_flight(&id)));
        assert!(Arc::ptr_eq(&b1.cache_store(1000), &b2.cache_store(1000)));
        stores.published(&b2);
        let b3 = stores.begin();
        stores.published(&b3);
        assert!(!stores.limits().is_empty(), "still held");
        drop(t);
        stores.published(&b3);
        assert!(stores.limits().is_empty(), "unused by the last build");
        assert_eq!(stores.cache().stats(), (0, 0));
        // Scratch handles never touch a running node's state.
        BuildStores::scratch().in_flight(&id);
        assert!(stores.limits().is_empty());
    }
}
