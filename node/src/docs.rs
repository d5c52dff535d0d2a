//! Config documents: how the routes, services and upstreams of a
//! [`Config`] are stored as JSON documents in the replicated store, and
//! back. Also the validator the store runs on every write.
//!
//! Kinds `routes`, `services` and `upstreams` have typed schemas (the same
//! structs as the YAML file). `consumers`, `credentials`, `subscriptions`
//! and `plugins` (global plugins) are stored as JSON objects with an `id`;
//! their schemas arrive with the plugin work, until then only their shape
//! (an object whose `id` matches) is checked.

use std::sync::Arc;

use serde_json::Value;
use weir_storage::{Docs, Problem, Validator};

use crate::config::{Config, RouteConfig, ServiceConfig, UpstreamConfig};

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

/// Kinds whose documents are typed config.
pub const TYPED: [&str; 3] = ["routes", "services", "upstreams"];

/// True for a known kind.
pub fn is_kind(kind: &str) -> bool {
    KINDS.contains(&kind)
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

fn pointer_of(path: &serde_path_to_error::Path) -> String {
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
    let mut out = Vec::new();
    if let Err(r) = check_id(id) {
        out.push(("/id".to_string(), r));
    }
    let Some(obj) = v.as_object() else {
        out.push((String::new(), "a document is a JSON object".into()));
        return out;
    };
    match obj.get("id") {
        Some(Value::String(s)) if s == id => {}
        Some(Value::String(s)) => out.push((
            "/id".into(),
            format!("`{s}` does not match the id in the path (`{id}`)"),
        )),
        _ => out.push(("/id".into(), "missing or not a string".into())),
    }
    let r = match kind {
        "routes" => typed::<RouteConfig>(v).map(|_| ()),
        "services" => typed::<ServiceConfig>(v).map(|_| ()),
        "upstreams" => typed::<UpstreamConfig>(v).map(|_| ()),
        _ => Ok(()),
    };
    if let Err(p) = r {
        out.push(p);
    }
    out
}

/// Where a `Config::validate` path (`routes[3].paths[0]`) points: the
/// document and the JSON pointer inside it.
fn locate(path: &str, index: &[(&'static str, Vec<String>)]) -> (String, String, String) {
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

/// Builds the routes, services and upstreams of a [`Config`] from stored
/// documents, on top of `base` (settings, observability). Documents that
/// do not parse are reported, not skipped silently.
pub fn config_from_docs(base: &Config, docs: &Docs) -> (Config, Vec<Problem>) {
    let mut cfg = base.clone();
    cfg.routes.clear();
    cfg.services.clear();
    cfg.upstreams.clear();
    let mut problems = Vec::new();
    for ((kind, id), d) in docs {
        let bad = |(pointer, reason): (String, String)| Problem {
            kind: kind.clone(),
            id: id.clone(),
            pointer,
            reason,
        };
        match kind.as_str() {
            "routes" => match typed(&d.value) {
                Ok(r) => cfg.routes.push(r),
                Err(p) => problems.push(bad(p)),
            },
            "services" => match typed(&d.value) {
                Ok(s) => cfg.services.push(s),
                Err(p) => problems.push(bad(p)),
            },
            "upstreams" => match typed(&d.value) {
                Ok(u) => cfg.upstreams.push(u),
                Err(p) => problems.push(bad(p)),
            },
            _ => {}
        }
    }
    (cfg, problems)
}

/// Every problem of the whole document set, located in its documents.
pub fn problems(docs: &Docs) -> Vec<Problem> {
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
        for (pointer, reason) in check_document(kind, id, &d.value) {
            out.push(Problem {
                kind: kind.clone(),
                id: id.clone(),
                pointer,
                reason,
            });
        }
    }
    if !out.is_empty() {
        return out;
    }
    // The settings are not replicated: validate the documents against the
    // defaults, so every node reaches the same verdict.
    let (cfg, parse) = config_from_docs(&Config::default(), docs);
    if !parse.is_empty() {
        return parse;
    }
    if let Err(errors) = cfg.validate() {
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
        ];
        for p in errors.0 {
            let (kind, id, pointer) = locate(&p.path, &index);
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

/// The validator the replicated store runs on every write.
pub fn validator() -> Validator {
    Arc::new(problems)
}

/// The typed objects of `cfg` as documents: `(kind, id, value)`.
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
            check_document("consumers", "c", &serde_json::json!({"id": "c", "any": 1})).is_empty()
        );
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
