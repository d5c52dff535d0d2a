//! Config documents: how a [`Config`]'s routes, services, upstreams,
//! consumers, credentials, subscriptions and global plugins are stored as
//! JSON documents in the replicated store, and back. Also the validator
//! the store runs on every write.
//!
//! Every kind has a typed schema: routes, services and upstreams are the
//! structs of the YAML file; the others are the `*Doc` types here, which
//! map one to one onto the file's `consumers:`, `subscriptions:` and
//! `plugins:` (a consumer's `name` is its document `id`; a credential is a
//! document of its own that names its consumer, next to the credentials a
//! consumer document may carry inline).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_storage::{Docs, Document, Problem, Validator};

use crate::config::{
    BasicCredential, Config, ConfigErrors, ConsumerConfig, CredentialsConfig, HmacCredential,
    JwtCredential, KeyCredential, RouteConfig, ServiceConfig, SubscriptionConfig,
    SubscriptionState, UpstreamConfig,
};
use crate::snapshot::State;

/// A consumer document: the file's consumer, `id` being its name.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDoc {
    /// The consumer's name, sent upstream in the consumer header.
    pub id: String,
    /// Groups, for `consumer-restriction` and the groups header.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Credentials kept with the consumer (more may come from
    /// `credentials` documents).
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// The consumer's own limits (`limit-count`, `limit-req`,
    /// `limit-conn`); each wins over a route's limit of the same type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub plugins: crate::config::PluginMap,
}

/// A credential document: one credential of one consumer, exactly one of
/// the method fields set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialDoc {
    /// Credential id.
    pub id: String,
    /// The consumer (its id) this credential identifies.
    pub consumer: String,
    /// An API key for `key-auth`.
    #[serde(default, rename = "key-auth", skip_serializing_if = "Option::is_none")]
    pub key_auth: Option<KeyCredential>,
    /// A username and password for `basic-auth`.
    #[serde(
        default,
        rename = "basic-auth",
        skip_serializing_if = "Option::is_none"
    )]
    pub basic_auth: Option<BasicCredential>,
    /// A token subject for `jwt-auth`.
    #[serde(default, rename = "jwt-auth", skip_serializing_if = "Option::is_none")]
    pub jwt_auth: Option<JwtCredential>,
    /// A shared secret for `hmac-auth`.
    #[serde(default, rename = "hmac-auth", skip_serializing_if = "Option::is_none")]
    pub hmac_auth: Option<HmacCredential>,
}

impl CredentialDoc {
    fn methods(&self) -> usize {
        usize::from(self.key_auth.is_some())
            + usize::from(self.basic_auth.is_some())
            + usize::from(self.jwt_auth.is_some())
            + usize::from(self.hmac_auth.is_some())
    }
}

fn requested() -> SubscriptionState {
    SubscriptionState::Requested
}

/// A subscription document: a consumer's subscription to a route or a
/// service, moved between states by the workflow endpoints.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionDoc {
    /// Subscription id.
    pub id: String,
    /// The consumer (its id).
    pub consumer: String,
    /// Route id (exactly one of `route`, `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Service id (exactly one of `route`, `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `requested` (the default), `approved`, `rejected` or `revoked`;
    /// only `approved` admits the consumer.
    #[serde(default = "requested")]
    pub state: SubscriptionState,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A global plugin document: one entry of the file's top-level
/// `plugins:` map, set for every route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalPluginDoc {
    /// The plugin's name (`key-auth`, `cors`, ...).
    pub id: String,
    /// The plugin's config, as in a `plugins:` map.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: Value,
}

/// Every document kind the admin API serves.
pub const KINDS: [&str; 7] = [
    "routes",
    "services",
    "upstreams",
    "consumers",
    "credentials",
    "subscriptions",
    "plugins",
];

/// Kinds `weir apply` always manages: a file without routes deletes them.
pub const FILE_KINDS: [&str; 3] = ["routes", "services", "upstreams"];

/// Kinds `weir apply` manages only when the file has their key, so that
/// consumers and subscriptions managed through the API survive applying a
/// routes-only file.
pub const OPTIONAL_FILE_KINDS: [&str; 3] = ["consumers", "subscriptions", "plugins"];

/// True for a known kind.
pub fn is_kind(kind: &str) -> bool {
    KINDS.contains(&kind)
}

/// A schema and its component name.
pub type NamedSchema = (
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
);

/// The OpenAPI schema of each kind's documents: `(kind, schema name)`, and
/// every schema they use, for `openapi.rs`.
pub fn kind_schemas() -> (Vec<(&'static str, String)>, Vec<NamedSchema>) {
    use utoipa::ToSchema;
    fn add<T: ToSchema>(
        kind: &'static str,
        names: &mut Vec<(&'static str, String)>,
        all: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        names.push((kind, T::name().to_string()));
        all.push((T::name().to_string(), T::schema()));
        T::schemas(all);
    }
    let mut names = Vec::new();
    let mut all = Vec::new();
    add::<RouteConfig>("routes", &mut names, &mut all);
    add::<ServiceConfig>("services", &mut names, &mut all);
    add::<UpstreamConfig>("upstreams", &mut names, &mut all);
    add::<ConsumerDoc>("consumers", &mut names, &mut all);
    add::<CredentialDoc>("credentials", &mut names, &mut all);
    add::<SubscriptionDoc>("subscriptions", &mut names, &mut all);
    add::<GlobalPluginDoc>("plugins", &mut names, &mut all);
    (names, all)
}

/// Checks an id: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("an id has 1 to 128 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "`{id}` is not a valid id: use letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

pub(crate) fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push('/');
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let pointer = pointer_of(e.path());
        (pointer, e.into_inner().to_string())
    })
}

/// Checks one document on its own: shape, unknown fields, types, and that
/// its `id` is `id`. Returns `(pointer, reason)` for each problem.
pub fn check_document(kind: &str, id: &str, v: &Value) -> Vec<(String, String)> {
    read(kind, id, v).problems
}

/// One document read on its own: its problems and, when its value parses
/// as its kind, the typed form. Kept in the stored document's memo, so a
/// document is parsed once per process rather than on every write.
struct Read {
    problems: Vec<(String, String)>,
    typed: Option<Typed>,
}

/// A document's value as the config object it stands for.
enum Typed {
    /// Shared with every `Config` built from the document, so a compile
    /// tells an unchanged route by its address.
    Route(Arc<RouteConfig>),
    Service(Box<ServiceConfig>),
    Upstream(Box<UpstreamConfig>),
    Consumer(ConsumerConfig),
    Credential(CredentialDoc),
    Subscription(SubscriptionConfig),
    /// A global plugin: its name and config.
    Plugin(String, serde_yaml_ng::Value),
}

fn read(kind: &str, id: &str, v: &Value) -> Read {
    let mut problems = Vec::new();
    if let Err(r) = check_id(id) {
        problems.push(("/id".to_string(), r));
    }
    let Some(obj) = v.as_object() else {
        problems.push((String::new(), "a document is a JSON object".into()));
        return Read {
            problems,
            typed: None,
        };
    };
    match obj.get("id") {
        Some(Value::String(s)) if s == id => {}
        Some(Value::String(s)) => problems.push((
            "/id".into(),
            format!("`{s}` does not match the id in the path (`{id}`)"),
        )),
        _ => problems.push(("/id".into(), "missing or not a string".into())),
    }
    let typed = match kind {
        "routes" => typed(v).map(|r| Typed::Route(Arc::new(r))),
        "services" => typed(v).map(|x| Typed::Service(Box::new(x))),
        "upstreams" => typed(v).map(|x| Typed::Upstream(Box::new(x))),
        "consumers" => typed::<ConsumerDoc>(v).map(|c| {
            Typed::Consumer(ConsumerConfig {
                name: c.id,
                groups: c.groups,
                labels: c.labels,
                credentials: c.credentials,
                plugins: c.plugins,
            })
        }),
        "credentials" => typed::<CredentialDoc>(v).and_then(|c| match c.methods() {
            1 => Ok(Typed::Credential(c)),
            _ => Err((
                String::new(),
                "set exactly one of `key-auth`, `basic-auth`, `jwt-auth`, `hmac-auth`".into(),
            )),
        }),
        "subscriptions" => typed::<SubscriptionDoc>(v).map(|s| {
            Typed::Subscription(SubscriptionConfig {
                id: Some(s.id),
                consumer: s.consumer,
                route: s.route,
                service: s.service,
                state: s.state,
            })
        }),
        "plugins" => typed::<GlobalPluginDoc>(v).and_then(|p| {
            if !p.config.is_object() {
                return Err((
                    "/config".into(),
                    "a plugin's config is a JSON object".into(),
                ));
            }
            typed::<serde_yaml_ng::Value>(&p.config).map(|c| Typed::Plugin(p.id, c))
        }),
        _ => Err((String::new(), format!("unknown kind `{kind}`"))),
    };
    let typed = match typed {
        Ok(t) => Some(t),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    Read { problems, typed }
}

/// What [`read`] makes of a stored document, from its memo when another
/// write already read it.
fn read_stored(d: &Document, with: impl FnOnce(&Read)) {
    match d.memo.get_or_init(|| read(&d.kind, &d.id, &d.value)) {
        Some(r) => with(r),
        None => with(&read(&d.kind, &d.id, &d.value)),
    }
}

/// The canonical form of a document (defaults filled in), so the same
/// object written through the file or the API compares equal. A document
/// that does not parse is returned as it is (validation reports it).
pub fn canonical(kind: &str, v: Value) -> Value {
    fn round<T: serde::de::DeserializeOwned + Serialize>(v: &Value) -> Option<Value> {
        let t: T = serde_json::from_value(v.clone()).ok()?;
        let out = serde_json::to_value(&t).ok()?;
        // Only if it reads back the same way.
        serde_json::from_value::<T>(out.clone()).ok()?;
        Some(out)
    }
    let c = match kind {
        "routes" => round::<RouteConfig>(&v),
        "services" => round::<ServiceConfig>(&v),
        "upstreams" => round::<UpstreamConfig>(&v),
        "consumers" => round::<ConsumerDoc>(&v),
        "credentials" => round::<CredentialDoc>(&v),
        "subscriptions" => round::<SubscriptionDoc>(&v),
        "plugins" => round::<GlobalPluginDoc>(&v),
        _ => None,
    };
    c.unwrap_or(v)
}

/// Where each credential taken from a `credentials` document landed:
/// `(consumer id, method, index in that method's list)` → document id.
type CredentialOrigins = HashMap<(String, &'static str, usize), String>;

/// Builds the config objects of a [`Config`] from stored documents, on top
/// of `base` (settings, observability). Documents that do not parse are
/// reported, not skipped silently.
pub fn config_from_docs(base: &Config, docs: &Docs) -> (Config, Vec<Problem>) {
    let (cfg, problems, _) = build(base, docs);
    (cfg, problems)
}

fn build(base: &Config, docs: &Docs) -> (Config, Vec<Problem>, CredentialOrigins) {
    let mut cfg = base.clone();
    cfg.routes.clear();
    cfg.services.clear();
    cfg.upstreams.clear();
    cfg.consumers.clear();
    cfg.subscriptions.clear();
    cfg.plugins.clear();
    let mut problems = Vec::new();
    let mut credentials = Vec::new();
    for ((kind, id), d) in docs {
        if !is_kind(kind) {
            continue;
        }
        read_stored(d, |r| match &r.typed {
            Some(Typed::Route(x)) => cfg.routes.push(x.clone()),
            Some(Typed::Service(x)) => cfg.services.push((**x).clone()),
            Some(Typed::Upstream(x)) => cfg.upstreams.push((**x).clone()),
            Some(Typed::Consumer(x)) => cfg.consumers.push(x.clone()),
            Some(Typed::Credential(x)) => credentials.push(x.clone()),
            Some(Typed::Subscription(x)) => cfg.subscriptions.push(x.clone()),
            Some(Typed::Plugin(name, x)) => {
                cfg.plugins.insert(name.clone(), x.clone());
            }
            None => problems.extend(r.problems.iter().map(|(pointer, reason)| Problem {
                kind: kind.clone(),
                id: id.clone(),
                pointer: pointer.clone(),
                reason: reason.clone(),
            })),
        });
    }
    let mut origins = CredentialOrigins::new();
    let index: HashMap<String, usize> = cfg
        .consumers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    for c in credentials {
        let Some(&i) = index.get(&c.consumer) else {
            problems.push(Problem {
                kind: "credentials".into(),
                id: c.id.clone(),
                pointer: "/consumer".into(),
                reason: format!("no consumer with id `{}`", c.consumer),
            });
            continue;
        };
        let into = &mut cfg.consumers[i].credentials;
        let (method, at) = if let Some(k) = c.key_auth {
            into.key_auth.push(k);
            ("key-auth", into.key_auth.len() - 1)
        } else if let Some(b) = c.basic_auth {
            into.basic_auth.push(b);
            ("basic-auth", into.basic_auth.len() - 1)
        } else if let Some(j) = c.jwt_auth {
            into.jwt_auth.push(j);
            ("jwt-auth", into.jwt_auth.len() - 1)
        } else if let Some(h) = c.hmac_auth {
            into.hmac_auth.push(h);
            ("hmac-auth", into.hmac_auth.len() - 1)
        } else {
            continue;
        };
        origins.insert((c.consumer.clone(), method, at), c.id);
    }
    (cfg, problems, origins)
}

/// Where a compile problem's path (`routes[3].paths[0]`) points: the
/// document and the JSON pointer inside it.
fn locate(path: &str, index: &[(&'static str, Vec<String>)]) -> (String, String, String) {
    // The global `plugins:` map: one document per plugin.
    if let Some(rest) = path.strip_prefix("plugins.") {
        let (name, field) = rest.split_once('.').unwrap_or((rest, ""));
        let pointer = if field.is_empty() {
            String::new()
        } else {
            format!("/config/{}", field.replace('.', "/"))
        };
        return ("plugins".into(), name.to_string(), pointer);
    }
    for (kind, ids) in index {
        let Some(rest) = path.strip_prefix(kind).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let Some((n, rest)) = rest.split_once(']') else {
            continue;
        };
        let Some(id) = n.parse::<usize>().ok().and_then(|i| ids.get(i)) else {
            continue;
        };
        let mut pointer = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' => pointer.push('/'),
                '[' => {
                    pointer.push('/');
                    for d in chars.by_ref() {
                        if d == ']' {
                            break;
                        }
                        pointer.push(d);
                    }
                }
                c => pointer.push(c),
            }
        }
        return ((*kind).to_string(), id.clone(), pointer);
    }
    (String::new(), String::new(), path.to_string())
}

/// A problem of a consumer's credential that came from a `credentials`
/// document is that document's problem.
fn relocate_credential(
    (kind, id, pointer): (String, String, String),
    origins: &CredentialOrigins,
) -> (String, String, String) {
    if kind == "consumers"
        && let Some(rest) = pointer.strip_prefix("/credentials/")
    {
        let mut parts = rest.splitn(3, '/');
        if let (Some(method), Some(n)) = (parts.next(), parts.next())
            && let Ok(n) = n.parse::<usize>()
        {
            let tail = parts.next().map(|t| format!("/{t}")).unwrap_or_default();
            for m in ["key-auth", "basic-auth", "jwt-auth", "hmac-auth"] {
                if m == method
                    && let Some(doc) = origins.get(&(id.clone(), m, n))
                {
                    return ("credentials".into(), doc.clone(), format!("/{m}{tail}"));
                }
            }
        }
    }
    (kind, id, pointer)
}

/// Every problem of the whole document set, located in its documents,
/// from a compile of its own (for tools and tests; a node's store uses
/// [`validator`], which keeps what it compiled).
pub fn problems(docs: &Docs) -> Vec<Problem> {
    // The settings are not replicated: validate the documents against the
    // defaults, so every node reaches the same verdict.
    problems_with(&Config::default(), docs, |cfg| {
        crate::snapshot::validate(cfg)
    })
}

/// Every problem of `docs`, read on top of `base`, with `compile` judging
/// the whole: problems of single documents first, and only when there are
/// none the compile's, each located in the document it is about.
fn problems_with(
    base: &Config,
    docs: &Docs,
    compile: impl FnOnce(&Config) -> Result<(), ConfigErrors>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for ((kind, id), d) in docs {
        if !is_kind(kind) {
            out.push(Problem {
                kind: kind.clone(),
                id: id.clone(),
                pointer: String::new(),
                reason: format!("unknown kind `{kind}`"),
            });
            continue;
        }
        read_stored(d, |r| {
            out.extend(r.problems.iter().map(|(pointer, reason)| Problem {
                kind: kind.clone(),
                id: id.clone(),
                pointer: pointer.clone(),
                reason: reason.clone(),
            }));
        });
    }
    if !out.is_empty() {
        return out;
    }
    let (cfg, parse, origins) = build(base, docs);
    if !parse.is_empty() {
        return parse;
    }
    if let Err(errors) = compile(&cfg) {
        let index = [
            (
                "upstreams",
                cfg.upstreams.iter().map(|u| u.id.clone()).collect(),
            ),
            (
                "services",
                cfg.services.iter().map(|s| s.id.clone()).collect(),
            ),
            ("routes", cfg.routes.iter().map(|r| r.id.clone()).collect()),
            (
                "consumers",
                cfg.consumers.iter().map(|c| c.name.clone()).collect(),
            ),
            (
                "subscriptions",
                cfg.subscriptions
                    .iter()
                    .map(|s| s.id.clone().unwrap_or_default())
                    .collect(),
            ),
        ];
        for p in errors.0 {
            let (kind, id, pointer) = relocate_credential(locate(&p.path, &index), &origins);
            out.push(Problem {
                kind,
                id,
                pointer,
                reason: p.reason,
            });
        }
    }
    out
}

/// The validator a node's replicated store runs on every write (and the
/// admin preview runs on a proposed one): the documents are compiled on
/// top of the node's `base` settings, reusing what the last compile made,
/// and the snapshot is kept so that the store follower serves it without
/// compiling again ([`State::publish_prepared`]). Settings only size what
/// is built (a cache's capacity) and `base` was validated when the node
/// started, so every node reaches the same verdict.
pub fn validator(state: Arc<State>, base: Arc<Config>) -> Validator {
    Arc::new(move |docs: &Docs| {
        problems_with(&base, docs, |cfg| {
            state.prepare(cfg, DocsKey::of(docs)).map(|_| ())
        })
    })
}

/// Problems of stored documents as config errors, each path naming the
/// document (`routes/r1/paths/0`).
pub fn located(problems: Vec<Problem>) -> ConfigErrors {
    ConfigErrors(
        problems
            .into_iter()
            .map(|p| crate::config::ConfigProblem {
                path: format!("{}/{}{}", p.kind, p.id, p.pointer),
                location: None,
                reason: p.reason,
            })
            .collect(),
    )
}

/// A validator with a compile of its own for each call, which keeps
/// nothing: for previews of writes that are not made.
pub fn standalone_validator() -> Validator {
    Arc::new(problems)
}

/// Which stored documents a snapshot was compiled from: the documents
/// themselves, compared by identity (a stored document never changes, a
/// write replaces it with a new one), so two sets are equal exactly when
/// they hold the same documents.
#[derive(Clone)]
pub struct DocsKey(Vec<Arc<Document>>);

impl DocsKey {
    /// The key of `docs` as they are.
    pub fn of(docs: &Docs) -> DocsKey {
        DocsKey(docs.values().cloned().collect())
    }
}

impl PartialEq for DocsKey {
    fn eq(&self, other: &DocsKey) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// The store id of a subscription from the file: its `id`, or
/// `CONSUMER.route.ID` / `CONSUMER.service.ID`.
pub fn subscription_id(s: &SubscriptionConfig) -> String {
    if let Some(id) = &s.id {
        return id.clone();
    }
    let (what, target) = match (&s.route, &s.service) {
        (Some(r), _) => ("route", r.as_str()),
        (None, Some(v)) => ("service", v.as_str()),
        (None, None) => ("none", ""),
    };
    format!("{}.{what}.{target}", s.consumer)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The config objects of `cfg` as documents: `(kind, id, value)`.
pub fn docs_of_config(cfg: &Config) -> Result<Vec<(String, String, Value)>, serde_json::Error> {
    let mut out = Vec::new();
    for u in &cfg.upstreams {
        out.push(("upstreams".into(), u.id.clone(), serde_json::to_value(u)?));
    }
    for s in &cfg.services {
        out.push(("services".into(), s.id.clone(), serde_json::to_value(s)?));
    }
    for r in &cfg.routes {
        out.push(("routes".into(), r.id.clone(), serde_json::to_value(r)?));
    }
    for c in &cfg.consumers {
        let d = ConsumerDoc {
            id: c.name.clone(),
            groups: c.groups.clone(),
            labels: c.labels.clone(),
            credentials: c.credentials.clone(),
            plugins: c.plugins.clone(),
        };
        out.push(("consumers".into(), d.id.clone(), serde_json::to_value(d)?));
    }
    for s in &cfg.subscriptions {
        let d = SubscriptionDoc {
            id: subscription_id(s),
            consumer: s.consumer.clone(),
            route: s.route.clone(),
            service: s.service.clone(),
            state: s.state,
        };
        out.push((
            "subscriptions".into(),
            d.id.clone(),
            serde_json::to_value(d)?,
        ));
    }
    for (name, v) in &cfg.plugins {
        let d = GlobalPluginDoc {
            id: name.clone(),
            config: serde_json::to_value(v)?,
        };
        out.push(("plugins".into(), name.clone(), serde_json::to_value(d)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_document_pointers() {
        let index = [
            ("upstreams", vec!["u".to_string()]),
            ("routes", vec!["a".to_string(), "b".to_string()]),
        ];
        assert_eq!(
            locate("routes[1].headers[0].name", &index),
            ("routes".into(), "b".into(), "/headers/0/name".into())
        );
        assert_eq!(
            locate("upstreams[0]", &index),
            ("upstreams".into(), "u".into(), String::new())
        );
        assert_eq!(
            locate("settings.listen", &index),
            (String::new(), String::new(), "settings.listen".into())
        );
    }

    #[test]
    fn documents_are_checked_field_by_field() {
        let p = check_document(
            "routes",
            "r",
            &serde_json::json!({"id": "r", "paths": ["/"], "bogus": 1}),
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("bogus"), "{p:?}");
        let p = check_document("routes", "r", &serde_json::json!({"id": "x", "paths": [7]}));
        assert!(p.iter().any(|(ptr, _)| ptr == "/id"), "{p:?}");
        assert!(p.iter().any(|(ptr, _)| ptr == "/paths/0"), "{p:?}");
        assert!(
            !check_document("consumers", "c", &serde_json::json!({"id": "c", "any": 1})).is_empty()
        );
        assert!(
            check_document(
                "consumers",
                "c",
                &serde_json::json!({"id": "c", "groups": ["g"]})
            )
            .is_empty()
        );
        // A credential carries exactly one method.
        let two = serde_json::json!({"id": "k", "consumer": "c",
            "key-auth": {"key_sha256": "00"}, "jwt-auth": {"subject": "c"}});
        assert!(!check_document("credentials", "k", &two).is_empty());
        assert!(!check_document("consumers", "c", &serde_json::json!([1])).is_empty());
        assert!(
            !check_document(
                "routes",
                "a b",
                &serde_json::json!({"id": "a b", "paths": ["/"]})
            )
            .is_empty()
        );
    }
}
