//! The document files of `weir get KIND [ID] -o yaml` and `weir apply -f`:
//! each stored document as a YAML document of its own, tagged with its
//! kind and written without the fields that only restate a default, so
//! that what `get` prints can be edited and applied back unchanged.
//!
//! A document file is told from a config file (the `--config` format,
//! whose kinds are top-level lists) by its top-level `kind`; applying one
//! creates or updates the documents it holds and deletes nothing. This
//! module only converts; calling the admin API is `client`'s job.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::Value;

/// `value` of `kind` without what reads back the same without it: nulls
/// anywhere, then each top-level field but `id` whose absence the
/// document's canonical form fills in with the same value.
pub(super) fn minimal(kind: &str, value: &Value) -> Value {
    let canonical = crate::docs::canonical(kind, value.clone());
    let mut out = without_nulls(value);
    if crate::docs::canonical(kind, out.clone()) != canonical {
        // Some null means something here: keep the document as stored.
        return value.clone();
    }
    let keys: Vec<String> = out
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "id").cloned().collect())
        .unwrap_or_default();
    for k in keys {
        let mut trial = out.clone();
        if let Some(o) = trial.as_object_mut() {
            o.remove(&k);
        }
        if crate::docs::canonical(kind, trial.clone()) == canonical {
            out = trial;
        }
    }
    out
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The documents as a YAML stream: `kind` first, then the document's
/// fields, documents separated by `---`.
///
/// # Errors
/// If a document cannot be written as YAML.
pub(super) fn to_yaml(kind: &str, values: &[&Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        // Kinds are plain words: no quoting needed. Written by hand so it
        // comes first (the map sorts its keys).
        out.push_str(&format!("kind: {kind}\n"));
        out.push_str(&serde_yaml_ng::to_string(&minimal(kind, v))?);
    }
    Ok(out)
}

/// The documents of a document file by kind, or `None` when `text` is not
/// one (its first document has no top-level `kind`: a config file).
///
/// # Errors
/// A document after the first that does not parse, or one that is not a
/// mapping or names no known kind, with the document's number.
pub(super) fn parse(text: &str) -> anyhow::Result<Option<BTreeMap<String, Vec<Value>>>> {
    use serde::Deserialize;
    // Over the input bounds: say so, whichever kind of file it is.
    if let Err(crate::config::bounds::Refused::Limit(why, at)) = crate::config::bounds::check(text)
    {
        match at {
            Some((l, c)) => bail!("{l}:{c}: {why}"),
            None => bail!("{why}"),
        }
    }
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let v = match Value::deserialize(de) {
            Ok(v) => v,
            // Not YAML at all: the config loader says where and why.
            Err(_) if i == 0 => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("document {n}")),
        };
        if v.is_null() {
            continue;
        }
        let Value::Object(mut o) = v else {
            if i == 0 {
                return Ok(None);
            }
            bail!("document {n}: not a mapping");
        };
        let kind = match o.remove("kind") {
            Some(Value::String(k)) => k,
            Some(_) => bail!("document {n}: kind: not a string"),
            None if i == 0 => return Ok(None),
            None => bail!("document {n}: no `kind`"),
        };
        if !crate::docs::is_kind(&kind) {
            bail!(
                "document {n}: kind: no kind `{kind}`; kinds: {}",
                crate::docs::KINDS.join(", ")
            );
        }
        by_kind.entry(kind).or_default().push(Value::Object(o));
    }
    Ok((!by_kind.is_empty()).then_some(by_kind))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_route_is_written_without_nulls_or_defaults_and_reads_back() {
        let stored = crate::docs::canonical(
            "routes",
            json!({"id": "a", "paths": ["/a"], "upstream": "u", "priority": 3}),
        );
        let text = to_yaml("routes", &[&stored]).unwrap();
        assert_eq!(
            text,
            "kind: routes\nid: a\npaths:\n- /a\npriority: 3\nupstream: u\n"
        );
        let back = parse(&text).unwrap().unwrap();
        assert_eq!(
            crate::docs::canonical("routes", back["routes"][0].clone()),
            stored
        );
    }

    #[test]
    fn a_config_file_is_not_a_document_file() {
        assert_eq!(parse("routes: []\nupstreams: []\n").unwrap(), None);
        let e = parse("kind: routes\nid: a\n---\nid: b\n").unwrap_err();
        assert_eq!(e.to_string(), "document 2: no `kind`");
        let e = parse("kind: nope\nid: a\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("document 1: kind: no kind `nope`"),
            "{e}"
        );
    }
}
