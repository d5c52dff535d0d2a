//! Turning one `RouteConfig` into its matching form, and the validation that
//! goes with it. Validation and compilation are one pass so that what
//! `weir validate` accepts is exactly what the router can build.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::Ipv6Addr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::bytes::Regex;

use crate::config::{Problems, RouteConfig, ValueMatch, ValueRule, VersionSource};

/// A route's conditions in matching form.
#[derive(Clone)]
pub(super) struct CompiledRoute {
    pub(super) priority: i32,
    /// Empty means any host.
    pub(super) hosts: Vec<HostPattern>,
    pub(super) paths: Vec<PathPattern>,
    /// Set for `version.from: path`; the tree handles it, not [`Conditions`].
    pub(super) path_version: Option<PathVersion>,
    pub(super) conditions: Conditions,
}

/// A host a route is bound to, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Exact(Box<str>),
    /// `*.example.com`, kept as `example.com`.
    Suffix(Box<str>),
}

/// A path pattern split into segments. `/a/` is `[Lit("a"), Lit("")]`,
/// which is how a trailing slash stays significant.
#[derive(Debug, Clone)]
pub(super) struct PathPattern {
    pub(super) segs: Vec<Seg>,
    /// The pattern ended in `/*`.
    pub(super) wildcard: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Seg {
    Lit(Box<str>),
    Param(Box<str>),
}

/// `version.from: path`.
#[derive(Clone)]
pub(super) struct PathVersion {
    pub(super) value: Box<str>,
    /// `value` as the path segment put in front of the route's paths.
    pub(super) segment: Seg,
    pub(super) strip: bool,
    pub(super) default: bool,
}

/// Conditions checked on a candidate after its path matched.
#[derive(Clone)]
pub(super) struct Conditions {
    /// Empty means any method.
    methods: Box<[Method]>,
    headers: Box<[HeaderCond]>,
    query: Box<[QueryCond]>,
    version: Option<VersionCond>,
}

#[derive(Clone)]
struct HeaderCond {
    name: HeaderName,
    test: ValueTest,
}

#[derive(Clone)]
struct QueryCond {
    name: Box<[u8]>,
    test: ValueTest,
}

#[derive(Clone)]
enum ValueTest {
    Exact(Box<[u8]>),
    Regex(Regex),
    Present(bool),
}

/// A version stated in a header or query argument: the value must equal
/// `value`, or be absent when `default` is set.
#[derive(Clone)]
enum VersionCond {
    Header {
        name: HeaderName,
        value: Box<[u8]>,
        default: bool,
    },
    Query {
        name: Box<[u8]>,
        value: Box<[u8]>,
        default: bool,
    },
}

impl CompiledRoute {
    /// How many conditions besides host and path the route has, for the
    /// fourth tie-break: the method list counts as one, each header and
    /// query rule as one, the version as one.
    pub(super) fn condition_count(&self) -> u32 {
        let c = &self.conditions;
        let n = usize::from(!c.methods.is_empty())
            + c.headers.len()
            + c.query.len()
            + usize::from(c.version.is_some() || self.path_version.is_some());
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

// === matching ===

impl Conditions {
    /// Cheapest tests first; regexes and query scans run only for the
    /// candidates that got this far.
    pub(super) fn matches(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(headers)) {
            return false;
        }
        if let Some(v) = &self.version
            && !v.matches(headers, query)
        {
            return false;
        }
        let q = query.unwrap_or("").as_bytes();
        self.query.iter().all(|c| c.matches(q))
    }
}

impl HeaderCond {
    /// A header sent several times passes when any of its values does.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.test {
            ValueTest::Present(want) => values.next().is_some() == *want,
            ValueTest::Exact(v) => values.any(|h| h.as_bytes() == &**v),
            ValueTest::Regex(re) => values.any(|h| re.is_match(h.as_bytes())),
        }
    }
}

impl QueryCond {
    /// An argument given several times passes when any of its values does.
    fn matches(&self, query: &[u8]) -> bool {
        let mut values = query_values(query, &self.name);
        match &self.test {
            ValueTest::Present(want) => values.next().is_some() == *want,
            ValueTest::Exact(v) => values.any(|raw| decoded_eq(raw, v)),
            ValueTest::Regex(re) => values.any(|raw| re.is_match(&decode(raw))),
        }
    }
}

impl VersionCond {
    fn matches(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        match self {
            VersionCond::Header {
                name,
                value,
                default,
            } => {
                let mut values = headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return *default;
                }
                values.any(|h| h.as_bytes() == &**value)
            }
            VersionCond::Query {
                name,
                value,
                default,
            } => {
                let mut values = query_values(query.unwrap_or("").as_bytes(), name).peekable();
                if values.peek().is_none() {
                    return *default;
                }
                values.any(|raw| decoded_eq(raw, value))
            }
        }
    }
}

/// The raw (still encoded) values of argument `name` in a query string.
/// Scanned on demand instead of parsed up front: most requests never reach
/// a route with query conditions.
fn query_values<'q>(query: &'q [u8], name: &'q [u8]) -> impl Iterator<Item = &'q [u8]> + 'q {
    query.split(|&b| b == b'&').filter_map(move |pair| {
        if pair.is_empty() {
            return None;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        decoded_eq(k, name).then_some(v)
    })
}

/// Form decoding (`+` is a space, `%XX` a byte) as an iterator, so that
/// comparing against a decoded value never allocates. A `%` not followed by
/// two hex digits stands for itself, as browsers do.
fn decoded(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *raw.get(i)?;
        i += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => match (raw.get(i).and_then(hex), raw.get(i + 1).and_then(hex)) {
                (Some(h), Some(l)) => {
                    i += 2;
                    Some(h << 4 | l)
                }
                _ => Some(b'%'),
            },
            _ => Some(b),
        }
    })
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    decoded(raw).eq(want.iter().copied())
}

/// Decoded bytes; borrowed when there is nothing to decode.
fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.iter().any(|&b| b == b'%' || b == b'+') {
        Cow::Owned(decoded(raw).collect())
    } else {
        Cow::Borrowed(raw)
    }
}

// === compiling and validating ===

/// Regexes compiled so far in one build, by source. Large tables repeat
/// the same few patterns across many routes; compiling each once keeps a
/// reload of thousands of routes fast, and clones share the compiled
/// program.
#[derive(Default)]
pub struct RegexCache(HashMap<String, Regex>);

/// Checks `r` and returns its matching form, or `None` after pushing every
/// problem found (with its field path under `at`) to `p`.
pub(super) fn compile(
    r: &RouteConfig,
    at: &str,
    p: &mut Problems,
    regexes: &mut RegexCache,
) -> Option<CompiledRoute> {
    let before = p.0.len();

    if r.paths.is_empty() {
        p.push(format!("{at}.paths"), "a route needs at least one path");
    }
    let paths: Vec<PathPattern> = r
        .paths
        .iter()
        .enumerate()
        .filter_map(|(i, path)| {
            parse_path(path)
                .map_err(|why| p.push(format!("{at}.paths[{i}]"), why))
                .ok()
        })
        .collect();

    let hosts: Vec<HostPattern> = r
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            parse_host(h)
                .map_err(|why| p.push(format!("{at}.hosts[{i}]"), why))
                .ok()
        })
        .collect();

    let methods: Box<[Method]> = r
        .methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            parse_method(m)
                .map_err(|why| p.push(format!("{at}.methods[{i}]"), why))
                .ok()
        })
        .collect();

    let headers: Box<[HeaderCond]> = r
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| compile_header(h, &format!("{at}.headers[{i}]"), p, regexes))
        .collect();

    let query: Box<[QueryCond]> = r
        .query
        .iter()
        .enumerate()
        .filter_map(|(i, q)| compile_query(q, &format!("{at}.query[{i}]"), p, regexes))
        .collect();

    let mut path_version = None;
    let mut version = None;
    if let Some(v) = &r.version {
        let vat = format!("{at}.version");
        match v.from {
            VersionSource::Path => match check_version_segment(&v.value) {
                Ok(()) => {
                    path_version = Some(PathVersion {
                        value: v.value.as_str().into(),
                        segment: Seg::Lit(v.value.as_str().into()),
                        strip: v.strip,
                        default: v.default,
                    })
                }
                Err(why) => p.push(format!("{vat}.value"), why),
            },
            VersionSource::Header => {
                if v.strip {
                    p.push(format!("{vat}.strip"), "only applies to `from: path`");
                }
                let name = HeaderName::from_bytes(v.name().as_bytes())
                    .map_err(|_| {
                        p.push(
                            format!("{vat}.name"),
                            format!("`{}` is not a valid header name", v.name()),
                        )
                    })
                    .ok();
                let value = check_header_value(&v.value)
                    .map_err(|why| p.push(format!("{vat}.value"), why))
                    .ok();
                if let (Some(name), Some(())) = (name, value) {
                    version = Some(VersionCond::Header {
                        name,
                        value: v.value.as_bytes().into(),
                        default: v.default,
                    });
                }
            }
            VersionSource::Query => {
                if v.strip {
                    p.push(format!("{vat}.strip"), "only applies to `from: path`");
                }
                let mut ok = true;
                if v.name().is_empty() {
                    p.push(format!("{vat}.name"), "must not be empty");
                    ok = false;
                }
                if v.value.is_empty() {
                    p.push(format!("{vat}.value"), "must not be empty");
                    ok = false;
                }
                if ok {
                    version = Some(VersionCond::Query {
                        name: v.name().as_bytes().into(),
                        value: v.value.as_bytes().into(),
                        default: v.default,
                    });
                }
            }
        }
    }

    if p.0.len() != before {
        return None;
    }
    Some(CompiledRoute {
        priority: r.priority,
        hosts,
        paths,
        path_version,
        conditions: Conditions {
            methods,
            headers,
            query,
            version,
        },
    })
}

/// Lookups recurse once per trie level, so path depth is capped well
/// inside any thread's stack.
const MAX_SEGMENTS: usize = 128;

/// Parses a path pattern; the error says what is wrong with it.
pub(super) fn parse_path(path: &str) -> Result<PathPattern, String> {
    let Some(body) = path.strip_prefix('/') else {
        return Err(format!("`{path}` must start with `/`"));
    };
    let parts: Vec<&str> = body.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(format!("`{path}` has more than {MAX_SEGMENTS} segments"));
    }
    let last = parts.len() - 1;
    let mut segs = Vec::with_capacity(parts.len());
    let mut wildcard = false;
    let mut names: Vec<&str> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if *part == "*" {
            if i != last {
                return Err(format!(
                    "`{path}`: `*` is only allowed as the whole last segment"
                ));
            }
            wildcard = true;
        } else if let Some(name) = part.strip_prefix(':') {
            if name.is_empty() {
                return Err(format!("`{path}`: a parameter needs a name, as in `/:id`"));
            }
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "`{path}`: parameter name `{name}` may only use letters, digits and `_`"
                ));
            }
            if names.contains(&name) {
                return Err(format!("`{path}`: parameter `{name}` appears twice"));
            }
            names.push(name);
            segs.push(Seg::Param(name.into()));
        } else if part.is_empty() && i != last {
            return Err(format!("`{path}` has an empty segment (`//`)"));
        } else {
            check_literal(part).map_err(|why| format!("`{path}`: {why}"))?;
            segs.push(Seg::Lit((*part).into()));
        }
    }
    Ok(PathPattern { segs, wildcard })
}

/// A literal segment must be something a request path can contain: the
/// router compares raw (not percent-decoded) bytes, so anything else could
/// never match.
fn check_literal(seg: &str) -> Result<(), String> {
    let b = seg.as_bytes();
    for (i, c) in seg.char_indices() {
        match c {
            '*' => return Err("`*` is only allowed as the whole last segment".into()),
            '%' if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)) =>
            {
                return Err("`%` must start a percent-escape such as `%20`".into());
            }
            '%' => {}
            c if c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@".contains(c) => {}
            c => {
                return Err(format!(
                    "character {c:?} cannot appear in a request path; percent-encode it"
                ));
            }
        }
    }
    Ok(())
}

fn check_version_segment(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.contains('/') {
        return Err(format!("`{v}` must be a single path segment (no `/`)"));
    }
    if v.starts_with(':') {
        return Err(format!("`{v}` must be literal, not a parameter"));
    }
    check_literal(v).map_err(|why| format!("`{v}`: {why}"))
}

/// Parses a host pattern, lowercased.
pub(super) fn parse_host(host: &str) -> Result<HostPattern, String> {
    if host.is_empty() {
        return Err("must not be empty; leave `hosts` empty to match any host".into());
    }
    let lower = host.to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(format!(
                "`{host}`: `*` is only allowed as the whole first label"
            ));
        }
        check_hostname(suffix).map_err(|why| format!("`{host}`: {why}"))?;
        return Ok(HostPattern::Suffix(suffix.into()));
    }
    if lower == "*" {
        return Err("`*` alone is not a host; leave `hosts` empty to match any host".into());
    }
    if lower.contains('*') {
        return Err(format!(
            "`{host}`: `*` is only allowed as the whole first label, as in `*.example.com`"
        ));
    }
    if let Some(inner) = lower.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(HostPattern::Exact(lower.as_str().into())),
            _ => Err(format!("`{host}` is not a valid bracketed IPv6 address")),
        };
    }
    check_hostname(&lower).map_err(|why| format!("`{host}`: {why}"))?;
    Ok(HostPattern::Exact(lower.into()))
}

fn check_hostname(h: &str) -> Result<(), String> {
    if h.contains(':') {
        return Err("must not include a port".into());
    }
    if h.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err("has an empty label".into());
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("may only use letters, digits, `-`, `_` and `.` (write names in their punycode form)".into());
        }
    }
    Ok(())
}

fn parse_method(m: &str) -> Result<Method, String> {
    let method = Method::from_bytes(m.as_bytes())
        .map_err(|_| format!("`{m}` is not a valid method token"))?;
    // Methods are case-sensitive, so `get` is a valid extension method that
    // no browser sends; almost always a typo for `GET`.
    let upper = m.to_ascii_uppercase();
    let standard = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if upper != m && standard.contains(&upper.as_str()) {
        return Err(format!("methods are case-sensitive; write `{upper}`"));
    }
    Ok(method)
}

fn check_header_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    HeaderValue::from_str(v)
        .map(|_| ())
        .map_err(|_| format!("`{v}` is not a valid header value"))
}

fn compile_header(
    h: &ValueMatch,
    at: &str,
    p: &mut Problems,
    regexes: &mut RegexCache,
) -> Option<HeaderCond> {
    let name = HeaderName::from_bytes(h.name.as_bytes())
        .map_err(|_| {
            p.push(
                format!("{at}.name"),
                format!("`{}` is not a valid header name", h.name),
            )
        })
        .ok();
    let test = match &h.rule {
        ValueRule::Exact(v) => HeaderValue::from_str(v)
            .map(|_| ValueTest::Exact(v.as_bytes().into()))
            .map_err(|_| {
                p.push(
                    format!("{at}.exact"),
                    format!("`{v}` is not a valid header value"),
                )
            })
            .ok(),
        rule => compile_rule(rule, at, p, regexes),
    };
    Some(HeaderCond {
        name: name?,
        test: test?,
    })
}

fn compile_query(
    q: &ValueMatch,
    at: &str,
    p: &mut Problems,
    regexes: &mut RegexCache,
) -> Option<QueryCond> {
    if q.name.is_empty() {
        p.push(format!("{at}.name"), "must not be empty");
    }
    let test = compile_rule(&q.rule, at, p, regexes)?;
    (!q.name.is_empty()).then(|| QueryCond {
        name: q.name.as_bytes().into(),
        test,
    })
}

fn compile_rule(
    rule: &ValueRule,
    at: &str,
    p: &mut Problems,
    regexes: &mut RegexCache,
) -> Option<ValueTest> {
    match rule {
        ValueRule::Exact(v) => Some(ValueTest::Exact(v.as_bytes().into())),
        ValueRule::Present(b) => Some(ValueTest::Present(*b)),
        ValueRule::Regex(src) if regexes.0.contains_key(src) => {
            regexes.0.get(src).cloned().map(ValueTest::Regex)
        }
        ValueRule::Regex(src) => match Regex::new(src) {
            Ok(re) => {
                regexes.0.insert(src.clone(), re.clone());
                Some(ValueTest::Regex(re))
            }
            Err(e) => {
                p.push(
                    format!("{at}.regex"),
                    format!("invalid regex `{src}`: {}", regex_reason(&e)),
                );
                None
            }
        },
    }
}

/// The regex crate's message spans several lines with a caret diagram;
/// config errors are one line, so keep only the reason.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once("error: ") {
        Some((_, why)) => why.trim().to_string(),
        None => text.lines().last().unwrap_or("").trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_handles_plus_escapes_and_stray_percent() {
        let d = |s: &str| decoded(s.as_bytes()).collect::<Vec<u8>>();
        assert_eq!(d("a+b%20c"), b"a b c");
        assert_eq!(d("100%"), b"100%");
        assert_eq!(d("%zz%4"), b"%zz%4");
        assert_eq!(d("%C3%A9"), "é".as_bytes());
        assert!(matches!(decode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn query_values_decode_names_and_skip_empty_pairs() {
        let q = b"&a%5Bb%5D=1&&x&a[b]=2&y=";
        let got: Vec<&[u8]> = query_values(q, b"a[b]").collect();
        assert_eq!(got, vec![&b"1"[..], &b"2"[..]]);
        assert_eq!(query_values(q, b"x").collect::<Vec<_>>(), vec![&b""[..]]);
        assert_eq!(query_values(q, b"y").count(), 1);
        assert_eq!(query_values(q, b"z").count(), 0);
    }

    #[test]
    fn regex_errors_are_one_line() {
        // Built at run time: a literal bad pattern would trip a lint.
        let src = String::from("a(");
        let e = Regex::new(&src).err();
        let why = e.as_ref().map(regex_reason).unwrap_or_default();
        assert_eq!(why, "unclosed group");
    }
}
