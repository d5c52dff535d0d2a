//! A consumer's own limits: `plugins:` on a consumer, restricted to the
//! limit plugins, compiled with the same parsers as a route's. On a route
//! with a limit of the same type, the consumer's instance decides instead
//! of the route's once an auth plugin has named the consumer.

use std::sync::Arc;

use super::{BuildEnv, Plugin, PluginMap, RequestCtx, lookup};
use crate::config::{Config, Problems};
use crate::consumer::Consumers;
use crate::stores::{BuildStores, Owner};

/// The plugins a consumer may carry.
pub const CONSUMER_PLUGINS: &[&str] = &["limit-count", "limit-req", "limit-conn"];

/// A consumer's compiled limit plugins, by plugin name.
#[derive(Clone, Default)]
pub struct ConsumerLimits(Vec<(&'static str, Arc<dyn Plugin>)>);

impl std::fmt::Debug for ConsumerLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

impl ConsumerLimits {
    /// The consumer's own instance of the plugin `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, p)| p)
    }
}

/// The consumer's own instance of `name` for this request, when an auth
/// plugin set a consumer that has one.
pub(super) fn consumer_limit(ctx: &RequestCtx, name: &str) -> Option<Arc<dyn Plugin>> {
    ctx.consumer.as_ref()?.limits.get(name).cloned()
}

/// Compiles a consumer's `plugins:` map (`at` is its config path). A
/// plugin outside [`CONSUMER_PLUGINS`] or a bad config is a problem named
/// by its path. Without a `key`, a consumer's limit counts per consumer
/// and route (`[consumer, route]`).
pub(crate) fn consumer_limits(
    name: &str,
    map: &PluginMap,
    at: &str,
    config: &Config,
    stores: &BuildStores,
    p: &mut Problems,
) -> ConsumerLimits {
    let env = BuildEnv {
        consumers: Arc::new(Consumers::default()),
        settings: Arc::new(config.settings.clone()),
        consumer_level: true,
        stores: stores.clone(),
        owner: Owner::Consumer(name.to_string()),
        redis: super::redis_target(config),
    };
    let mut out = Vec::new();
    for (name, value) in map {
        let here = format!("{at}.{name}");
        let Some(def) = lookup(name).filter(|d| CONSUMER_PLUGINS.contains(&d.name)) else {
            p.push(
                here,
                format!(
                    "`{name}` cannot be set on a consumer; only {} can",
                    CONSUMER_PLUGINS.join(", ")
                ),
            );
            continue;
        };
        let mut value = if value.is_null() {
            serde_yaml_ng::Value::Mapping(Default::default())
        } else {
            value.clone()
        };
        if let serde_yaml_ng::Value::Mapping(m) = &mut value
            && !m.contains_key("key")
        {
            m.insert(
                "key".into(),
                serde_yaml_ng::Value::Sequence(vec!["consumer".into(), "route".into()]),
            );
        }
        match (def.build)(&value, &env) {
            Ok(plugin) => out.push((def.name, plugin)),
            Err(problems) => {
                for (field, reason) in problems {
                    let path = if field.is_empty() {
                        here.clone()
                    } else {
                        format!("{here}.{field}")
                    };
                    p.push(path, reason);
                }
            }
        }
    }
    ConsumerLimits(out)
}
