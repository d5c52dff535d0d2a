//! A builder for the gateway configs whole-gateway tests write.
//!
//! [`GatewayConfig`] assembles the YAML document a test hands to
//! [`crate::Gateway`]: upstreams, routes, services, consumers and global
//! plugins in the order they are added, so error paths such as
//! `routes[2]` mean what they meant in hand-written YAML. Plugin and field
//! values are given as YAML text (`"{count: 3, time_window: 60s}"`) or as
//! `serde_json::Value`, whichever reads better; see [`ToYaml`].
//!
//! It owns the document's shape only. It does not know the gateway's
//! schema: nothing is checked here, a wrong key reaches the gateway as is,
//! and the listeners are forced onto loopback by [`crate::Gateway::config`],
//! not by this builder.

use serde_yaml_ng::{Mapping, Value};

/// A value that can stand in the config: YAML text (`&str`, `String`,
/// parsed), a `serde_json::Value` or a `serde_yaml_ng::Value`.
pub trait ToYaml {
    /// The value as YAML.
    ///
    /// # Panics
    /// If YAML text does not parse: a test's own config is wrong.
    fn to_yaml(self) -> Value;
}

impl ToYaml for &str {
    fn to_yaml(self) -> Value {
        serde_yaml_ng::from_str(self)
            .unwrap_or_else(|e| panic!("test config value is not valid YAML: {e}\n{self}"))
    }
}

impl ToYaml for String {
    fn to_yaml(self) -> Value {
        self.as_str().to_yaml()
    }
}

impl ToYaml for serde_json::Value {
    fn to_yaml(self) -> Value {
        serde_yaml_ng::to_value(self).expect("a JSON value is a YAML value")
    }
}

impl ToYaml for Value {
    fn to_yaml(self) -> Value {
        self
    }
}

/// A gateway config document; see the module docs.
///
/// ```
/// use weir_testsupport::{GatewayConfig, Route};
/// let yaml = GatewayConfig::new()
///     .upstream("u", "127.0.0.1:8080")
///     .route(
///         Route::new("counted", "/counted")
///             .upstream("u")
///             .plugin("limit-count", "{count: 3, time_window: 60s}"),
///     )
///     .to_yaml();
/// assert!(yaml.contains("limit-count"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    doc: Mapping,
}

impl GatewayConfig {
    /// An empty document.
    pub fn new() -> GatewayConfig {
        GatewayConfig::default()
    }

    /// An upstream `id` with one target at `addr`.
    pub fn upstream(self, id: &str, addr: impl std::fmt::Display) -> GatewayConfig {
        let mut target = Mapping::new();
        target.insert("addr".into(), addr.to_string().into());
        let mut upstream = Mapping::new();
        upstream.insert("id".into(), id.into());
        upstream.insert("targets".into(), Value::Sequence(vec![target.into()]));
        self.push("upstreams", upstream.into())
    }

    /// An upstream written out in full (`{id: x, targets: [...], retries: 0}`).
    pub fn upstream_spec(self, spec: impl ToYaml) -> GatewayConfig {
        self.push("upstreams", spec.to_yaml())
    }

    /// A route, after the ones added before.
    pub fn route(self, route: Route) -> GatewayConfig {
        self.push("routes", route.0.into())
    }

    /// A service, after the ones added before.
    pub fn service(self, service: Service) -> GatewayConfig {
        self.push("services", service.0.into())
    }

    /// A consumer, after the ones added before.
    pub fn consumer(self, consumer: Consumer) -> GatewayConfig {
        self.push("consumers", consumer.0.into())
    }

    /// A global plugin (top-level `plugins`).
    pub fn plugin(mut self, name: &str, config: impl ToYaml) -> GatewayConfig {
        insert_plugin(&mut self.doc, name, config);
        self
    }

    /// Any other top-level key (`settings`, `subscriptions`, ...), replacing
    /// what was there.
    pub fn set(mut self, key: &str, value: impl ToYaml) -> GatewayConfig {
        self.doc.insert(key.into(), value.to_yaml());
        self
    }

    /// The document as a YAML value.
    pub fn to_value(&self) -> Value {
        Value::Mapping(self.doc.clone())
    }

    /// The document as YAML text, ready for [`crate::Gateway::config`].
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.doc).expect("a YAML value serializes")
    }

    fn push(mut self, list: &str, item: Value) -> GatewayConfig {
        let entry = self
            .doc
            .entry(list.into())
            .or_insert_with(|| Value::Sequence(Vec::new()));
        match entry {
            Value::Sequence(items) => items.push(item),
            other => panic!("`{list}` in the test config is not a list: {other:?}"),
        }
        self
    }
}

/// One entry of `routes`.
#[derive(Debug, Clone)]
pub struct Route(Mapping);

impl Route {
    /// A route `id` matching `path` (`paths: [path]`).
    pub fn new(id: &str, path: &str) -> Route {
        let mut route = Mapping::new();
        route.insert("id".into(), id.into());
        route.insert("paths".into(), Value::Sequence(vec![path.into()]));
        Route(route)
    }

    /// Proxies to upstream `id`.
    pub fn upstream(self, id: &str) -> Route {
        self.set("upstream", Value::from(id))
    }

    /// Belongs to service `id`.
    pub fn service(self, id: &str) -> Route {
        self.set("service", Value::from(id))
    }

    /// A plugin on this route, after the ones added before.
    pub fn plugin(mut self, name: &str, config: impl ToYaml) -> Route {
        insert_plugin(&mut self.0, name, config);
        self
    }

    /// Any other field (`disable_plugins`, `lifecycle`, ...).
    pub fn set(mut self, key: &str, value: impl ToYaml) -> Route {
        self.0.insert(key.into(), value.to_yaml());
        self
    }
}

/// One entry of `services`.
#[derive(Debug, Clone)]
pub struct Service(Mapping);

impl Service {
    /// A service `id` proxying to upstream `upstream`.
    pub fn new(id: &str, upstream: &str) -> Service {
        let mut service = Mapping::new();
        service.insert("id".into(), id.into());
        service.insert("upstream".into(), upstream.into());
        Service(service)
    }

    /// A plugin on this service, after the ones added before.
    pub fn plugin(mut self, name: &str, config: impl ToYaml) -> Service {
        insert_plugin(&mut self.0, name, config);
        self
    }

    /// Any other field (`disable_plugins`, `lifecycle`, ...).
    pub fn set(mut self, key: &str, value: impl ToYaml) -> Service {
        self.0.insert(key.into(), value.to_yaml());
        self
    }
}

/// One entry of `consumers`.
#[derive(Debug, Clone)]
pub struct Consumer(Mapping);

impl Consumer {
    /// A consumer `name` with nothing else.
    pub fn new(name: &str) -> Consumer {
        let mut consumer = Mapping::new();
        consumer.insert("name".into(), name.into());
        Consumer(consumer)
    }

    /// Its `groups`.
    pub fn groups(mut self, groups: &[&str]) -> Consumer {
        let groups = groups.iter().map(|&g| Value::from(g)).collect();
        self.0.insert("groups".into(), Value::Sequence(groups));
        self
    }

    /// Its credentials for one auth plugin (`kind`), a list.
    pub fn credentials(mut self, kind: &str, list: impl ToYaml) -> Consumer {
        let credentials = self
            .0
            .entry("credentials".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        credentials
            .as_mapping_mut()
            .expect("credentials is a mapping")
            .insert(kind.into(), list.to_yaml());
        self
    }

    /// `key-auth` credentials, one per SHA-256 hex digest of a key.
    pub fn key_auth(self, key_sha256: &[&str]) -> Consumer {
        let list = key_sha256
            .iter()
            .map(|&digest| {
                let mut credential = Mapping::new();
                credential.insert("key_sha256".into(), digest.into());
                Value::Mapping(credential)
            })
            .collect();
        self.credentials("key-auth", Value::Sequence(list))
    }

    /// A plugin of this consumer, after the ones added before.
    pub fn plugin(mut self, name: &str, config: impl ToYaml) -> Consumer {
        insert_plugin(&mut self.0, name, config);
        self
    }
}

fn insert_plugin(owner: &mut Mapping, name: &str, config: impl ToYaml) {
    let plugins = owner
        .entry("plugins".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    plugins
        .as_mapping_mut()
        .expect("plugins is a mapping")
        .insert(name.into(), config.to_yaml());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(yaml: &str) -> Value {
        serde_yaml_ng::from_str(yaml).expect("valid yaml")
    }

    /// The shape `tests/limits.rs` wrote by hand before the builder.
    #[test]
    fn routes_render_as_the_hand_written_yaml() {
        let built = GatewayConfig::new()
            .upstream("u", "127.0.0.1:9")
            .route(
                Route::new("counted", "/counted")
                    .upstream("u")
                    .plugin("limit-count", "{count: 3, time_window: 60s, key: [route]}"),
            )
            .route(Route::new("quiet", "/quiet").upstream("u").plugin(
                "limit-count",
                "{count: 1, time_window: 60s, headers: false}",
            ));
        let old = "upstreams: [{id: u, targets: [{addr: \"127.0.0.1:9\"}]}]
routes:
  - id: counted
    paths: [/counted]
    upstream: u
    plugins:
      limit-count: {count: 3, time_window: 60s, key: [route]}
  - id: quiet
    paths: [/quiet]
    upstream: u
    plugins:
      limit-count: {count: 1, time_window: 60s, headers: false}
";
        assert_eq!(built.to_value(), parse(old));
        assert_eq!(parse(&built.to_yaml()), parse(old));
    }

    /// Consumers, services, global plugins and other top-level keys, as
    /// `tests/plugins.rs` and `tests/lifecycle.rs` wrote them.
    #[test]
    fn consumers_services_and_top_level_keys() {
        let built = GatewayConfig::new()
            .plugin("response-rewrite", "{headers: {set: {x-level: global}}}")
            .upstream("u", "127.0.0.1:9")
            .upstream_spec("{id: gone, targets: [{addr: \"127.0.0.1:1\"}], retries: 0}")
            .consumer(
                Consumer::new("alice")
                    .groups(&["gold", "staff"])
                    .key_auth(&["aa", "bb"])
                    .plugin("limit-count", "{count: 5, time_window: 1h}"),
            )
            .consumer(
                Consumer::new("dave")
                    .credentials("hmac-auth", json!([{"key_id": "dave-key", "secret": "s"}])),
            )
            .set(
                "subscriptions",
                "[{consumer: alice, route: r, state: approved}]",
            )
            .service(
                Service::new("svc", "u")
                    .plugin("key-auth", "{}")
                    .set("require_subscription", "true"),
            )
            .route(
                Route::new("r", "/r")
                    .service("svc")
                    .set("disable_plugins", "[response-rewrite]")
                    .set("lifecycle", "{status: published}"),
            );
        let old = "plugins:
  response-rewrite: {headers: {set: {x-level: global}}}
upstreams:
  - {id: u, targets: [{addr: \"127.0.0.1:9\"}]}
  - {id: gone, targets: [{addr: \"127.0.0.1:1\"}], retries: 0}
consumers:
  - name: alice
    groups: [gold, staff]
    credentials:
      key-auth: [{key_sha256: aa}, {key_sha256: bb}]
    plugins:
      limit-count: {count: 5, time_window: 1h}
  - name: dave
    credentials:
      hmac-auth: [{key_id: dave-key, secret: s}]
subscriptions:
  - {consumer: alice, route: r, state: approved}
services:
  - id: svc
    upstream: u
    plugins:
      key-auth: {}
    require_subscription: true
routes:
  - id: r
    paths: [/r]
    service: svc
    disable_plugins: [response-rewrite]
    lifecycle: {status: published}
";
        assert_eq!(parse(&built.to_yaml()), parse(old));
    }

    /// A multi-line PEM given through JSON comes out as the same string a
    /// YAML block scalar held.
    #[test]
    fn json_values_keep_multi_line_strings() {
        let pem = "-----BEGIN PUBLIC KEY-----\nABC\n-----END PUBLIC KEY-----\n";
        let built = GatewayConfig::new().route(Route::new("a", "/a").plugin(
            "jwt-auth",
            json!({"keys": [{"kid": "rs", "algorithm": "RS256", "public_key": pem}]}),
        ));
        let old = "routes:
  - id: a
    paths: [/a]
    plugins:
      jwt-auth:
        keys:
          - kid: rs
            algorithm: RS256
            public_key: |
              -----BEGIN PUBLIC KEY-----
              ABC
              -----END PUBLIC KEY-----
";
        assert_eq!(parse(&built.to_yaml()), parse(old));
    }

    #[test]
    #[should_panic(expected = "not valid YAML")]
    fn bad_yaml_text_names_itself() {
        let _ = Route::new("a", "/a").plugin("x", "{unclosed");
    }
}
