//! Config problems: one [`ConfigProblem`] (field path, `line:column` when
//! known, reason), every problem of a document as [`ConfigErrors`], and the
//! [`Problems`] collector the checks push into. Every layer that checks
//! config (here, and the router, consumer and plugin checks run by
//! `compile`) reports through these types.

use std::fmt;

/// One problem in a config document, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path to the field, e.g. `routes[2].paths[0]`; empty for a
    /// YAML syntax error, which belongs to no field.
    pub path: String,
    /// `line:column` in the source, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((l, c)) = self.location {
            write!(f, "{l}:{c}: ")?;
        }
        // A syntax error belongs to no field.
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.reason)
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

    /// `Ok` when nothing was found, else every problem found.
    pub(crate) fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

// === finding a problem's line and column ===

/// Gives each problem that has no `line:column` yet (those found by the
/// checks that run on the parsed config, such as a route naming a service
/// that does not exist) the position of its field in `src`: of the field
/// itself when the document has it, else of the nearest enclosing field
/// that it has (a missing field is reported where its object starts).
pub(crate) fn locate_problems(src: &str, errors: &mut ConfigErrors) {
    for p in errors.0.iter_mut().filter(|p| p.location.is_none()) {
        p.location = locate(src, &p.path);
    }
}

/// The `line:column` of the node at `path` (`routes[5].service`), or of
/// its nearest ancestor that `src` has; `None` when not even the first
/// segment is there.
pub(crate) fn locate(src: &str, path: &str) -> Option<(usize, usize)> {
    let segments = segments(path)?;
    (1..=segments.len())
        .rev()
        .find_map(|n| seek(src, &segments[..n]))
}

/// Takes the node at `path` (`routes[0].pathz`) out of `doc`; `false`
/// when `doc` has no such node.
pub(crate) fn remove_at(doc: &mut serde_yaml_ng::Value, path: &str) -> bool {
    use serde_yaml_ng::Value;
    let Some(segments) = segments(path) else {
        return false;
    };
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = doc;
    for seg in parents {
        while let Value::Tagged(t) = at {
            at = &mut t.value;
        }
        let next = match (seg, at) {
            (Segment::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Segment::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        let Some(next) = next else {
            return false;
        };
        at = next;
    }
    while let Value::Tagged(t) = at {
        at = &mut t.value;
    }
    match (last, at) {
        (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        _ => false,
    }
}

/// One step of a field path: a map key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `routes[5].plugins.key-auth` as its steps; `None` for a path that is
/// not one (`(document)`, a file name).
fn segments(path: &str) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']')?;
            out.push(Segment::Index(n.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// What the seeking deserializer fails with when it reaches its node: the
/// YAML deserializer then adds that node's position to the error.
const FOUND: &str = "\u{0}found";

/// The position of the node at exactly `path`, by deserializing `src`
/// with a visitor that walks down `path` and fails on arrival.
fn seek(src: &str, path: &[Segment]) -> Option<(usize, usize)> {
    use serde::de::DeserializeSeed;
    let de = serde_yaml_ng::Deserializer::from_str(src);
    match (Seek { path }).deserialize(de) {
        Ok(()) => None,
        // The deserializer puts the path it was at before the message.
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        Err(_) => None,
    }
}

struct Seek<'a> {
    path: &'a [Segment],
}

impl<'de> serde::de::DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (first, rest) = self.path.split_first().ok_or_else(found::<A::Error>)?;
        while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
            let hit = match (first, &key) {
                (Segment::Key(k), serde_yaml_ng::Value::String(s)) => k == s,
                _ => false,
            };
            if hit {
                map.next_value_seed(Seek { path: rest })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (first, rest) = self.path.split_first().ok_or_else(found::<A::Error>)?;
        let mut i = 0;
        loop {
            let more = if *first == Segment::Index(i) {
                seq.next_element_seed(Seek { path: rest })?
            } else {
                seq.next_element::<serde::de::IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!file path`): the tag is not a step of the path.
        use serde::de::VariantAccess;
        let (serde::de::IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(self)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
}

impl Seek<'_> {
    /// A scalar: the node sought when the path ends here.
    fn leaf<E: serde::de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(found())
        } else {
            Ok(())
        }
    }
}

fn found<E: serde::de::Error>() -> E {
    E::custom(FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "upstreams:\n  - id: u\n    targets: [{addr: \"127.0.0.1:1\"}]\nroutes:\n  - id: a\n    paths: [/a]\n    upstream: u\n  - id: b\n    paths: [/b]\n    service: nosuch\n    plugins:\n      limit-count: {count: 5}\n";

    #[test]
    fn a_field_is_found_at_its_value() {
        assert_eq!(locate(SRC, "routes[1].service"), Some((10, 14)));
        assert_eq!(locate(SRC, "upstreams[0].targets[0].addr"), Some((3, 22)));
        assert_eq!(
            locate(SRC, "routes[1].plugins.limit-count.count"),
            Some((12, 28))
        );
    }

    #[test]
    fn a_missing_field_is_placed_at_its_nearest_ancestor() {
        assert_eq!(
            locate(SRC, "routes[1].plugins.limit-count.time_window"),
            Some((12, 20))
        );
        assert_eq!(locate(SRC, "routes[0].service"), Some((5, 5)));
        assert_eq!(locate(SRC, "consumers[0]"), None);
        assert_eq!(locate(SRC, "(document)"), None);
    }
}
