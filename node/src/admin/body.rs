//! Request bodies and query strings as the admin handlers read them.
//!
//! - JSON bodies are read into a `serde_json::Value` that refuses a key
//!   given twice in one object (serde_json alone keeps the last one, while
//!   the YAML loader refuses it: the two must agree). serde_json's own
//!   nesting limit (128) bounds depth.
//! - `/v1/apply` also takes YAML, read through the config loader's bounds
//!   ([`crate::config::parse_value`]).
//! - Query strings are parsed with the parameter named in every error
//!   (`consistent=maybe` is a 400 naming `consistent`, not a plain-text
//!   rejection).

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ApiError;

// === query strings ===

/// A query string parsed into `T`; a bad one is a JSON 400
/// (`invalid_query`) naming the parameter.
pub(super) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or("")).map(Query)
    }
}

/// `query` parsed into `T`, with the parameter named in the error.
pub(super) fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = if path == "." || path.is_empty() {
            format!("query string: {inner}")
        } else {
            format!("query parameter `{path}`: {inner}")
        };
        invalid_query(message)
    })
}

pub(super) fn invalid_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

/// A boolean query parameter: `true` or `false`, nothing else.
pub(super) fn query_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(invalid_query(format!(
            "query parameter `{name}`: `{other}` is not `true` or `false`"
        ))),
    }
}

// === JSON bodies ===

/// `body` as JSON, refusing a key repeated in one object. The error is
/// `(pointer, reason)`: where in the body, and why.
pub(super) fn json(body: &[u8]) -> Result<Value, (String, String)> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize::<_, Unique>(&mut de).map_err(|e| {
        let pointer = crate::docs::pointer_of(e.path());
        (pointer, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| (String::new(), e.to_string()))?;
    Ok(v.0)
}

/// A JSON value whose objects have no repeated key.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Unique::deserialize(d).map(|u| u.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Unique(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{key}` (each key may appear once in an object)"
                )));
            }
            let Unique(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_refused_where_it_is() {
        let (pointer, reason) =
            json(br#"{"id": "a", "keepalive": {"max_idle": 1, "max_idle": 2}}"#).unwrap_err();
        assert_eq!(pointer, "/keepalive");
        assert!(reason.contains("duplicate key `max_idle`"), "{reason}");
        assert_eq!(
            json(br#"{"a": [1, {"b": null}], "c": 1.5}"#).unwrap(),
            serde_json::json!({"a": [1, {"b": null}], "c": 1.5})
        );
        assert!(json(b"{} x").is_err());
    }

    #[test]
    fn deep_nesting_stops_at_serde_json_limit() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let (_, reason) = json(deep.as_bytes()).unwrap_err();
        assert!(reason.contains("recursion limit"), "{reason}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        #[serde(default)]
        consistent: Option<bool>,
    }

    #[test]
    fn a_bad_query_value_names_its_parameter() {
        let e = parse_query::<Q>("consistent=maybe").unwrap_err();
        assert!(e.message.contains("`consistent`"), "{}", e.message);
        assert_eq!(
            parse_query::<Q>("consistent=true").unwrap().consistent,
            Some(true)
        );
        assert!(parse_query::<Q>("nope=1").is_err());
        assert!(query_bool("consistent", "maybe").is_err());
    }
}
