//! The OpenAPI 3 document served at `/v1/openapi.json`, built with
//! utoipa from [`crate::admin::endpoints`] (the list the router is built
//! from) and
//! the API's envelope types. `{kind}` is expanded into one path per
//! document kind, so generated clients get one method per kind.
//!
//! Document bodies have the schemas derived (`utoipa::ToSchema`) from the
//! very types the API parses them into (`config.rs`, `docs.rs`), so the
//! schema cannot drift from what is accepted.

use serde_json::Value;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, Ref, Required, ResponseBuilder,
};
use utoipa::{PartialSchema, ToSchema};

use crate::docs::KINDS;

/// One problem in a rejected request.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ProblemSchema {
    /// Document kind (empty: the request as a whole).
    kind: String,
    /// Document id.
    id: String,
    /// JSON pointer into the document or request body.
    pointer: String,
    /// What is wrong.
    reason: String,
}

/// The `error` member of every error response.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorSchema {
    /// HTTP status.
    status: u16,
    /// Machine-readable code (`invalid`, `conflict`, `not_found`, ...).
    code: String,
    /// Human-readable message.
    message: String,
    /// One entry per problem (400 only).
    problems: Vec<ProblemSchema>,
}

/// A stored document with its revisions.
#[derive(ToSchema)]
#[allow(dead_code)]
struct DocumentSchema {
    /// Kind.
    kind: String,
    /// Id.
    id: String,
    /// Revision of its last change.
    revision: u64,
    /// Revision that created it.
    created: u64,
    /// The document.
    #[schema(value_type = Object)]
    value: Value,
}

/// A cache purge: exactly one of `key` and `prefix`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CachePurgeSchema {
    /// One cache key (its `Vary` variants go with it).
    key: Option<String>,
    /// Every key starting with this.
    prefix: Option<String>,
}

/// The result of a write.
#[derive(ToSchema)]
#[allow(dead_code)]
struct WriteResultSchema {
    /// `applied` or `unchanged`.
    outcome: String,
    /// Cluster revision after the write.
    revision: u64,
    /// The document as stored (puts and creates).
    document: Option<DocumentSchema>,
}

fn string_param(
    name: &str,
    at: ParameterIn,
    required: bool,
    doc: &str,
) -> utoipa::openapi::path::Parameter {
    typed_param(
        name,
        at,
        required,
        doc,
        serde_json::json!({"type": "string"}),
    )
}

/// A parameter whose schema is written as JSON (typed query values, so
/// a client knows `consistent` is a boolean and `limit` a number).
fn typed_param(
    name: &str,
    at: ParameterIn,
    required: bool,
    doc: &str,
    schema: Value,
) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(doc))
        .schema(Some(raw_schema(schema)))
        .build()
}

/// An error answer: the `{"error": ...}` envelope.
fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json_ref("ErrorResponse"))
        .build()
}

/// The pattern of a document id.
const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,128}$";

fn json_ref(name: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(name)))
        .build()
}

fn raw_schema(v: Value) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    serde_json::from_value(v).unwrap_or_default()
}

fn ref_of(name: &str) -> Value {
    serde_json::json!({"$ref": format!("#/components/schemas/{name}")})
}

fn any_object() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
        .build()
}

/// The document.
pub fn document() -> Value {
    let (kind_names, kind_schemas) = crate::docs::kind_schemas();
    let name_of = |kind: &str| {
        kind_names
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    };
    let mut paths = PathsBuilder::new();
    for (method, path) in &crate::admin::endpoints() {
        let m = match *method {
            "get" => HttpMethod::Get,
            "post" => HttpMethod::Post,
            "put" => HttpMethod::Put,
            _ => HttpMethod::Delete,
        };
        let kinds: Vec<Option<&str>> = if path.contains("{kind}") {
            KINDS.iter().map(|k| Some(*k)).collect()
        } else {
            vec![None]
        };
        for kind in kinds {
            let concrete = match kind {
                Some(k) => path.replace("{kind}", k),
                None => (*path).to_string(),
            };
            let op_id = format!(
                "{method}{}",
                concrete
                    .split(['/', '{', '}', '.', '-'])
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let mut c = s.chars();
                        c.next()
                            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                            .unwrap_or_default()
                    })
                    .collect::<String>()
            );
            let mut op = OperationBuilder::new()
                .operation_id(Some(op_id))
                .summary(Some(format!("{} {concrete}", method.to_uppercase())))
                .response(
                    "200",
                    ResponseBuilder::new().description("success").content(
                        "application/json",
                        match (*method, concrete.contains("{id}")) {
                            ("get", true) => match kind {
                                Some(k) => json_ref(&format!("{}Document", name_of(k))),
                                None => json_ref("DocumentSchema"),
                            },
                            ("get", false) if kind.is_some() => {
                                json_ref(&format!("{}List", name_of(kind.unwrap_or_default())))
                            }
                            ("post", true) if concrete.starts_with("/v1/subscriptions/") => {
                                json_ref("WriteResultSchema")
                            }
                            ("put" | "post" | "delete", _) if kind.is_some() => {
                                json_ref("WriteResultSchema")
                            }
                            _ => any_object(),
                        },
                    ),
                )
                .response(
                    "400",
                    error_response("invalid request (body, query string); nothing was stored"),
                )
                .response("401", error_response("missing or unknown admin key"))
                .response(
                    "403",
                    error_response(
                        "a viewer key for a write, or a Host or Origin that is not this listener (`forbidden_host`, `forbidden_origin`)",
                    ),
                );
            let store_only = concrete.starts_with("/v1/") && kind.is_some()
                || matches!(
                    concrete.as_str(),
                    "/v1/config" | "/v1/apply" | "/v1/revisions"
                )
                || concrete.starts_with("/v1/rollback");
            if store_only {
                op = op
                    .response(
                        "409",
                        error_response(
                            "`file_mode`: the node serves a file; `conflict`: the document changed or already exists",
                        ),
                    )
                    .response(
                        "503",
                        error_response("no Raft leader could be reached in time; retry"),
                    );
            }
            if *method != "get" {
                op = op
                    .response("413", error_response("the body is over the limit"))
                    .response("415", error_response("the body's Content-Type is not JSON"));
            }
            if *method == "post" && kind.is_some() && !concrete.contains("{id}") {
                op = op.response(
                    "201",
                    ResponseBuilder::new()
                        .description("created")
                        .content("application/json", json_ref("WriteResultSchema")),
                );
            }
            if (*method == "get" || *method == "delete") && concrete.contains("{id}")
                || concrete.starts_with("/v1/cluster/")
            {
                op = op.response(
                    "404",
                    error_response(
                        "no such document (`not_found`), or no cluster (`cluster_disabled`)",
                    ),
                );
            }
            if concrete.contains("{id}") {
                op = op.parameter(typed_param(
                    "id",
                    ParameterIn::Path,
                    true,
                    "document id",
                    serde_json::json!({"type": "string", "pattern": ID_PATTERN}),
                ));
            }
            if concrete.contains("{revision}") {
                op = op.parameter(typed_param(
                    "revision",
                    ParameterIn::Path,
                    true,
                    "revision to restore",
                    serde_json::json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
                ));
            }
            if matches!(*method, "put" | "delete") && kind.is_some() {
                op = op.parameter(typed_param(
                    "If-Match",
                    ParameterIn::Header,
                    false,
                    "expected revision; 409 when it differs",
                    serde_json::json!({"type": "string", "pattern": "^\"?[0-9]{1,18}\"?$"}),
                ));
            }
            if matches!(*method, "put" | "post" | "delete")
                && concrete.starts_with("/v1/")
                && !concrete.starts_with("/v1/cache")
            {
                op = op
                    .parameter(typed_param(
                        "wait",
                        ParameterIn::Query,
                        false,
                        "`applied`: wait until every member applied the write",
                        serde_json::json!({"type": "string", "enum": ["applied"]}),
                    ))
                    .parameter(typed_param(
                        "timeout_ms",
                        ParameterIn::Query,
                        false,
                        "bound for wait=applied, ms (default 5000; more than 60000 waits 60000)",
                        serde_json::json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
                    ));
            }
            if *method == "get" && (kind.is_some() || concrete == "/v1/config") {
                op = op.parameter(typed_param(
                    "consistent",
                    ParameterIn::Query,
                    false,
                    "`true`: linearizable read through the leader",
                    serde_json::json!({"type": "boolean"}),
                ));
                if kind.is_some() && !concrete.contains("{id}") {
                    op = op
                        .parameter(typed_param(
                            "limit",
                            ParameterIn::Query,
                            false,
                            "page size, 1 to 1000 (default 100)",
                            serde_json::json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                        ))
                        .parameter(string_param(
                            "after",
                            ParameterIn::Query,
                            false,
                            "cursor: the `next` of the previous page",
                        ));
                }
            }
            if concrete == "/v1/revisions" {
                op = op
                    .parameter(typed_param(
                        "after",
                        ParameterIn::Query,
                        false,
                        "revisions after this one",
                        serde_json::json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
                    ))
                    .parameter(typed_param(
                        "limit",
                        ParameterIn::Query,
                        false,
                        "page size (default 100); below 1 reads as 1, above 1000 as 1000",
                        serde_json::json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
                    ));
            }
            if concrete.starts_with("/v1/subscriptions/") && concrete.contains("{id}/") {
                op = op
                    .response("404", error_response("no such subscription"))
                    .response(
                        "409",
                        error_response(
                            "`illegal_transition` from the current state, or `conflict`",
                        ),
                    );
            }
            let body = match kind {
                // A PUT may leave `id` out (the path has it); a create
                // names it in the body.
                // (`bound_schemas` adds the required `id` of a create.)
                Some(k) if matches!(*method, "put" | "post") => Some(json_ref(&name_of(k))),
                None if concrete == "/v1/apply" => Some(json_ref("ApplyRequest")),
                _ => None,
            };
            if let Some(body) = body {
                let mut rb = RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content("application/json", body);
                if concrete == "/v1/apply" {
                    rb = rb.content("application/yaml", json_ref("ApplyRequest"));
                }
                op = op.request_body(Some(rb.build()));
            }
            if concrete == "/metrics" {
                let text = || {
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build()
                };
                op = op.response(
                    "200",
                    ResponseBuilder::new()
                        .description("Prometheus text, or OpenMetrics when asked for")
                        .content("text/plain", text())
                        .content("application/openmetrics-text", text()),
                );
            }
            if concrete == "/v1/cache/purge" {
                op = op
                    .description(Some(
                        "Purges this node's response cache: `{\"key\": K}` removes one key \
                         and its variants, `{\"prefix\": P}` every key starting with P. \
                         Answers `{\"purged\": N, \"scope\": \"node\"}`.",
                    ))
                    .request_body(Some(
                        RequestBodyBuilder::new()
                            .required(Some(Required::True))
                            .content("application/json", json_ref("CachePurgeSchema"))
                            .build(),
                    ));
            }
            paths = paths.path(concrete, PathItem::new(m.clone(), op.build()));
        }
    }
    let mut documents = serde_json::Map::new();
    let mut typed = Vec::new();
    for (kind, name) in &kind_names {
        documents.insert(
            (*kind).to_string(),
            serde_json::json!({"type": "array", "items": ref_of(name)}),
        );
        typed.push((
            format!("{name}Document"),
            raw_schema(serde_json::json!({
                "type": "object",
                "description": format!("a stored `{kind}` document with its revisions"),
                "required": ["kind", "id", "revision", "created", "value"],
                "properties": {
                    "kind": {"type": "string", "enum": [kind]},
                    "id": {"type": "string"},
                    "revision": {"type": "integer", "minimum": 0},
                    "created": {"type": "integer", "minimum": 0},
                    "value": ref_of(name),
                }
            })),
        ));
        typed.push((
            format!("{name}List"),
            raw_schema(serde_json::json!({
                "type": "object",
                "description": format!("a page of `{kind}`"),
                "required": ["items", "revision"],
                "properties": {
                    "items": {"type": "array", "items": ref_of(&format!("{name}Document"))},
                    "next": {"type": ["string", "null"], "description": "cursor for `after`"},
                    "revision": {"type": "integer", "minimum": 0},
                }
            })),
        ));
    }
    typed.push((
        "ApplyRequest".into(),
        raw_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["documents"],
            "properties": {
                "documents": {
                    "type": "object",
                    "additionalProperties": false,
                    "description": "desired documents by kind; kinds absent here are left alone",
                    "properties": Value::Object(documents),
                },
                "dry_run": {"type": "boolean"},
                "upsert": {
                    "type": "boolean",
                    "description": "create and update only: documents of the listed kinds that are not given are kept",
                },
                "message": {"type": "string"},
            }
        })),
    ));
    let components = ComponentsBuilder::new()
        .schemas_from_iter(kind_schemas)
        .schemas_from_iter(typed)
        .schema("ProblemSchema", ProblemSchema::schema())
        .schema("ErrorSchema", ErrorSchema::schema())
        .schema(
            "ErrorResponse",
            raw_schema(serde_json::json!({
                "type": "object",
                "description": "Every error answer.",
                "required": ["error"],
                "properties": {"error": ref_of("ErrorSchema")},
            })),
        )
        .schema("DocumentSchema", DocumentSchema::schema())
        .schema("WriteResultSchema", WriteResultSchema::schema())
        .schema("CachePurgeSchema", CachePurgeSchema::schema())
        .build();
    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("weir admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build();
    let mut out = serde_json::to_value(&doc).unwrap_or(Value::Null);
    let names: Vec<String> = kind_names.iter().map(|(_, n)| n.clone()).collect();
    bound_schemas(&mut out, &names);
    out
}

/// Writes the bounds the API checks into the derived schemas, so that
/// what the document calls valid is what the API accepts: ids, the
/// counts and lengths of `config::bounds`.
fn bound_schemas(doc: &mut Value, kind_schemas: &[String]) {
    use crate::config::bounds::{MAX_PATH_BYTES, MAX_PATHS_PER_ROUTE, MAX_TARGETS_PER_UPSTREAM};
    let schemas = &mut doc["components"]["schemas"];
    for name in kind_schemas {
        let schema = &mut schemas[name.as_str()];
        if let Some(id) = schema["properties"].get_mut("id") {
            id["pattern"] = Value::from(ID_PATTERN);
        }
        // In a PUT the path gives the id; a create's body schema requires it.
        if let Some(Value::Array(required)) = schema.get_mut("required") {
            required.retain(|r| r != "id");
        }
    }
    if let Some(paths) = schemas["RouteConfig"]["properties"].get_mut("paths") {
        paths["minItems"] = Value::from(1);
        paths["maxItems"] = Value::from(MAX_PATHS_PER_ROUTE);
        paths["items"]["maxLength"] = Value::from(MAX_PATH_BYTES);
        paths["items"]["pattern"] = Value::from("^/");
    }
    if let Some(targets) = schemas["UpstreamConfig"]["properties"].get_mut("targets") {
        targets["minItems"] = Value::from(1);
        targets["maxItems"] = Value::from(MAX_TARGETS_PER_UPSTREAM);
    }
    // A create names its id in the body; a PUT has it in the path.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(kind) = path.strip_prefix("/v1/") else {
                continue;
            };
            if !KINDS.contains(&kind) {
                continue;
            }
            let schema = &mut item["post"]["requestBody"]["content"]["application/json"]["schema"];
            if schema.get("$ref").is_some() {
                *schema = serde_json::json!({
                    "allOf": [schema.clone(), {"type": "object", "required": ["id"]}]
                });
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    unsigned_32(schemas);
    // The rules between fields that the derived schemas cannot say.
    let set = |v: &[&str]| -> Vec<Value> {
        v.iter()
            .map(|name| {
                serde_json::json!({"required": [name], "properties": {*name: {"not": {"type": "null"}}}})
            })
            .collect()
    };
    schemas["RouteConfig"]["anyOf"] = Value::Array(set(&["service", "upstream"]));
    schemas["SubscriptionDoc"]["oneOf"] = Value::Array(set(&["route", "service"]));
    schemas["CredentialDoc"]["oneOf"] =
        Value::Array(set(&["key-auth", "basic-auth", "jwt-auth", "hmac-auth"]));
    let purge = |name: &str, doc: &Value| {
        serde_json::json!({
            "type": "object",
            "required": [name],
            "additionalProperties": false,
            "properties": {name: {"type": "string", "minLength": 1, "description": doc}},
        })
    };
    let purge_doc = schemas["CachePurgeSchema"]["properties"].clone();
    schemas["CachePurgeSchema"] = serde_json::json!({
        "description": "A cache purge: exactly one of `key` and `prefix`.",
        "oneOf": [
            purge("key", &purge_doc["key"]["description"]),
            purge("prefix", &purge_doc["prefix"]["description"]),
        ],
    });
    if let Some(a) = schemas["TargetConfig"]["properties"].get_mut("addr") {
        // host:port, the host a name or an address ([v6] in brackets).
        a["pattern"] = Value::from(
            "^([A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\]):([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
        );
    }
    if let Some(st) = schemas["HealthCheckConfig"]["properties"].get_mut("expected_statuses") {
        st["items"]["minimum"] = Value::from(100);
        st["items"]["maximum"] = Value::from(599);
    }
    if let Some(m) = schemas["RetryBudgetConfig"]["properties"].get_mut("min_per_sec") {
        m["maximum"] = Value::from(crate::config::MAX_RETRIES_PER_SEC);
    }
    // serde's adjacently tagged enum: `ip` and `uri` carry no `name`.
    if let Some(Value::Array(variants)) = schemas["HashOn"].get_mut("oneOf") {
        for v in variants {
            v["additionalProperties"] = Value::Bool(false);
            if let Some(n) = v["properties"].get_mut("name") {
                n["minLength"] = Value::from(1);
            }
        }
    }
    if let Some(c) = schemas["StickyConfig"]["properties"].get_mut("cookie") {
        c["pattern"] = Value::from("^[A-Za-z0-9_-]+$");
    }
    if let Some(g) = schemas["ConsumerDoc"]["properties"].get_mut("groups") {
        g["items"]["pattern"] = Value::from("^[A-Za-z0-9._@-]{1,128}$");
    }
    if let Some(id) = schemas["GlobalPluginDoc"]["properties"].get_mut("id") {
        let names: Vec<&str> = crate::plugin::REGISTRY.iter().map(|d| d.name).collect();
        id["enum"] = serde_json::json!(names);
    }
}

/// utoipa writes `u32` as `int32` from 0, whose range ends at 2^31 - 1:
/// say what the API takes, 0 to 2^32 - 1.
fn unsigned_32(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.get("format").and_then(Value::as_str) == Some("int32")
                && o.get("minimum").and_then(Value::as_i64) == Some(0)
                && !o.contains_key("maximum")
            {
                o.insert("format".into(), Value::from("int64"));
                o.insert("maximum".into(), Value::from(u32::MAX));
            }
            o.values_mut().for_each(unsigned_32);
        }
        Value::Array(a) => a.iter_mut().for_each(unsigned_32),
        _ => {}
    }
}
