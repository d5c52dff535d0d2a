//! The bounds on config input, checked before a YAML document is
//! deserialized (ADR 0040): its size, how deep it nests, and how many
//! values it stands for once its aliases are expanded. A YAML alias
//! (`*name`) repeats the node it names, so a few kilobytes of anchors can
//! stand for billions of values (the "billion laughs"); serde_yaml_ng
//! expands aliases as it deserializes, so the count is taken first, by a
//! walk that stops at the limit and builds nothing.
//!
//! The counts of routes, paths and targets are checked with the rest of
//! the document (`Config::check`), against the limits here. What the
//! document means is not this module's business.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Largest config document: a file, or a YAML `/v1/apply` body.
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024 * 1024;
/// Deepest nesting of mappings and sequences.
pub const MAX_DEPTH: usize = 64;
/// Most values (scalars, mappings, sequences) a document may stand for
/// with its aliases expanded.
pub const MAX_VALUES: usize = 1_000_000;
/// Most routes in one config.
pub const MAX_ROUTES: usize = 10_000;
/// Most paths of one route.
pub const MAX_PATHS_PER_ROUTE: usize = 256;
/// Most targets of one upstream.
pub const MAX_TARGETS_PER_UPSTREAM: usize = 1_024;
/// Longest route path, in bytes.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// Why a document was refused before it was read.
pub(crate) enum Refused {
    /// Over one of the bounds: the reason, and where when known.
    Limit(String, Option<(usize, usize)>),
    /// Not YAML.
    Syntax(serde_yaml_ng::Error),
}

/// Checks `src` (every document of a stream) against the size, depth and
/// expansion bounds; also finds syntax errors. Costs at most
/// [`MAX_VALUES`] steps whatever the document holds.
pub(crate) fn check(src: &str) -> Result<(), Refused> {
    if src.len() > MAX_DOCUMENT_BYTES {
        return Err(Refused::Limit(
            format!(
                "the document is {} bytes; the limit (document size) is {} bytes ({} MiB)",
                src.len(),
                MAX_DOCUMENT_BYTES,
                MAX_DOCUMENT_BYTES >> 20
            ),
            None,
        ));
    }
    if let Some(line) = flow_too_deep(src) {
        return Err(Refused::Limit(too_deep(), Some((line, 1))));
    }
    let mut budget = Budget { values: 0 };
    for de in serde_yaml_ng::Deserializer::from_str(src) {
        if let Err(e) = (Walk {
            budget: &mut budget,
            depth: 0,
        })
        .deserialize(de)
        {
            let msg = e.to_string();
            let at = e.location().map(|l| (l.line(), l.column()));
            return Err(if msg.contains(TOO_MANY) {
                Refused::Limit(too_many(), at)
            } else if msg.contains(TOO_DEEP) || msg.contains("recursion limit exceeded") {
                Refused::Limit(too_deep(), at)
            } else {
                Refused::Syntax(e)
            });
        }
    }
    Ok(())
}

fn too_many() -> String {
    format!(
        "the document stands for more than {MAX_VALUES} values once its aliases (`*name`) are expanded; the limit (values after alias expansion) is {MAX_VALUES}"
    )
}

fn too_deep() -> String {
    format!(
        "the document nests deeper than {MAX_DEPTH} levels; the limit (nesting depth) is {MAX_DEPTH}"
    )
}

/// Marks the walk's own errors among the YAML parser's.
const TOO_MANY: &str = "\u{0}too many values";
const TOO_DEEP: &str = "\u{0}too deep";

/// Flow collections (`[[[[...`) nest without indentation, so a small
/// document can nest very deep, and the YAML parser's cost grows with the
/// depth before any deserializer sees it. Returns the line where brackets
/// outside quotes and comments open deeper than the limit allows (a
/// bracket inside a plain scalar in block context may count too: the
/// slack of four times the limit covers those).
fn flow_too_deep(src: &str) -> Option<usize> {
    let bytes = src.as_bytes();
    let mut depth = 0usize;
    let mut line = 1;
    let mut i = 0;
    let mut prev_space = true;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => line += 1,
            b'#' if prev_space => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' if depth > 0 => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    } else if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'\'' if depth > 0 => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            break;
                        }
                    } else if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > 4 * MAX_DEPTH {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev_space = b.is_ascii_whitespace() || (depth > 0 && matches!(b, b',' | b'[' | b'{'));
        i += 1;
    }
    None
}

struct Budget {
    values: usize,
}

/// Walks one node, counting every value it stands for.
struct Walk<'a> {
    budget: &'a mut Budget,
    depth: usize,
}

impl Walk<'_> {
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.budget.values += 1;
        if self.budget.values > MAX_VALUES {
            return Err(E::custom(TOO_MANY));
        }
        Ok(())
    }

    fn child(&mut self) -> Walk<'_> {
        Walk {
            budget: self.budget,
            depth: self.depth + 1,
        }
    }

    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.count()?;
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(TOO_DEEP));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.count()
    }
    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.count()
    }
    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.count()
    }
    fn visit_i128<E: de::Error>(mut self, _: i128) -> Result<(), E> {
        self.count()
    }
    fn visit_u128<E: de::Error>(mut self, _: u128) -> Result<(), E> {
        self.count()
    }
    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.count()
    }
    fn visit_str<E: de::Error>(mut self, _: &str) -> Result<(), E> {
        self.count()
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.count()
    }
    fn visit_none<E: de::Error>(mut self) -> Result<(), E> {
        self.count()
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        while seq.next_element_seed(self.child())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        while map.next_key_seed(self.child())?.is_some() {
            map.next_value_seed(self.child())?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!file path`): the tag is not a value of its own.
        use de::VariantAccess;
        self.count()?;
        let (de::IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(self.child())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A type-correct alias bomb of about 208 KB: each level repeats the
    /// one before it 600 times.
    pub(crate) fn alias_bomb() -> String {
        let mut s = String::from("plugins:\n  a0: &a0 [\"/x\"]\n");
        let mut level = 1;
        while s.len() < 208 * 1024 {
            s.push_str(&format!("  a{level}: &a{level} ["));
            for _ in 0..600 {
                s.push_str(&format!("*a{}, ", level - 1));
            }
            s.push_str("]\n");
            level += 1;
        }
        s
    }

    fn limit(src: &str) -> String {
        match check(src) {
            Err(Refused::Limit(why, _)) => why,
            Err(Refused::Syntax(e)) => panic!("a syntax error, not a limit: {e}"),
            Ok(()) => panic!("accepted"),
        }
    }

    #[test]
    fn an_alias_bomb_is_refused_quickly() {
        let bomb = alias_bomb();
        assert!(bomb.len() >= 208 * 1024);
        let t = Instant::now();
        let why = limit(&bomb);
        assert!(why.contains("values after alias expansion"), "{why}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn deep_nesting_is_refused_quickly_in_flow_and_block_style() {
        let t = Instant::now();
        let flow = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(limit(&flow).contains("nesting depth"));
        let block = format!("routes:\n{}x\n", "- ".repeat(100_000));
        assert!(limit(&block).contains("nesting depth"));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn ordinary_documents_pass_and_syntax_errors_stay_syntax_errors() {
        assert!(check("routes: [{id: a, paths: ['/a[0]', \"/b{x}\"]}] # [[[\n").is_ok());
        assert!(check("a: &x [1, 2]\nb: *x\n---\nc: 1\n").is_ok());
        assert!(matches!(check("a: [1, 2\n"), Err(Refused::Syntax(_))));
        let big = "#".repeat(MAX_DOCUMENT_BYTES + 1);
        assert!(limit(&big).contains("document size"));
    }
}
