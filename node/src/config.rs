//! The declarative configuration: what `weir serve --config FILE` reads and
//! `weir validate -f FILE` checks.
//!
//! The types here are plain data with serde derives and `deny_unknown_fields`;
//! [`load_str`] parses YAML and then [`Config::validate`] checks the rules
//! serde cannot express (references, ranges, patterns). Every problem found
//! is reported with its location, and all of them are reported at once.
//! The data path never sees these types: `snapshot.rs` compiles them.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of the file. Only `1` exists.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Process-wide settings: listeners, workers, timeouts.
    #[serde(default)]
    pub settings: Settings,
    /// Upstreams: groups of targets behind a balancer.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Services: an upstream plus settings shared by several routes.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Routes: what requests match and where they go.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Traces, metrics and the access log.
    #[serde(default)]
    pub observability: weir_observability::config::ObservabilityConfig,
    /// Gossip membership; absent means this node runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Plugins for every route; a service's or route's own entry of the
    /// same name replaces it (see `docs/plugins.md`).
    #[serde(default)]
    pub plugins: crate::plugin::PluginMap,
    /// Consumers: named API clients and their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Subscriptions of consumers to routes and services.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// A named API client.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name, sent upstream in the consumer header.
    pub name: String,
    /// Groups, for `consumer-restriction` and the groups header.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Credentials, per auth method; several per method are allowed (key
    /// rotation).
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// The consumer's own limits (`limit-count`, `limit-req`,
    /// `limit-conn`); each wins over a route's limit of the same type.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub plugins: crate::plugin::PluginMap,
}

/// A consumer's credentials. Secrets are only ever given hashed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// API keys for `key-auth`.
    #[serde(default, rename = "key-auth")]
    pub key_auth: Vec<KeyCredential>,
    /// Username and password for `basic-auth`.
    #[serde(default, rename = "basic-auth")]
    pub basic_auth: Vec<BasicCredential>,
    /// Keys for `jwt-auth`.
    #[serde(default, rename = "jwt-auth")]
    pub jwt_auth: Vec<JwtCredential>,
    /// Shared secrets for `hmac-auth`.
    #[serde(default, rename = "hmac-auth")]
    pub hmac_auth: Vec<HmacCredential>,
}

/// A key id and its shared HMAC secret. HMAC needs the secret itself, so
/// this is the one credential kept in the clear; it is never logged.
#[derive(Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacCredential {
    /// Key id the client names in its signature; unique over all consumers.
    pub key_id: String,
    /// The shared secret, at least 32 bytes.
    pub secret: String,
}

impl fmt::Debug for HmacCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacCredential")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An API key, stored as the hex SHA-256 of the key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCredential {
    /// `sha256(key)` as 64 hex digits (`printf %s KEY | sha256sum`).
    pub key_sha256: String,
}

/// A username and an argon2 password hash.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    /// The username; unique over all consumers.
    pub username: String,
    /// The password's argon2 hash as a PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
}

/// How `jwt-auth` recognises this consumer's tokens.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    /// The value of the route's consumer claim (default `sub`) that means
    /// this consumer; unique over all consumers.
    pub subject: String,
}

fn default_version() -> u32 {
    1
}

impl Default for Config {
    /// The embedded default: version 1, default settings, no routes.
    fn default() -> Self {
        Config {
            version: default_version(),
            settings: Settings::default(),
            upstreams: Vec::new(),
            services: Vec::new(),
            routes: Vec::new(),
            observability: Default::default(),
            plugins: Default::default(),
            consumers: Vec::new(),
            cluster: None,
            subscriptions: Vec::new(),
        }
    }
}

/// Process-wide settings. Changing `listen` or `workers` needs a restart;
/// everything else is picked up by a reload.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener (health, status).
    pub admin_listen: SocketAddr,
    /// Runtime worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// How long a graceful shutdown waits for requests in flight.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a client may take to send the request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes; larger
    /// heads get 431.
    pub max_header_bytes: usize,
    /// Most header fields a request may carry (each value of a repeated
    /// header counts); more get 431.
    pub max_header_count: usize,
    /// Largest request body in bytes; 0 means unlimited. Larger bodies get
    /// 413.
    pub max_body_bytes: u64,
    /// Value of the `Via` header the gateway adds; empty disables it.
    pub via: String,
    /// Also run the built-in echo upstream on this address (demos, tests).
    pub echo_listen: Option<SocketAddr>,
    /// Headers that tell the upstream which consumer was authenticated.
    /// The client's own copies of these headers are always removed.
    pub consumer_headers: ConsumerHeaders,
    /// Bytes the node's response cache may hold (bodies and headers),
    /// shared by every route with `proxy-cache`.
    pub cache_max_bytes: u64,
}

/// Names of the headers carrying the authenticated consumer upstream; an
/// empty name disables that header.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerHeaders {
    /// The consumer's name.
    pub name: String,
    /// The consumer's groups, comma-separated.
    pub groups: String,
}

impl Default for ConsumerHeaders {
    fn default() -> Self {
        ConsumerHeaders {
            name: "x-consumer-name".to_string(),
            groups: "x-consumer-groups".to_string(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "0.0.0.0:9080".parse().expect("static address"),
            admin_listen: "127.0.0.1:9180".parse().expect("static address"),
            workers: 0,
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            max_body_bytes: 0,
            via: "1.1 weir".to_string(),
            echo_listen: None,
            consumer_headers: ConsumerHeaders::default(),
            cache_max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A group of targets and how to reach and balance them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique id, referenced by services and routes.
    pub id: String,
    /// The targets, `host:port` with a weight.
    pub targets: Vec<TargetConfig>,
    /// How a target is chosen.
    #[serde(default)]
    pub balancer: BalancerConfig,
    /// Protocol spoken to the targets.
    #[serde(default)]
    pub scheme: UpstreamScheme,
    /// Connection pool settings.
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    /// Timeouts for each attempt and for the whole request.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// Extra attempts after the first, each on a different target.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Caps retries to a share of the traffic.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// Passive health: failures on live traffic take a target out.
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    /// Session persistence through a cookie naming the target.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// Active health checks, sharded over the cluster.
    #[serde(default)]
    pub health_check: Option<crate::health::HealthCheckConfig>,
    /// Zone and region preference when targets carry `zone`/`region`
    /// labels and the node has a zone/region (`cluster.zone`,
    /// `cluster.region`).
    #[serde(default)]
    pub locality: Locality,
    /// The next tier (own zone → own region → every region) is used while
    /// the healthy weight of the nearer one is below this.
    #[serde(default = "default_locality_min_weight")]
    pub locality_min_weight: u32,
}

fn default_locality_min_weight() -> u32 {
    1
}

/// How a node weighs targets by region.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Locality {
    /// The nearest tier whose healthy weight is at least
    /// `locality_min_weight`: the node's zone, else its region, else every
    /// region.
    #[default]
    PreferLocal,
    /// The node's zone while it has that weight, else its region, even
    /// when none there is healthy; never another region.
    StrictLocal,
    /// Every target, whatever its region.
    None,
}

fn default_retries() -> u32 {
    1
}

/// One target of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `host:port`; the host may be a name, resolved when connecting.
    pub addr: String,
    /// Relative share of traffic; 0 keeps the target configured but unused.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Region label, for locality and region-aware health-check sharding.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Zone label, for locality inside a region.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
}

fn default_weight() -> u32 {
    1
}

/// Protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamScheme {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http,
    /// HTTP/2 over cleartext with prior knowledge, multiplexed.
    H2c,
}

/// Balancing algorithm and its parameters.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum BalancerConfig {
    /// Smooth weighted round robin (nginx semantics).
    #[default]
    RoundRobin,
    /// Fewest requests in flight relative to weight.
    LeastConn,
    /// Weighted random.
    Random,
    /// Consistent hashing (ketama) on a request key.
    ConsistentHash {
        /// What the hash key is taken from.
        hash_on: HashOn,
    },
    /// Peak-EWMA latency with power-of-two-choices.
    PeakEwma {
        /// How fast old latency observations decay.
        #[serde(default = "default_ewma_decay", with = "humantime_serde")]
        #[schema(value_type = String, example = "10s")]
        decay: Duration,
    },
}

fn default_ewma_decay() -> Duration {
    Duration::from_secs(10)
}

/// The request part a consistent hash is computed over.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(
    deny_unknown_fields,
    tag = "source",
    content = "name",
    rename_all = "snake_case"
)]
pub enum HashOn {
    /// The client IP ("IP hash").
    Ip,
    /// A request header; a missing header hashes as empty.
    Header(String),
    /// A cookie; a missing cookie hashes as empty.
    Cookie(String),
    /// Path and query.
    Uri,
}

/// Upstream connection pool settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// Idle connections kept per target.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "5s")]
    pub idle_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            max_idle: 256,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Upstream timeouts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Establishing the TCP connection.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "5s")]
    pub connect: Duration,
    /// Longest gap while forwarding the request body to the upstream.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "5s")]
    pub send: Duration,
    /// Waiting for the response head, and the longest gap between two
    /// chunks of the response body.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "5s")]
    pub read: Duration,
    /// From the first attempt to the response head, retries included.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "5s")]
    pub total: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: Duration::from_secs(5),
            send: Duration::from_secs(60),
            read: Duration::from_secs(60),
            total: Duration::from_secs(120),
        }
    }
}

/// Retry budget: retries may add at most `ratio` of the requests, plus
/// `min_per_sec` so that low traffic can still retry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Share of requests that may be retried (0.0 to 1.0).
    pub ratio: f32,
    /// Retries always allowed per second.
    pub min_per_sec: u32,
    /// Window the ratio is measured over.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "5s")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Passive health (nginx `max_fails` / `fail_timeout` semantics).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Failures within `fail_timeout` that take a target out; 0 disables.
    pub max_fails: u32,
    /// The window failures are counted in, and how long a target stays out.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "5s")]
    pub fail_timeout: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// Sticky sessions: the gateway sets a cookie naming the chosen target and
/// sends later requests carrying it to the same target while it is healthy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// Cookie name.
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// Cookie lifetime; absent means a session cookie.
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "1h")]
    pub ttl: Option<Duration>,
}

fn default_sticky_cookie() -> String {
    "weir_sticky".to_string()
}

/// A service: an upstream and defaults shared by the routes that use it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique id, referenced by routes.
    pub id: String,
    /// The upstream id requests go to.
    pub upstream: String,
    /// `Host` header sent upstream, unless the route sets its own.
    #[serde(default)]
    pub host_header: Option<HostHeader>,
    /// Plugins for the service's routes; override global ones by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub plugins: crate::plugin::PluginMap,
    /// Global plugins switched off for the service's routes (a route may
    /// set one again in its own `plugins`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable_plugins: Vec<String>,
    /// Lifecycle status of the service's routes, unless a route sets its
    /// own.
    #[serde(default)]
    pub lifecycle: Option<LifecycleConfig>,
    /// Admit only consumers with an approved subscription to the service
    /// (or to the route), unless a route sets its own.
    #[serde(default)]
    pub require_subscription: Option<bool>,
}

/// Where an API is in its life.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// `published`, `deprecated` or `retired`.
    #[serde(default)]
    pub status: LifecycleStatus,
    /// When it was (or will be) deprecated, RFC 3339; required for
    /// `deprecated`, sent in the `Deprecation` header (RFC 9745).
    #[serde(default)]
    pub deprecated_at: Option<String>,
    /// When it stops working, RFC 3339; sent in the `Sunset` header
    /// (RFC 8594).
    #[serde(default)]
    pub sunset: Option<String>,
    /// URL of the API replacing it, sent as
    /// `Link: <URL>; rel="successor-version"` and in the 410 body.
    #[serde(default)]
    pub successor: Option<String>,
}

/// Lifecycle status of a route or service.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStatus {
    /// In service (the default).
    #[default]
    Published,
    /// Still served, with deprecation headers.
    Deprecated,
    /// No longer served: 410 Gone, the upstream is never called.
    Retired,
}

/// A consumer's subscription to a route or a service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Id of the subscription in the replicated store (default
    /// `CONSUMER.route.ID` or `CONSUMER.service.ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Consumer name.
    pub consumer: String,
    /// Route id (exactly one of `route`, `service`).
    #[serde(default)]
    pub route: Option<String>,
    /// Service id (exactly one of `route`, `service`).
    #[serde(default)]
    pub service: Option<String>,
    /// Only `approved` admits the consumer.
    pub state: SubscriptionState,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Asked for, not decided.
    Requested,
    /// Granted.
    Approved,
    /// Refused.
    Rejected,
    /// Granted, then withdrawn.
    Revoked,
}

/// What `Host` header the upstream receives: `pass`, `target`, or
/// `{rewrite: HOST}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", try_from = "HostHeaderRepr")]
pub enum HostHeader {
    /// The client's `Host` (the default).
    Pass,
    /// The chosen target's `host:port`.
    Target,
    /// A fixed value.
    Rewrite(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum HostHeaderRepr {
    Word(String),
    Rewrite(RewriteRepr),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteRepr {
    rewrite: String,
}

impl TryFrom<HostHeaderRepr> for HostHeader {
    type Error = String;

    fn try_from(r: HostHeaderRepr) -> Result<Self, String> {
        match r {
            HostHeaderRepr::Word(w) if w == "pass" => Ok(HostHeader::Pass),
            HostHeaderRepr::Word(w) if w == "target" => Ok(HostHeader::Target),
            HostHeaderRepr::Word(w) => Err(format!(
                "`{w}` is not a host_header mode: use `pass`, `target` or `{{rewrite: HOST}}`"
            )),
            HostHeaderRepr::Rewrite(r) => Ok(HostHeader::Rewrite(r.rewrite)),
        }
    }
}

/// A schema written as JSON, for the types whose serde form is not
/// derived field by field (`try_from` representations).
fn json_schema(v: serde_json::Value) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    serde_json::from_value(v).unwrap_or_default()
}

impl utoipa::PartialSchema for HostHeader {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        json_schema(serde_json::json!({
            "description": "`pass` (the client's Host), `target` (the target's host:port) or `{rewrite: HOST}`",
            "oneOf": [
                {"type": "string", "enum": ["pass", "target"]},
                {"type": "object", "required": ["rewrite"], "additionalProperties": false,
                 "properties": {"rewrite": {"type": "string"}}}
            ]
        }))
    }
}

impl utoipa::ToSchema for HostHeader {}

impl utoipa::PartialSchema for ValueMatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let with = |rule: &str, ty: &str| {
            serde_json::json!({
                "type": "object",
                "required": ["name", rule],
                "additionalProperties": false,
                "properties": {"name": {"type": "string"}, rule: {"type": ty}}
            })
        };
        json_schema(serde_json::json!({
            "description": "`name` and exactly one of `exact`, `regex`, `present`",
            "oneOf": [with("exact", "string"), with("regex", "string"), with("present", "boolean")]
        }))
    }
}

impl utoipa::ToSchema for ValueMatch {}

/// A route: match conditions and a destination.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique id.
    pub id: String,
    /// Higher wins when several routes match; default 0.
    #[serde(default)]
    pub priority: i32,
    /// Hosts: exact (`api.example.com`) or wildcard (`*.example.com`).
    /// Empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Paths: exact (`/a/b`), with parameters (`/users/:id`) or ending in a
    /// wildcard (`/static/*`). At least one is required.
    pub paths: Vec<String>,
    /// Methods; empty matches any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions; all must hold.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query argument conditions; all must hold.
    #[serde(default)]
    pub query: Vec<ValueMatch>,
    /// API version this route serves.
    #[serde(default)]
    pub version: Option<VersionMatch>,
    /// Service to use (its upstream and defaults).
    #[serde(default)]
    pub service: Option<String>,
    /// Upstream to use; overrides the service's.
    #[serde(default)]
    pub upstream: Option<String>,
    /// `Host` header sent upstream; overrides the service's.
    #[serde(default)]
    pub host_header: Option<HostHeader>,
    /// Plugins of this route; override service and global ones by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub plugins: crate::plugin::PluginMap,
    /// Global and service plugins switched off for this route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable_plugins: Vec<String>,
    /// Lifecycle status; overrides the service's.
    #[serde(default)]
    pub lifecycle: Option<LifecycleConfig>,
    /// Admit only consumers with an approved subscription; overrides the
    /// service's.
    #[serde(default)]
    pub require_subscription: Option<bool>,
}

/// A condition on one header or query argument: `name` and exactly one of
/// `exact`, `regex`, `present`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "ValueMatchRepr")]
pub struct ValueMatch {
    /// Header or argument name (headers are case-insensitive).
    pub name: String,
    /// What the value must satisfy.
    #[serde(flatten)]
    pub rule: ValueRule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueMatchRepr {
    name: String,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    present: Option<bool>,
}

impl TryFrom<ValueMatchRepr> for ValueMatch {
    type Error = String;

    fn try_from(r: ValueMatchRepr) -> Result<Self, String> {
        let rule = match (r.exact, r.regex, r.present) {
            (Some(v), None, None) => ValueRule::Exact(v),
            (None, Some(v), None) => ValueRule::Regex(v),
            (None, None, Some(v)) => ValueRule::Present(v),
            (None, None, None) => {
                return Err(format!(
                    "condition on `{}` needs one of `exact`, `regex`, `present`",
                    r.name
                ));
            }
            _ => {
                return Err(format!(
                    "condition on `{}` must set only one of `exact`, `regex`, `present`",
                    r.name
                ));
            }
        };
        Ok(ValueMatch { name: r.name, rule })
    }
}

/// The test a header or query value must pass.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValueRule {
    /// Equal to this string.
    Exact(String),
    /// Matches this regular expression (anchor it yourself).
    Regex(String),
    /// `true`: must be present; `false`: must be absent.
    Present(bool),
}

/// Where a route's API version is read from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionMatch {
    /// The version this route serves, e.g. `v2`.
    pub value: String,
    /// Where the client states its version.
    #[serde(default)]
    pub from: VersionSource,
    /// Header or query argument name (defaults: `Accept-Version`,
    /// `version`); ignored for `path`.
    #[serde(default)]
    pub name: Option<String>,
    /// For `path`: remove the `/v2` prefix before proxying.
    #[serde(default)]
    pub strip: bool,
    /// Also serve requests that state no version at all.
    #[serde(default)]
    pub default: bool,
}

/// Where the version is carried.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// A URL prefix: `/v2/...` (the route's paths are written without it).
    #[default]
    Path,
    /// A request header.
    Header,
    /// A query argument.
    Query,
}

impl VersionMatch {
    /// The header or query argument name, with its default.
    pub fn name(&self) -> &str {
        match (&self.name, self.from) {
            (Some(n), _) => n,
            (None, VersionSource::Header) => "accept-version",
            (None, _) => "version",
        }
    }
}

// === errors ===

/// One problem in a config document, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path to the field, e.g. `routes[2].paths[0]`.
    pub path: String,
    /// `line:column` in the source, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((l, c)) => write!(f, "{l}:{c}: {}: {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// All problems found in a config document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single problem.
    pub(crate) fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigProblem {
            path: path.into(),
            location: None,
            reason: reason.into(),
        }])
    }
}

/// Collects problems while validating.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.into(),
            location: None,
            reason: reason.into(),
        });
    }
}

// === loading ===

/// Parses and validates a YAML document. Every problem is reported with its
/// field path, and with `line:column` where the YAML parser knows it.
pub fn load_str(src: &str) -> Result<Config, ConfigErrors> {
    if src.trim().is_empty() {
        return Ok(Config::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(src);
    let config: Config = match serde_path_to_error::deserialize(de) {
        Ok(c) => c,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let location = inner.location().map(|l| (l.line(), l.column()));
            // serde_yaml_ng appends " at line X column Y"; the location is
            // reported separately.
            let mut reason = inner.to_string();
            if let Some(i) = reason.find(" at line ") {
                reason.truncate(i);
            }
            let path = if path == "." {
                "(document)".to_string()
            } else {
                path
            };
            // The YAML parser may start its message with (part of) the
            // path; say the path once.
            if let Some((head, rest)) = reason.split_once(": ")
                && path.starts_with(head)
            {
                reason = rest.to_string();
            }
            return Err(ConfigErrors(vec![ConfigProblem {
                path,
                location,
                reason,
            }]));
        }
    };
    config.validate()?;
    Ok(config)
}

/// Reads, parses and validates a config file.
pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(path.display().to_string(), format!("cannot read file: {e}"))
    })?;
    load_str(&src)
}

// === validation ===

impl Config {
    /// Checks what serde cannot: versions, unique ids, references, ranges
    /// and patterns, routes, consumers and plugins. Returns every problem,
    /// not just the first. This is the whole compile
    /// ([`crate::snapshot::compile`]) with its result thrown away.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        crate::snapshot::validate(self)
    }

    /// The checks of this document alone, before anything is compiled:
    /// version, settings, cluster, observability, upstreams and services.
    /// Routes, consumers and plugins are checked as they are compiled.
    /// Returns, for each upstream, whether it passed.
    pub(crate) fn check(&self, p: &mut Problems) -> Vec<bool> {
        if self.version != 1 {
            p.push(
                "version",
                format!(
                    "unsupported config version {}; this weir reads version 1",
                    self.version
                ),
            );
        }
        self.settings.validate(p);
        for (path, reason) in self.cluster.iter().flat_map(|c| c.validate()) {
            p.push(format!("cluster.{path}"), reason);
        }
        for (path, reason) in self.observability.validate() {
            p.push(format!("observability.{path}"), reason);
        }

        let mut upstream_ids = HashSet::new();
        let mut upstream_ok = Vec::with_capacity(self.upstreams.len());
        for (i, u) in self.upstreams.iter().enumerate() {
            let before = p.0.len();
            let at = format!("upstreams[{i}]");
            check_id(p, &at, &u.id);
            if !upstream_ids.insert(u.id.as_str()) {
                p.push(
                    format!("{at}.id"),
                    format!("duplicate upstream id `{}`", u.id),
                );
            }
            u.validate(&at, p);
            upstream_ok.push(p.0.len() == before);
        }
        let mut service_ids = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            check_id(p, &at, &s.id);
            if !service_ids.insert(s.id.as_str()) {
                p.push(
                    format!("{at}.id"),
                    format!("duplicate service id `{}`", s.id),
                );
            }
            if !upstream_ids.contains(s.upstream.as_str()) {
                p.push(
                    format!("{at}.upstream"),
                    format!("no upstream with id `{}`", s.upstream),
                );
            }
            if let Some(h) = &s.host_header {
                check_host_header(p, &format!("{at}.host_header"), h);
            }
        }
        upstream_ok
    }
}

pub(crate) fn check_id(p: &mut Problems, at: &str, id: &str) {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        p.push(
            format!("{at}.id"),
            format!("`{id}` is not a valid id: use 1 to 128 of letters, digits, `-`, `_`, `.`"),
        );
    }
}

pub(crate) fn check_host_header(p: &mut Problems, at: &str, h: &HostHeader) {
    if let HostHeader::Rewrite(v) = h
        && http::HeaderValue::from_str(v).is_err()
    {
        p.push(at, format!("`{v}` is not a valid Host header value"));
    }
}

/// Upper bound of `settings.max_header_count`.
pub const MAX_HEADER_COUNT: usize = 10_000;

impl Settings {
    fn validate(&self, p: &mut Problems) {
        if self.workers > 1024 {
            p.push(
                "settings.workers",
                "must be at most 1024 (0 means one per core)",
            );
        }
        if self.max_header_bytes < 1024 {
            p.push("settings.max_header_bytes", "must be at least 1024");
        }
        if !(1..=MAX_HEADER_COUNT).contains(&self.max_header_count) {
            p.push(
                "settings.max_header_count",
                format!("must be between 1 and {MAX_HEADER_COUNT}"),
            );
        }
        if self.header_read_timeout.is_zero() {
            p.push("settings.header_read_timeout", "must be greater than zero");
        }
        if !self.via.is_empty() && http::HeaderValue::from_str(&self.via).is_err() {
            p.push("settings.via", "is not a valid header value");
        }
        for (key, name) in [
            ("name", &self.consumer_headers.name),
            ("groups", &self.consumer_headers.groups),
        ] {
            if !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(
                    format!("settings.consumer_headers.{key}"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }
}

impl UpstreamConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        if self.targets.is_empty() {
            p.push(
                format!("{at}.targets"),
                "an upstream needs at least one target",
            );
        }
        let mut seen = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let tat = format!("{at}.targets[{i}].addr");
            match parse_authority(&t.addr) {
                Ok(()) => {}
                Err(why) => p.push(tat.clone(), why),
            }
            if !seen.insert(t.addr.as_str()) {
                p.push(tat, format!("duplicate target `{}`", t.addr));
            }
            if t.weight > 10_000 {
                p.push(format!("{at}.targets[{i}].weight"), "must be at most 10000");
            }
            for (k, v) in [("region", &t.region), ("zone", &t.zone)] {
                if v.len() > 63
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    p.push(
                        format!("{at}.targets[{i}].{k}"),
                        "must be at most 63 characters of letters, digits, `-`, `_` or `.`",
                    );
                }
            }
        }
        for (k, why) in self.health_check.iter().flat_map(|h| h.validate()) {
            p.push(format!("{at}.health_check.{k}"), why);
        }
        // Each unit of weight is 160 points on a ketama ring: keep rings
        // (and reload times) small.
        if matches!(self.balancer, BalancerConfig::ConsistentHash { .. }) {
            for (i, t) in self.targets.iter().enumerate() {
                if t.weight > 100 {
                    p.push(
                        format!("{at}.targets[{i}].weight"),
                        "must be at most 100 with the consistent_hash balancer",
                    );
                }
            }
        }
        if !self.targets.is_empty() && self.targets.iter().all(|t| t.weight == 0) {
            p.push(
                format!("{at}.targets"),
                "at least one target needs a weight above 0",
            );
        }
        if let BalancerConfig::ConsistentHash {
            hash_on: HashOn::Header(n) | HashOn::Cookie(n),
        } = &self.balancer
            && n.is_empty()
        {
            p.push(format!("{at}.balancer.hash_on.name"), "must not be empty");
        }
        if let BalancerConfig::ConsistentHash {
            hash_on: HashOn::Header(n),
        } = &self.balancer
            && http::HeaderName::from_bytes(n.as_bytes()).is_err()
        {
            p.push(
                format!("{at}.balancer.hash_on.name"),
                format!("`{n}` is not a valid header name"),
            );
        }
        if let BalancerConfig::PeakEwma { decay } = &self.balancer
            && decay.is_zero()
        {
            p.push(format!("{at}.balancer.decay"), "must be greater than zero");
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("connect", t.connect),
            ("send", t.send),
            ("read", t.read),
            ("total", t.total),
        ] {
            if d.is_zero() {
                p.push(format!("{at}.timeouts.{name}"), "must be greater than zero");
            }
        }
        if self.retries > 10 {
            p.push(format!("{at}.retries"), "must be at most 10");
        }
        let b = &self.retry_budget;
        if !(0.0..=1000.0).contains(&b.ratio) || b.ratio.is_nan() {
            p.push(
                format!("{at}.retry_budget.ratio"),
                "must be between 0 and 1000",
            );
        }
        if b.ttl < Duration::from_secs(1) || b.ttl > Duration::from_secs(60) {
            p.push(
                format!("{at}.retry_budget.ttl"),
                "must be between 1s and 60s",
            );
        }
        if self.passive_health.max_fails > 0 && self.passive_health.fail_timeout.is_zero() {
            p.push(
                format!("{at}.passive_health.fail_timeout"),
                "must be greater than zero",
            );
        }
        if let Some(ttl) = self.sticky.as_ref().and_then(|s| s.ttl)
            && ttl < Duration::from_secs(1)
        {
            // Max-Age is in whole seconds, and Max-Age=0 deletes the cookie.
            p.push(
                format!("{at}.sticky.ttl"),
                "must be at least 1s (omit it for a session cookie)",
            );
        }
        if let Some(s) = &self.sticky
            && (s.cookie.is_empty()
                || !s
                    .cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            p.push(
                format!("{at}.sticky.cookie"),
                "must be a non-empty token of letters, digits, `_`, `-`",
            );
        }
    }
}

/// Checks a `host:port` authority.
fn parse_authority(addr: &str) -> Result<(), String> {
    let auth: http::uri::Authority = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not a valid host:port"))?;
    if auth.port_u16().is_none() {
        return Err(format!("`{addr}` needs a port"));
    }
    if auth.as_str().contains('@') {
        return Err(format!("`{addr}` must not carry user info"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_default() {
        assert_eq!(load_str("").unwrap(), Config::default());
        // The embedded default must itself be a valid config.
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_field_names_path_and_location() {
        let err =
            load_str("routes:\n  - id: a\n    paths: [/]\n    upstream: u\n    pathz: [/x]\n")
                .unwrap_err();
        let p = &err.0[0];
        assert_eq!(p.path, "routes[0].pathz");
        assert!(p.reason.contains("unknown field `pathz`"), "{}", p.reason);
        assert_eq!(p.location.map(|l| l.0), Some(5));
    }

    #[test]
    fn reports_every_problem() {
        let src = "upstreams:\n  - id: u\n    targets: [{addr: 'nope'}]\nroutes:\n  - id: r\n    paths: [/]\n    upstream: missing\n  - id: r\n    paths: [/]\n    service: gone\n";
        let err = load_str(src).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("upstreams[0].targets[0].addr"), "{text}");
        assert!(
            text.contains("routes[0].upstream: no upstream with id `missing`"),
            "{text}"
        );
        assert!(
            text.contains("routes[1].id: duplicate route id `r`"),
            "{text}"
        );
        assert!(
            text.contains("routes[1].service: no service with id `gone`"),
            "{text}"
        );
    }

    proptest::proptest! {
        // Whatever bytes a config file holds, loading it returns problems,
        // never a panic.
        #[test]
        fn loading_never_panics(src in "[ -~\n]{0,200}") {
            let _ = load_str(&src);
        }

        // Structured noise: plausible keys with random values.
        #[test]
        fn loading_shaped_documents_never_panics(
            key in proptest::sample::select(vec!["routes", "upstreams", "services", "settings", "version"]),
            inner in proptest::sample::select(vec!["id", "paths", "targets", "addr", "weight", "balancer", "hosts", "version", "listen"]),
            value in "[ -~]{0,30}",
        ) {
            let _ = load_str(&format!("{key}:\n  - {inner}: {value}\n"));
            let _ = load_str(&format!("{key}: {{{inner}: [{value}]}}\n"));
        }
    }

    #[test]
    fn value_conditions_need_exactly_one_rule() {
        let base = "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]\nroutes:\n  - {id: r, paths: [/], upstream: u, headers: [";
        let c = load_str(&format!("{base}{{name: x-a, regex: '^a'}}]}}\n")).unwrap();
        assert_eq!(c.routes[0].headers[0].rule, ValueRule::Regex("^a".into()));
        let e = load_str(&format!("{base}{{name: x-a}}]}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "routes[0].headers[0]: condition on `x-a` needs one of `exact`, `regex`, `present`"
            ),
            "{e}"
        );
        let e = load_str(&format!("{base}{{name: x-a, exact: a, regex: b}}]}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must set only one of"), "{e}");
        let e = load_str(&format!("{base}{{name: x-a, exakt: a}}]}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `exakt`"), "{e}");
    }

    #[test]
    fn host_header_forms() {
        let base = "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]\nroutes:\n  - {id: r, paths: [/], upstream: u, host_header: ";
        let c = load_str(&format!("{base}target}}\n")).unwrap();
        assert_eq!(c.routes[0].host_header, Some(HostHeader::Target));
        let c = load_str(&format!("{base}{{rewrite: api.internal}}}}\n")).unwrap();
        assert_eq!(
            c.routes[0].host_header,
            Some(HostHeader::Rewrite("api.internal".into()))
        );
        let e = load_str(&format!("{base}bogus}}\n")).unwrap_err();
        assert!(
            e.to_string().contains("`bogus` is not a host_header mode"),
            "{e}"
        );
    }

    #[test]
    fn durations_and_balancers_parse() {
        let src = "upstreams:\n  - id: u\n    targets: [{addr: '127.0.0.1:1', weight: 3}]\n    balancer: {kind: consistent_hash, hash_on: {source: header, name: x-user}}\n    timeouts: {connect: 250ms}\n";
        let c = load_str(src).unwrap();
        assert_eq!(c.upstreams[0].timeouts.connect, Duration::from_millis(250));
        assert_eq!(
            c.upstreams[0].balancer,
            BalancerConfig::ConsistentHash {
                hash_on: HashOn::Header("x-user".into())
            }
        );
    }
}
