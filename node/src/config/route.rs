//! `services:` and `routes:`: match conditions (hosts, paths, methods,
//! header and query conditions, API version), destination, `Host` header
//! mode and lifecycle. Route patterns are checked and compiled by the
//! router, not here.

use serde::{Deserialize, Serialize};

use super::PluginMap;

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
    pub plugins: PluginMap,
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
    pub plugins: PluginMap,
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
    /// What a percent-encoded slash or backslash (`%2F`, `%5C`) in the
    /// request path does on this route: `keep` (default), `reject` or
    /// `decode`; see `docs/routing.md`.
    #[serde(default, skip_serializing_if = "EscapedSlashes::is_default")]
    pub escaped_slashes: EscapedSlashes,
}

/// What a route does with percent-encoded slashes and backslashes in the
/// request path (modelled on Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Keep them as sent: they are part of a segment for routing and reach
    /// the upstream unchanged.
    #[default]
    Keep,
    /// Refuse the request with 400.
    Reject,
    /// Decode them to `/`, then route and forward the decoded path.
    Decode,
}

impl EscapedSlashes {
    fn is_default(&self) -> bool {
        *self == EscapedSlashes::Keep
    }
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
