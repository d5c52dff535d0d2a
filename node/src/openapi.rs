//! The OpenAPI 3 document served at `/v1/openapi.json`, built with
//! utoipa from [`crate::admin::ENDPOINTS`] (the list the router serves) and
//! the API's envelope types. `{kind}` is expanded into one path per
//! document kind, so generated clients get one method per kind.
//!
//! Document bodies are described as JSON objects with an `id`; the typed
//! schemas of routes, services and upstreams are not derived yet (the
//! config structs carry no schema derive), see `docs/admin-api.md`.

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

use crate::admin::ENDPOINTS;
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
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(doc))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn json_ref(name: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(name)))
        .build()
}

fn any_object() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
        .build()
}

/// The document.
pub fn document() -> Value {
    let mut paths = PathsBuilder::new();
    for (method, path) in ENDPOINTS {
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
                            ("get", true) => json_ref("DocumentSchema"),
                            ("put" | "post" | "delete", _) if kind.is_some() => {
                                json_ref("WriteResultSchema")
                            }
                            _ => any_object(),
                        },
                    ),
                )
                .response(
                    "400",
                    ResponseBuilder::new()
                        .description("invalid request; nothing was stored")
                        .content("application/json", json_ref("ErrorSchema")),
                )
                .response(
                    "401",
                    ResponseBuilder::new()
                        .description("missing or unknown admin key")
                        .content("application/json", json_ref("ErrorSchema")),
                );
            if concrete.contains("{id}") {
                op = op.parameter(string_param("id", ParameterIn::Path, true, "document id"));
            }
            if concrete.contains("{revision}") {
                op = op.parameter(string_param(
                    "revision",
                    ParameterIn::Path,
                    true,
                    "revision to restore",
                ));
            }
            if matches!(*method, "put" | "delete") && kind.is_some() {
                op = op
                    .parameter(string_param(
                        "If-Match",
                        ParameterIn::Header,
                        false,
                        "expected revision; 409 when it differs",
                    ))
                    .response(
                        "409",
                        ResponseBuilder::new()
                            .description("the document changed (If-Match) or already exists")
                            .content("application/json", json_ref("ErrorSchema")),
                    );
            }
            if matches!(*method, "put" | "post" | "delete")
                && concrete.starts_with("/v1/")
                && !concrete.starts_with("/v1/cache")
            {
                op = op
                    .parameter(string_param(
                        "wait",
                        ParameterIn::Query,
                        false,
                        "`applied`: wait until every member applied the write",
                    ))
                    .parameter(string_param(
                        "timeout_ms",
                        ParameterIn::Query,
                        false,
                        "bound for wait=applied (default 5000)",
                    ));
            }
            if *method == "get" && kind.is_some() {
                op = op.parameter(string_param(
                    "consistent",
                    ParameterIn::Query,
                    false,
                    "`true`: linearizable read through the leader",
                ));
                if !concrete.contains("{id}") {
                    op = op
                        .parameter(string_param(
                            "limit",
                            ParameterIn::Query,
                            false,
                            "page size, 1 to 1000 (default 100)",
                        ))
                        .parameter(string_param(
                            "after",
                            ParameterIn::Query,
                            false,
                            "cursor: the `next` of the previous page",
                        ));
                }
            }
            if matches!(*method, "put" | "post") && (kind.is_some() || concrete == "/v1/apply") {
                op = op.request_body(Some(
                    RequestBodyBuilder::new()
                        .required(Some(Required::True))
                        .content("application/json", any_object())
                        .build(),
                ));
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
    let components = ComponentsBuilder::new()
        .schema("ProblemSchema", ProblemSchema::schema())
        .schema("ErrorSchema", ErrorSchema::schema())
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
    serde_json::to_value(&doc).unwrap_or(Value::Null)
}
