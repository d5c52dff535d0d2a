//! RFC 9111 rules for a shared cache, as pure functions over headers and
//! explicit times: whether a response may be stored and for how long it is
//! fresh (§3, §4.2), its current age (§4.2.3), and what a request allows
//! (§5.2.1). No I/O, no clock: the caller passes the times.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// The `Cache-Control` directives a shared cache acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `max-age` (a malformed value reads as 0: stale, §4.2.1).
    pub max_age: Option<u64>,
    /// `s-maxage`: wins over `max-age` in a shared cache.
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without a field list: the whole response).
    pub no_cache: bool,
    /// `private` (with or without a field list: never stored here).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
    /// `min-fresh` (requests).
    pub min_fresh: Option<u64>,
}

/// Reads every `Cache-Control` field of `headers`. Names are
/// case-insensitive; unknown directives are ignored; a duplicated
/// directive keeps its smallest (most conservative) value.
pub fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (item, None),
            };
            let secs = || value.map_or(0, delta_seconds);
            let keep_min = |slot: &mut Option<u64>, s: u64| {
                *slot = Some(slot.map_or(s, |old| old.min(s)));
            };
            match name.to_ascii_lowercase().as_str() {
                "max-age" => keep_min(&mut d.max_age, secs()),
                "s-maxage" => keep_min(&mut d.s_maxage, secs()),
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "stale-while-revalidate" => keep_min(&mut d.stale_while_revalidate, secs()),
                "stale-if-error" => keep_min(&mut d.stale_if_error, secs()),
                "min-fresh" => keep_min(&mut d.min_fresh, secs()),
                _ => {}
            }
        }
    }
    d
}

/// The largest delta-seconds value kept (RFC 9111 §1.2.2: a cache treats
/// anything larger as 2^31, about 68 years). Keeps every sum of ages and
/// lifetimes far from overflowing.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A delta-seconds value: digits, capped at [`MAX_DELTA_SECONDS`] (so a
/// value too long for a `u64` is the cap too); anything else reads as 0
/// (stale, §4.2.1).
fn delta_seconds(v: &str) -> u64 {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>()
            .unwrap_or(MAX_DELTA_SECONDS)
            .min(MAX_DELTA_SECONDS)
    } else {
        0
    }
}

/// Statuses that may be stored with heuristic freshness (RFC 9110
/// §15.1), minus 206: partial content is not stored (range requests
/// bypass the cache).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The route's own freshness rules, on top of the upstream's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Freshness for a response that gives none (no `s-maxage`,
    /// `max-age` or `Expires`); zero stores nothing without explicit
    /// freshness or a validator.
    pub ttl: Duration,
    /// Freshness that replaces whatever the upstream says (`no-store`,
    /// `private`, `no-cache` and `Vary: *` are still obeyed).
    pub force_ttl: Option<Duration>,
}

/// How a stored response ages: the facts needed to answer later lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness lifetime (§4.2.1).
    pub lifetime: Duration,
    /// Corrected initial age when received (§4.2.3).
    pub initial_age: Duration,
    /// When the response was received.
    pub response_time: SystemTime,
    /// May be served stale while a refresh runs, for this long past its
    /// lifetime.
    pub stale_while_revalidate: Duration,
    /// May be served stale when the upstream fails, for this long.
    pub stale_if_error: Duration,
    /// Every use needs a successful revalidation first (`no-cache`).
    pub always_revalidate: bool,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`,
    /// `s-maxage`).
    pub no_stale: bool,
}

impl Freshness {
    /// Current age at `now` (§4.2.3): the corrected initial age plus the
    /// time spent in this cache.
    pub fn age(&self, now: SystemTime) -> Duration {
        let resident = now
            .duration_since(self.response_time)
            .unwrap_or(Duration::ZERO);
        self.initial_age.saturating_add(resident)
    }

    /// Whether it is fresh at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        !self.always_revalidate && self.age(now) < self.lifetime
    }

    /// How long past its lifetime it is at `now` (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.age(now).saturating_sub(self.lifetime)
    }
}

/// Why a response is not stored (for logs and tests).
pub type NotStored = &'static str;

/// Decides whether a shared cache may store the response to a request,
/// and its freshness (RFC 9111 §3 and §4.2). `request_time` is when the
/// request was sent upstream, `response_time` when the answer came.
pub fn storable(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
    rules: &Overrides,
) -> Result<Freshness, NotStored> {
    if method != Method::GET {
        return Err("method is not GET");
    }
    let rq = directives(req);
    if rq.no_store {
        return Err("request says no-store");
    }
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT {
        return Err("status is not storable");
    }
    let cc = directives(resp);
    if cc.no_store {
        return Err("response says no-store");
    }
    if cc.private {
        return Err("response is private");
    }
    if vary_names(resp).is_none() {
        return Err("response varies on *");
    }
    if resp.contains_key(header::SET_COOKIE) {
        return Err("response sets a cookie");
    }
    // §3.5: a request with credentials is only stored when the response
    // explicitly allows a shared cache to.
    if req.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return Err("request carries Authorization");
    }
    let date = http_date(resp, header::DATE);
    let explicit = if let Some(s) = cc.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(s) = cc.max_age {
        Some(Duration::from_secs(s))
    } else if resp.contains_key(header::EXPIRES) {
        // An invalid date (e.g. "0") means already expired (§5.3).
        let expires = http_date(resp, header::EXPIRES).unwrap_or(SystemTime::UNIX_EPOCH);
        let base = date.unwrap_or(response_time);
        Some(expires.duration_since(base).unwrap_or(Duration::ZERO))
    } else {
        None
    };
    let heuristic = heuristically_cacheable(status);
    if explicit.is_none() && !heuristic {
        return Err("status needs explicit freshness");
    }
    let lifetime = match (rules.force_ttl, explicit) {
        (Some(f), _) if heuristic || explicit.is_some() => f,
        (_, Some(e)) => e,
        _ => rules.ttl,
    };
    let has_validator = resp.contains_key(header::ETAG) || resp.contains_key(header::LAST_MODIFIED);
    let no_stale = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    let may_serve_stale =
        !no_stale && (cc.stale_while_revalidate.is_some() || cc.stale_if_error.is_some());
    if lifetime.is_zero() && !has_validator && !may_serve_stale {
        return Err("no freshness and no validator");
    }
    // §4.2.3
    let age_value = resp
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map_or(Duration::ZERO, |v| Duration::from_secs(delta_seconds(v)));
    let apparent_age = date.map_or(Duration::ZERO, |d| {
        response_time.duration_since(d).unwrap_or(Duration::ZERO)
    });
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let initial_age = apparent_age.max(age_value.saturating_add(response_delay));
    let secs = |o: Option<u64>| o.map_or(Duration::ZERO, Duration::from_secs);
    Ok(Freshness {
        lifetime,
        initial_age,
        response_time,
        stale_while_revalidate: if no_stale {
            Duration::ZERO
        } else {
            secs(cc.stale_while_revalidate)
        },
        stale_if_error: if no_stale {
            Duration::ZERO
        } else {
            secs(cc.stale_if_error)
        },
        always_revalidate: cc.no_cache,
        no_stale,
    })
}

/// The names in `Vary`, lowercased; `None` for `Vary: *`.
pub fn vary_names(resp: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut out = Vec::new();
    for v in resp.get_all(header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
    }
    Some(out)
}

fn http_date(h: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
}

/// What a request allows the cache to do (§5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestRules {
    /// `no-store`: neither served from nor stored in the cache.
    pub no_store: bool,
    /// `no-cache`, `max-age=0` or `Pragma: no-cache`: a stored response
    /// must be revalidated first.
    pub revalidate: bool,
    /// `max-age=N`: a stored response older than this is not used.
    pub max_age: Option<u64>,
    /// `min-fresh=N`: a stored response must stay fresh this long.
    pub min_fresh: Option<u64>,
}

/// Reads what a request allows.
pub fn request_rules(req: &HeaderMap) -> RequestRules {
    let d = directives(req);
    let pragma_no_cache = !req.contains_key(header::CACHE_CONTROL)
        && req.get_all(header::PRAGMA).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
        });
    RequestRules {
        no_store: d.no_store,
        revalidate: d.no_cache || d.max_age == Some(0) || pragma_no_cache,
        max_age: d.max_age,
        min_fresh: d.min_fresh,
    }
}

/// What may be done with a stored response for a request at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Serve it as is.
    Fresh,
    /// Serve it now and refresh it in the background
    /// (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Ask the upstream first (conditionally when it has a validator).
    Revalidate,
}

/// Decides how a stored response may answer a request (§4.2, §4.3).
pub fn usable(f: &Freshness, req: &RequestRules, now: SystemTime) -> Use {
    if req.revalidate || f.always_revalidate {
        return Use::Revalidate;
    }
    let age = f.age(now).as_secs();
    if req.max_age.is_some_and(|m| age > m) {
        return Use::Revalidate;
    }
    let needed = f
        .age(now)
        .saturating_add(req.min_fresh.map_or(Duration::ZERO, Duration::from_secs));
    if needed < f.lifetime {
        return Use::Fresh;
    }
    if !f.no_stale
        && req.max_age.is_none()
        && f.staleness(now) < f.stale_while_revalidate
        && f.age(now) >= f.lifetime
    {
        return Use::StaleWhileRevalidate;
    }
    Use::Revalidate
}

/// Whether a failed fetch (5xx, unreachable upstream) may be answered
/// with the stored response (`stale-if-error`, RFC 5861 §4).
pub fn stale_if_error(f: &Freshness, now: SystemTime) -> bool {
    !f.no_stale && f.staleness(now) < f.stale_if_error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    /// One storing case: request, response, route rules → expected
    /// lifetime (or why it is not stored).
    struct Case {
        name: &'static str,
        method: Method,
        req: Vec<(&'static str, String)>,
        status: u16,
        resp: Vec<(&'static str, String)>,
        rules: Overrides,
        want: Result<u64, &'static str>,
    }

    fn case(
        name: &'static str,
        resp: &[(&'static str, &str)],
        want: Result<u64, &'static str>,
    ) -> Case {
        Case {
            name,
            method: Method::GET,
            req: vec![],
            status: 200,
            resp: resp.iter().map(|(n, v)| (*n, v.to_string())).collect(),
            rules: Overrides::default(),
            want,
        }
    }

    #[test]
    fn storing_rules_table() {
        let ttl = Overrides {
            ttl: Duration::from_secs(30),
            force_ttl: None,
        };
        let force = Overrides {
            ttl: Duration::ZERO,
            force_ttl: Some(Duration::from_secs(7)),
        };
        let cases = vec![
            case("max-age", &[("cache-control", "max-age=60")], Ok(60)),
            case(
                "s-maxage wins in a shared cache",
                &[("cache-control", "max-age=60, s-maxage=5")],
                Ok(5),
            ),
            case(
                "names are case-insensitive",
                &[("cache-control", "Max-Age=9")],
                Ok(9),
            ),
            case(
                "quoted value",
                &[("cache-control", "max-age=\"12\"")],
                Ok(12),
            ),
            case(
                "duplicate directive keeps the smaller",
                &[
                    ("cache-control", "max-age=60"),
                    ("cache-control", "max-age=10"),
                ],
                Ok(10),
            ),
            case(
                "malformed max-age is stale, kept for its validator",
                &[("cache-control", "max-age=abc"), ("etag", "\"x\"")],
                Ok(0),
            ),
            case(
                "no-store",
                &[("cache-control", "max-age=60, no-store")],
                Err("response says no-store"),
            ),
            case(
                "private",
                &[("cache-control", "private, max-age=60")],
                Err("response is private"),
            ),
            case(
                "private with fields is still private",
                &[("cache-control", "private=\"set-cookie\", max-age=60")],
                Err("response is private"),
            ),
            case(
                "no-cache is stored, always revalidated",
                &[("cache-control", "no-cache, max-age=60")],
                Ok(60),
            ),
            case(
                "Vary: * is never stored",
                &[("cache-control", "max-age=60"), ("vary", "accept, *")],
                Err("response varies on *"),
            ),
            case(
                "Set-Cookie is not stored",
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                Err("response sets a cookie"),
            ),
            case(
                "no freshness, no validator, no ttl",
                &[],
                Err("no freshness and no validator"),
            ),
            case(
                "validator alone: stored stale, for revalidation",
                &[("etag", "\"v1\"")],
                Ok(0),
            ),
            case(
                "last-modified is a validator",
                &[("last-modified", &date(0))],
                Ok(0),
            ),
            case(
                "stale-while-revalidate alone is worth storing",
                &[("cache-control", "max-age=0, stale-while-revalidate=30")],
                Ok(0),
            ),
            Case {
                name: "Expires minus Date",
                resp: vec![("date", date(0)), ("expires", date(100))],
                ..case("", &[], Ok(100))
            },
            Case {
                name: "Expires in the past",
                resp: vec![
                    ("date", date(100)),
                    ("expires", date(0)),
                    ("etag", "\"e\"".into()),
                ],
                ..case("", &[], Ok(0))
            },
            Case {
                name: "invalid Expires means expired",
                resp: vec![("expires", "0".into()), ("etag", "\"e\"".into())],
                ..case("", &[], Ok(0))
            },
            Case {
                name: "max-age wins over Expires",
                resp: vec![
                    ("date", date(0)),
                    ("expires", date(100)),
                    ("cache-control", "max-age=5".into()),
                ],
                ..case("", &[], Ok(5))
            },
            Case {
                name: "route ttl when the upstream gives none",
                rules: ttl,
                ..case("", &[], Ok(30))
            },
            Case {
                name: "route ttl does not override max-age",
                rules: ttl,
                ..case("", &[("cache-control", "max-age=3")], Ok(3))
            },
            Case {
                name: "force_ttl overrides max-age",
                rules: force,
                ..case("", &[("cache-control", "max-age=3")], Ok(7))
            },
            Case {
                name: "force_ttl does not override no-store",
                rules: force,
                ..case(
                    "",
                    &[("cache-control", "no-store")],
                    Err("response says no-store"),
                )
            },
            Case {
                name: "POST is not stored",
                method: Method::POST,
                ..case(
                    "",
                    &[("cache-control", "max-age=60")],
                    Err("method is not GET"),
                )
            },
            Case {
                name: "request no-store",
                req: vec![("cache-control", "no-store".into())],
                ..case(
                    "",
                    &[("cache-control", "max-age=60")],
                    Err("request says no-store"),
                )
            },
            Case {
                name: "Authorization without permission",
                req: vec![("authorization", "Bearer x".into())],
                ..case(
                    "",
                    &[("cache-control", "max-age=60")],
                    Err("request carries Authorization"),
                )
            },
            Case {
                name: "Authorization with public",
                req: vec![("authorization", "Bearer x".into())],
                ..case("", &[("cache-control", "public, max-age=60")], Ok(60))
            },
            Case {
                name: "Authorization with s-maxage",
                req: vec![("authorization", "Bearer x".into())],
                ..case("", &[("cache-control", "s-maxage=60")], Ok(60))
            },
            Case {
                name: "Authorization with must-revalidate",
                req: vec![("authorization", "Bearer x".into())],
                ..case(
                    "",
                    &[("cache-control", "must-revalidate, max-age=60")],
                    Ok(60),
                )
            },
            Case {
                name: "404 is heuristically cacheable",
                status: 404,
                rules: ttl,
                ..case("", &[], Ok(30))
            },
            Case {
                name: "301 is heuristically cacheable",
                status: 301,
                rules: ttl,
                ..case("", &[], Ok(30))
            },
            Case {
                name: "302 needs explicit freshness",
                status: 302,
                rules: ttl,
                ..case("", &[], Err("status needs explicit freshness"))
            },
            Case {
                name: "302 with max-age",
                status: 302,
                ..case("", &[("cache-control", "max-age=60")], Ok(60))
            },
            Case {
                name: "500 without freshness",
                status: 500,
                rules: force,
                ..case("", &[], Err("status needs explicit freshness"))
            },
            Case {
                name: "206 is not stored",
                status: 206,
                ..case(
                    "",
                    &[("cache-control", "max-age=60")],
                    Err("status is not storable"),
                )
            },
        ];
        for c in cases {
            let req: Vec<(&str, &str)> = c.req.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let resp: Vec<(&str, &str)> = c.resp.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let got = storable(
                &c.method,
                &headers(&req),
                StatusCode::from_u16(c.status).unwrap(),
                &headers(&resp),
                at(0),
                at(0),
                &c.rules,
            )
            .map(|f| f.lifetime.as_secs());
            assert_eq!(got, c.want, "case: {}", c.name);
        }
    }

    #[test]
    fn current_age_follows_rfc_9111_4_2_3() {
        let fresh = |resp: &[(&str, &str)], req_at: u64, resp_at: u64| {
            storable(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &headers(resp),
                at(req_at),
                at(resp_at),
                &Overrides::default(),
            )
            .unwrap()
        };
        // Age header plus the response delay.
        let f = fresh(&[("cache-control", "max-age=100"), ("age", "10")], 0, 2);
        assert_eq!(f.initial_age, Duration::from_secs(12));
        assert_eq!(f.age(at(2 + 30)), Duration::from_secs(42));
        // Apparent age from Date wins when larger.
        let d = date(0);
        let f = fresh(&[("cache-control", "max-age=100"), ("date", &d)], 20, 20);
        assert_eq!(f.initial_age, Duration::from_secs(20));
        // A Date in the future counts as zero.
        let d = date(50);
        let f = fresh(&[("cache-control", "max-age=100"), ("date", &d)], 0, 0);
        assert_eq!(f.initial_age, Duration::ZERO);
        assert!(f.is_fresh(at(99)));
        assert!(!f.is_fresh(at(100)));
    }

    #[test]
    fn using_a_stored_response_table() {
        let stored = |cc: &str| {
            let resp = headers(&[("cache-control", cc), ("etag", "\"e\"")]);
            storable(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &resp,
                at(0),
                at(0),
                &Overrides::default(),
            )
            .unwrap()
        };
        let req = |list: &[(&str, &str)]| request_rules(&headers(list));
        type Row<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u64, Use);
        let cases: Vec<Row> = vec![
            ("fresh", "max-age=60", vec![], 10, Use::Fresh),
            ("expired", "max-age=60", vec![], 60, Use::Revalidate),
            (
                "no-cache response",
                "no-cache, max-age=60",
                vec![],
                1,
                Use::Revalidate,
            ),
            (
                "request no-cache",
                "max-age=60",
                vec![("cache-control", "no-cache")],
                1,
                Use::Revalidate,
            ),
            (
                "request max-age=0",
                "max-age=60",
                vec![("cache-control", "max-age=0")],
                1,
                Use::Revalidate,
            ),
            (
                "Pragma: no-cache",
                "max-age=60",
                vec![("pragma", "no-cache")],
                1,
                Use::Revalidate,
            ),
            (
                "request max-age exceeded",
                "max-age=60",
                vec![("cache-control", "max-age=5")],
                10,
                Use::Revalidate,
            ),
            (
                "request max-age met",
                "max-age=60",
                vec![("cache-control", "max-age=50")],
                10,
                Use::Fresh,
            ),
            (
                "min-fresh not met",
                "max-age=60",
                vec![("cache-control", "min-fresh=55")],
                10,
                Use::Revalidate,
            ),
            (
                "within stale-while-revalidate",
                "max-age=10, stale-while-revalidate=30",
                vec![],
                20,
                Use::StaleWhileRevalidate,
            ),
            (
                "past stale-while-revalidate",
                "max-age=10, stale-while-revalidate=30",
                vec![],
                40,
                Use::Revalidate,
            ),
            (
                "must-revalidate forbids stale",
                "max-age=10, must-revalidate, stale-while-revalidate=30",
                vec![],
                20,
                Use::Revalidate,
            ),
            (
                "proxy-revalidate forbids stale",
                "max-age=10, proxy-revalidate, stale-while-revalidate=30",
                vec![],
                20,
                Use::Revalidate,
            ),
        ];
        for (name, cc, r, now, want) in cases {
            assert_eq!(usable(&stored(cc), &req(&r), at(now)), want, "case: {name}");
        }
        assert!(stale_if_error(
            &stored("max-age=10, stale-if-error=60"),
            at(30)
        ));
        assert!(!stale_if_error(
            &stored("max-age=10, stale-if-error=60"),
            at(71)
        ));
        assert!(!stale_if_error(
            &stored("max-age=10, must-revalidate, stale-if-error=60"),
            at(30)
        ));
        assert!(!stale_if_error(&stored("max-age=10"), at(11)));
    }

    #[test]
    fn vary_names_are_read_from_every_field() {
        let h = headers(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "accept-encoding"),
        ]);
        let names = vary_names(&h).unwrap();
        assert_eq!(
            names,
            vec![header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE]
        );
        assert!(vary_names(&headers(&[("vary", "*")])).is_none());
    }

    // Ages and lifetimes from headers never overflow, whatever the
    // values: a client's `min-fresh` or an upstream's `Age` as long as a
    // u64 once panicked on adding durations (an abort in release builds).
    #[test]
    fn huge_values_are_capped_and_never_overflow() {
        let d = directives(&headers(&[(
            "cache-control",
            "max-age=18446744073709551615, min-fresh=99999999999999999999999, s-maxage=x",
        )]));
        assert_eq!(d.max_age, Some(MAX_DELTA_SECONDS));
        assert_eq!(d.min_fresh, Some(MAX_DELTA_SECONDS));
        assert_eq!(d.s_maxage, Some(0));
        let resp = headers(&[
            ("cache-control", "max-age=18446744073709551615"),
            ("age", "18446744073709551615"),
            ("date", &date(0)),
        ]);
        let f = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &resp,
            at(0),
            at(1),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(MAX_DELTA_SECONDS));
        assert_eq!(f.initial_age, Duration::from_secs(MAX_DELTA_SECONDS + 1));
        let req = request_rules(&headers(&[(
            "cache-control",
            "min-fresh=18446744073709551615",
        )]));
        assert_eq!(usable(&f, &req, at(10)), Use::Revalidate);
        assert!(!stale_if_error(&f, at(10)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        // Any header values, any times: no panic, and every duration read
        // from a header stays within the cap (plus the response delay).
        #[test]
        fn any_headers_any_times_never_panic(
            cc_resp in "[ -~]{0,60}",
            cc_req in "[ -~]{0,60}",
            age in "[0-9]{0,25}|[ -~]{0,10}",
            date_s in proptest::option::of(0u64..4_000_000_000),
            expires_s in proptest::option::of(0u64..4_000_000_000),
            status in 100u16..600,
            req_t in 0u64..100,
            resp_t in 0u64..100,
            now_t in 0u64..u64::from(u32::MAX),
        ) {
            let mut resp = HeaderMap::new();
            let mut req = HeaderMap::new();
            if let Ok(v) = cc_resp.parse() { resp.insert(header::CACHE_CONTROL, v); }
            if let Ok(v) = cc_req.parse() { req.insert(header::CACHE_CONTROL, v); }
            if let Ok(v) = age.parse() { resp.insert(header::AGE, v); }
            let stamp = |s: u64| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
            if let Some(s) = date_s { resp.insert(header::DATE, stamp(s).parse().unwrap()); }
            if let Some(s) = expires_s { resp.insert(header::EXPIRES, stamp(s).parse().unwrap()); }
            let status = StatusCode::from_u16(status).unwrap();
            let rules = Overrides { ttl: Duration::from_secs(5), force_ttl: None };
            let d = directives(&resp);
            for v in [d.max_age, d.s_maxage, d.stale_while_revalidate, d.stale_if_error, d.min_fresh].into_iter().flatten() {
                proptest::prop_assert!(v <= MAX_DELTA_SECONDS);
            }
            if let Ok(f) = storable(&Method::GET, &req, status, &resp, at(req_t), at(req_t + resp_t), &rules) {
                proptest::prop_assert!(f.stale_while_revalidate.as_secs() <= MAX_DELTA_SECONDS);
                proptest::prop_assert!(f.stale_if_error.as_secs() <= MAX_DELTA_SECONDS);
                let rq = request_rules(&req);
                let _ = usable(&f, &rq, at(now_t));
                let _ = stale_if_error(&f, at(now_t));
                let _ = f.is_fresh(at(now_t));
                let _ = f.staleness(at(now_t));
            }
            let _ = vary_names(&resp);
        }
    }
}
