//! `compression`: gzip, brotli or zstd for response bodies, chosen by the
//! client's `Accept-Encoding` (RFC 9110 §12.5.3) and streamed: each chunk
//! is compressed and flushed as it passes, so a client sees bytes as soon
//! as the upstream sends them. The codecs are `flate2`, `brotli` and
//! `zstd`; this file only negotiates, decides and feeds them.
//!
//! It never compresses twice (an upstream `Content-Encoding` is left
//! alone) and leaves alone what must not change: `HEAD`, 1xx/204/304/206,
//! `Cache-Control: no-transform`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Plugin, PluginDef, RequestCtx, RequestHead, ResponseHead,
    parse_config,
};

/// Registration. Below the response cache, so the cache sees (and stores)
/// the uncompressed body and compression runs after it in every phase.
pub(super) const DEF: PluginDef = PluginDef {
    name: "compression",
    priority: 995,
    build,
};

/// A content coding this plugin can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Algorithm {
    #[serde(rename = "gzip")]
    Gzip,
    #[serde(rename = "br")]
    Brotli,
    #[serde(rename = "zstd")]
    Zstd,
}

impl Algorithm {
    fn token(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Brotli => "br",
            Algorithm::Zstd => "zstd",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }
}

/// Config of `compression`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Codings offered, in the server's order of preference (used when the
    /// client's q-values tie). Default `[zstd, br, gzip]`.
    #[serde(default = "default_algorithms")]
    algorithms: Vec<Algorithm>,
    /// Bodies with a known `Content-Length` below this are sent as they
    /// are. Default 256.
    #[serde(default = "default_min_length")]
    min_length: u64,
    /// Media types compressed: `type/subtype`, `type/*` or
    /// `type/*+suffix`. Default: text and the common text-like types.
    #[serde(default = "default_content_types")]
    content_types: Vec<String>,
    /// Level per coding.
    #[serde(default)]
    levels: Levels,
}

/// Compression level per coding.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Levels {
    /// gzip, 1–9. Default 5.
    #[serde(default = "default_gzip")]
    gzip: u32,
    /// brotli, 0–11. Default 4.
    #[serde(default = "default_br")]
    br: u32,
    /// zstd, 1–19. Default 3.
    #[serde(default = "default_zstd")]
    zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            gzip: default_gzip(),
            br: default_br(),
            zstd: default_zstd(),
        }
    }
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip]
}

fn default_min_length() -> u64 {
    256
}

fn default_gzip() -> u32 {
    5
}

fn default_br() -> u32 {
    4
}

fn default_zstd() -> i32 {
    3
}

/// The media types compressed when `content_types` is not set.
const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/x-ndjson",
    "application/graphql-response+json",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "font/ttf",
    "font/otf",
];

fn default_content_types() -> Vec<String> {
    DEFAULT_TYPES.iter().map(|s| (*s).to_string()).collect()
}

/// One entry of the content-type list, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TypePattern {
    /// `type/subtype`.
    Exact(String),
    /// `type/*`.
    AnySubtype(String),
    /// `type/*+suffix`: the structured-syntax suffix (RFC 6838 §4.2.8).
    Suffix(String, String),
}

impl TypePattern {
    fn parse(s: &str) -> Option<TypePattern> {
        let s = s.trim().to_ascii_lowercase();
        let (ty, sub) = s.split_once('/')?;
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !token(ty) {
            return None;
        }
        if sub == "*" {
            return Some(TypePattern::AnySubtype(ty.to_string()));
        }
        if let Some(suffix) = sub.strip_prefix("*+") {
            return token(suffix).then(|| TypePattern::Suffix(ty.to_string(), suffix.to_string()));
        }
        token(sub).then(|| TypePattern::Exact(s.clone()))
    }

    /// `media` is lower-case `type/subtype` without parameters.
    fn matches(&self, media: &str) -> bool {
        let Some((ty, sub)) = media.split_once('/') else {
            return false;
        };
        match self {
            TypePattern::Exact(m) => m == media,
            TypePattern::AnySubtype(t) => t == ty,
            TypePattern::Suffix(t, suffix) => {
                t == ty
                    && sub
                        .rsplit_once('+')
                        .is_some_and(|(_, s)| s == suffix.as_str())
            }
        }
    }
}

struct Compression {
    algorithms: Vec<Algorithm>,
    min_length: u64,
    types: Vec<TypePattern>,
    gzip_level: u32,
    br_level: u32,
    zstd_level: i32,
}

fn build(v: &serde_yaml_ng::Value, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = ConfigErrorList::new();
    if raw.algorithms.is_empty() {
        errs.push(("algorithms".into(), "must name at least one coding".into()));
    }
    for (i, a) in raw.algorithms.iter().enumerate() {
        if raw.algorithms[..i].contains(a) {
            errs.push((
                format!("algorithms[{i}]"),
                format!("`{}` is listed twice", a.token()),
            ));
        }
    }
    if raw.content_types.is_empty() {
        errs.push((
            "content_types".into(),
            "must name at least one media type".into(),
        ));
    }
    let mut types = Vec::with_capacity(raw.content_types.len());
    for (i, t) in raw.content_types.iter().enumerate() {
        match TypePattern::parse(t) {
            Some(p) => types.push(p),
            None => errs.push((
                format!("content_types[{i}]"),
                format!("`{t}` is not a media type (`type/subtype`, `type/*` or `type/*+suffix`)"),
            )),
        }
    }
    if !(1..=9).contains(&raw.levels.gzip) {
        errs.push((
            "levels.gzip".into(),
            format!("{} is not a level from 1 to 9", raw.levels.gzip),
        ));
    }
    if raw.levels.br > 11 {
        errs.push((
            "levels.br".into(),
            format!("{} is not a level from 0 to 11", raw.levels.br),
        ));
    }
    if !(1..=19).contains(&raw.levels.zstd) {
        errs.push((
            "levels.zstd".into(),
            format!("{} is not a level from 1 to 19", raw.levels.zstd),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Arc::new(Compression {
        algorithms: raw.algorithms,
        min_length: raw.min_length,
        types,
        gzip_level: raw.levels.gzip,
        br_level: raw.levels.br,
        zstd_level: raw.levels.zstd,
    }))
}

// === negotiation ===

/// The q-value of one `Accept-Encoding` entry, in thousandths (RFC 9110
/// §12.4.2: at most three decimals). `None` when it is unreadable.
fn qvalue(params: &str) -> Option<u16> {
    let mut q = 1000;
    for p in params.split(';') {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let v = v.trim();
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_val = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
        q = match int {
            "0" => frac_val,
            "1" if frac_val == 0 => 1000,
            _ => return None,
        };
    }
    Some(q)
}

/// What the client's `Accept-Encoding` says.
#[derive(Debug, Default)]
struct Accepted {
    /// `(coding, q)`, codings lower-cased; unreadable entries get q=0 (a
    /// coding the client did not clearly accept is never sent).
    entries: Vec<(String, u16)>,
}

impl Accepted {
    fn parse(headers: &HeaderMap) -> Option<Accepted> {
        let mut out = Accepted::default();
        let mut any = false;
        for v in headers.get_all(header::ACCEPT_ENCODING) {
            any = true;
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let (coding, params) = item.split_once(';').unwrap_or((item, ""));
                let coding = coding.trim().to_ascii_lowercase();
                if coding.is_empty() {
                    continue;
                }
                out.entries.push((coding, qvalue(params).unwrap_or(0)));
            }
        }
        any.then_some(out)
    }

    fn q_of(&self, coding: &str) -> Option<u16> {
        self.entries
            .iter()
            .find(|(c, _)| c == coding || (coding == "gzip" && c == "x-gzip"))
            .map(|(_, q)| *q)
    }

    /// The q of `coding`, falling back on `*`.
    fn q_with_wildcard(&self, coding: &str) -> u16 {
        self.q_of(coding).or_else(|| self.q_of("*")).unwrap_or(0)
    }
}

/// Picks the coding for a client: the acceptable coding (q > 0) with the
/// highest q, ties going to the server's order; `None` (identity) when
/// none is acceptable, when the header is absent, or when the client
/// ranks `identity` strictly higher than every offered coding.
fn negotiate(headers: &HeaderMap, offered: &[Algorithm]) -> Option<Algorithm> {
    let accepted = Accepted::parse(headers)?;
    let mut best: Option<(Algorithm, u16)> = None;
    for &a in offered {
        let q = accepted.q_with_wildcard(a.token());
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((a, q));
        }
    }
    let (algo, q) = best?;
    match accepted.q_of("identity") {
        Some(iq) if iq > q => None,
        _ => Some(algo),
    }
}

// === per-request state ===

/// Set in the access phase: the coding this client gets if the response
/// qualifies, or `None` for "identity, but the response still varies".
#[derive(Clone, Copy)]
struct Chosen(Option<Algorithm>);

/// The running encoder of one response. Behind a mutex only because
/// `http::Extensions` wants `Clone + Sync`; one request uses it at a time.
#[derive(Clone)]
struct Running(Arc<Mutex<Option<Encoder>>>);

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Window of the brotli encoder (log2 bytes): 4 MiB, the usual web choice.
const BROTLI_LGWIN: u32 = 22;

impl Encoder {
    fn new(algo: Algorithm, c: &Compression) -> std::io::Result<Encoder> {
        Ok(match algo {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(c.gzip_level),
            )),
            Algorithm::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                c.br_level,
                BROTLI_LGWIN,
            ))),
            Algorithm::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), c.zstd_level)?)
            }
        })
    }

    /// Compresses `data` and flushes, returning every byte produced so far.
    fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let out = match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
        };
        Ok(std::mem::take(out))
    }

    /// Ends the stream, returning its last bytes.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Brotli(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

// === impl Compression ===

impl Compression {
    /// Whether this response may be compressed at all (whoever asks): the
    /// reasons a response is left alone whatever the client accepts.
    fn eligible(&self, status: StatusCode, headers: &HeaderMap, len: Option<u64>) -> bool {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT
        {
            return false;
        }
        if headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return false;
        }
        if has_token(headers, &header::CACHE_CONTROL, "no-transform") {
            return false;
        }
        if len.is_some_and(|n| n < self.min_length) {
            return false;
        }
        let Some(media) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        self.types.iter().any(|t| t.matches(&media))
    }
}

/// Whether a comma-separated header has `token` (case-insensitive, before
/// any `=`).
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(token)
        })
}

/// Adds `Accept-Encoding` to `Vary`, merging every existing `Vary` line
/// into one; nothing to do when it is there or `Vary: *`.
fn add_vary(headers: &mut HeaderMap) {
    if has_token(headers, &header::VARY, "accept-encoding")
        || has_token(headers, &header::VARY, "*")
    {
        return;
    }
    let mut parts: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    parts.push("Accept-Encoding".to_string());
    match HeaderValue::from_str(&parts.join(", ")) {
        Ok(v) => {
            headers.insert(header::VARY, v);
        }
        // An unreadable upstream Vary is kept; ours goes on its own line.
        Err(_) => {
            headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

/// A strong `ETag` becomes weak: the compressed bytes differ from the
/// upstream's representation (RFC 9110 §8.8.1).
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(v) = headers.get(header::ETAG) else {
        return;
    };
    if v.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = b"W/".to_vec();
    weak.extend_from_slice(v.as_bytes());
    if let Ok(w) = HeaderValue::from_bytes(&weak) {
        headers.insert(header::ETAG, w);
    }
}

#[async_trait::async_trait]
impl Plugin for Compression {
    // Inspect, not access: an answer from a plugin that runs earlier (a
    // cache hit) is compressed too.
    fn inspect(&self, req: &RequestHead<'_>, ctx: &mut RequestCtx) {
        if req.method != Method::HEAD {
            ctx.ext
                .insert(Chosen(negotiate(req.headers, &self.algorithms)));
        }
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        // Nothing negotiated (HEAD): leave the answer as it is.
        let Some(Chosen(choice)) = ctx.ext.remove::<Chosen>() else {
            return;
        };
        let len = match resp.replace_body.as_ref() {
            Some(b) => Some(b.len() as u64),
            None => resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        };
        if !self.eligible(*resp.status, resp.headers, len) {
            return;
        }
        add_vary(resp.headers);
        let Some(algo) = choice else {
            return;
        };
        let encoder = match Encoder::new(algo, self) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(route = %ctx.route_id, error = %e, "compression: encoder not started");
                return;
            }
        };
        resp.headers.insert(header::CONTENT_ENCODING, algo.header());
        resp.headers.remove(header::CONTENT_LENGTH);
        // Byte ranges of the compressed form are not offered.
        resp.headers.remove(header::ACCEPT_RANGES);
        weaken_etag(resp.headers);
        ctx.ext.insert(Running(Arc::new(Mutex::new(Some(encoder)))));
    }

    fn filters_body(&self) -> bool {
        true
    }

    fn response_body(&self, chunk: &mut Bytes, ctx: &mut RequestCtx) {
        let Some(Running(enc)) = ctx.ext.get::<Running>() else {
            return;
        };
        let mut guard = match enc.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(e) = guard.as_mut() else {
            return;
        };
        match e.push(chunk) {
            Ok(out) => *chunk = Bytes::from(out),
            Err(err) => {
                // Writing into memory does not fail short of a codec bug;
                // the stream is then cut rather than sent corrupt.
                tracing::warn!(route = %ctx.route_id, error = %err, "compression failed");
                *guard = None;
                *chunk = Bytes::new();
            }
        }
    }

    fn response_end(&self, ctx: &mut RequestCtx) -> Option<Bytes> {
        let Running(enc) = ctx.ext.remove::<Running>()?;
        let e = match enc.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }?;
        match e.finish() {
            Ok(tail) => Some(Bytes::from(tail)),
            Err(err) => {
                tracing::warn!(route = %ctx.route_id, error = %err, "compression failed at the end");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ae: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(ae).unwrap());
        m
    }

    const ALL: &[Algorithm] = &[Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip];

    #[test]
    fn negotiation_table() {
        use Algorithm::*;
        let cases: &[(&str, &[Algorithm], Option<Algorithm>)] = &[
            ("gzip", ALL, Some(Gzip)),
            ("gzip, br, zstd", ALL, Some(Zstd)),
            ("gzip, br, zstd", &[Gzip, Brotli, Zstd], Some(Gzip)),
            ("gzip;q=1, br;q=0.5", ALL, Some(Gzip)),
            ("gzip;q=0.2, br;q=0.9", ALL, Some(Brotli)),
            ("br;q=0, gzip", ALL, Some(Gzip)),
            ("*", ALL, Some(Zstd)),
            ("*;q=0.5, zstd;q=0", ALL, Some(Brotli)),
            ("*;q=0", ALL, None),
            ("identity", ALL, None),
            ("", ALL, None),
            ("gzip;q=0.5, identity", ALL, None),
            ("gzip;q=0.5, identity;q=0.5", ALL, Some(Gzip)),
            ("deflate, compress", ALL, None),
            ("GZIP;Q=0.7", ALL, Some(Gzip)),
            ("x-gzip", ALL, Some(Gzip)),
            ("gzip;q=2", ALL, None),
            ("gzip;q=0.0001", ALL, None),
            ("gzip;q=0.001", ALL, Some(Gzip)),
            ("gzip;q=abc, br", ALL, Some(Brotli)),
            ("br", &[Gzip], None),
        ];
        for (ae, offered, want) in cases {
            assert_eq!(negotiate(&h(ae), offered), *want, "Accept-Encoding: {ae:?}");
        }
        assert_eq!(negotiate(&HeaderMap::new(), ALL), None, "no header");
    }

    #[test]
    fn type_patterns() {
        let p = |s| TypePattern::parse(s).unwrap();
        assert!(p("text/*").matches("text/html"));
        assert!(!p("text/*").matches("image/png"));
        assert!(p("application/*+json").matches("application/problem+json"));
        assert!(!p("application/*+json").matches("application/json"));
        assert!(p("Application/JSON").matches("application/json"));
        assert!(TypePattern::parse("json").is_none());
        assert!(TypePattern::parse("text/ html").is_none());
        assert!(TypePattern::parse("*/*").is_none());
    }

    #[test]
    fn vary_merges_into_one_line() {
        let mut m = HeaderMap::new();
        m.append(header::VARY, HeaderValue::from_static("Origin"));
        m.append(header::VARY, HeaderValue::from_static("Cookie, X-Lang"));
        add_vary(&mut m);
        assert_eq!(m.get_all(header::VARY).iter().count(), 1);
        assert_eq!(m[header::VARY], "Origin, Cookie, X-Lang, Accept-Encoding");
        add_vary(&mut m);
        assert_eq!(m[header::VARY], "Origin, Cookie, X-Lang, Accept-Encoding");
        let mut star = HeaderMap::new();
        star.insert(header::VARY, HeaderValue::from_static("*"));
        add_vary(&mut star);
        assert_eq!(star[header::VARY], "*");
    }

    #[test]
    fn etag_is_weakened_once() {
        let mut m = HeaderMap::new();
        m.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        weaken_etag(&mut m);
        assert_eq!(m[header::ETAG], "W/\"abc\"");
        weaken_etag(&mut m);
        assert_eq!(m[header::ETAG], "W/\"abc\"");
    }

    #[test]
    fn bad_config_names_the_field() {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "{algorithms: [gzip, gzip], content_types: [json], levels: {gzip: 0, br: 12, zstd: 20}}",
        )
        .unwrap();
        let env = BuildEnv {
            consumers: Arc::new(crate::consumer::Consumers::default()),
            settings: Arc::new(crate::config::Settings::default()),
            consumer_level: false,
            stores: crate::stores::BuildStores::scratch(),
            owner: crate::stores::Owner::Global,
            redis: None,
        };
        let errs = build(&v, &env).err().unwrap();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "algorithms[1]",
                "content_types[0]",
                "levels.gzip",
                "levels.br",
                "levels.zstd"
            ]
        );
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str("{algorithms: [deflate]}").unwrap();
        let errs = build(&v, &env).err().unwrap();
        assert!(errs[0].0.starts_with("algorithms"), "{errs:?}");
    }

    #[test]
    fn each_encoder_round_trips_chunk_by_chunk() {
        use std::io::Read;
        let v = serde_yaml_ng::Value::Null;
        let env = BuildEnv {
            consumers: Arc::new(crate::consumer::Consumers::default()),
            settings: Arc::new(crate::config::Settings::default()),
            consumer_level: false,
            stores: crate::stores::BuildStores::scratch(),
            owner: crate::stores::Owner::Global,
            redis: None,
        };
        let _ = build(&v, &env).ok().unwrap();
        let c = Compression {
            algorithms: ALL.to_vec(),
            min_length: 0,
            types: vec![],
            gzip_level: 5,
            br_level: 4,
            zstd_level: 3,
        };
        let input: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for &a in ALL {
            let mut e = Encoder::new(a, &c).unwrap();
            let mut out = Vec::new();
            for part in input.chunks(7000) {
                let got = e.push(part).unwrap();
                assert!(!got.is_empty(), "{a:?}: each flushed chunk yields bytes");
                out.extend_from_slice(&got);
            }
            out.extend_from_slice(&e.finish().unwrap());
            let mut back = Vec::new();
            match a {
                Algorithm::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Algorithm::Brotli => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Algorithm::Zstd => back = zstd::stream::decode_all(&out[..]).unwrap(),
            }
            assert_eq!(back, input, "{a:?}");
        }
    }
}
