//! What the limit plugins share: config fields, the 429 answer and the
//! `RateLimit-*` headers (IETF httpapi ratelimit-headers draft, the
//! three-header style of drafts 03–06: `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` in delta seconds).

use std::time::Duration;

use crate::metrics::{GatewayMetrics, RateLimitDecision, global};
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

use super::limit_key::KeySpec;
use super::{ConfigErrorList, Early, RequestCtx};
use weir_limits::Verdict;

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Fields every limit plugin has (each plugin's config repeats them:
/// `serde(flatten)` cannot be combined with `deny_unknown_fields`).
pub(super) struct Common<'a> {
    /// What makes requests share a limit: `client_ip`, `route`, `service`,
    /// `consumer`, `header:<name>`, or several of them. Default
    /// `[client_ip]`.
    pub key: &'a [String],
    /// Status of a rejection (400–599). Default 429.
    pub rejected_code: u16,
    /// Whether admitted responses carry the `RateLimit-*` headers.
    /// Rejections always do.
    pub headers: bool,
}

/// Default of `rejected_code`.
pub(super) fn default_rejected() -> u16 {
    429
}

/// Default of `headers`.
pub(super) fn yes() -> bool {
    true
}

/// The compiled [`Common`] fields.
pub(super) struct Compiled {
    pub key: KeySpec,
    pub rejected: StatusCode,
    pub headers: bool,
}

impl Common<'_> {
    pub fn compile(&self, errs: &mut ConfigErrorList) -> Option<Compiled> {
        let key = KeySpec::parse(self.key).map_err(|e| errs.extend(e)).ok();
        let rejected = match StatusCode::from_u16(self.rejected_code) {
            Ok(s) if (400..=599).contains(&self.rejected_code) => Some(s),
            _ => {
                errs.push((
                    "rejected_code".into(),
                    format!("{} is not a status between 400 and 599", self.rejected_code),
                ));
                None
            }
        };
        Some(Compiled {
            key: key?,
            rejected: rejected?,
            headers: self.headers,
        })
    }
}

/// Checks that a count-like field is at least 1.
pub(super) fn at_least_one(v: u64, field: &str, errs: &mut ConfigErrorList) {
    if v == 0 {
        errs.push((field.into(), "must be at least 1".into()));
    }
}

/// The quota to show on the admitted response; with several limits on a
/// route, the tightest one (least remaining) is shown.
#[derive(Clone, Copy)]
struct Shown {
    limit: u64,
    remaining: u64,
    reset_secs: u64,
}

fn secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

fn put(h: &mut HeaderMap, s: Shown) {
    h.insert(LIMIT.clone(), HeaderValue::from(s.limit));
    h.insert(REMAINING.clone(), HeaderValue::from(s.remaining));
    h.insert(RESET.clone(), HeaderValue::from(s.reset_secs));
}

/// Turns a verdict into the plugin's answer: `Ok` (remembering the headers
/// for the response phase) or the rejection.
// Same shape as `Plugin::access`, whose answer it is.
#[allow(clippy::result_large_err)]
pub(super) fn decide(v: &Verdict, c: &Compiled, ctx: &mut RequestCtx) -> Result<(), Early> {
    let shown = Shown {
        limit: v.limit,
        remaining: v.remaining,
        reset_secs: secs(v.reset_us),
    };
    if v.admitted {
        global().record_ratelimit(&ctx.route_id, RateLimitDecision::Allowed);
        if c.headers {
            match ctx.ext.get::<Shown>() {
                Some(old) if old.remaining <= shown.remaining => {}
                _ => {
                    ctx.ext.insert(shown);
                }
            }
        }
        return Ok(());
    }
    global().record_ratelimit(&ctx.route_id, RateLimitDecision::Rejected);
    Err(rejection(
        c.rejected,
        Some(shown),
        secs(v.retry_after_us).max(1),
    ))
}

/// A rejection with its headers (the quota ones when there is a quota).
fn rejection(status: StatusCode, shown: Option<Shown>, retry_after: u64) -> Early {
    let mut e = Early::error(status, "rate_limited", "too many requests");
    if let Early::Error { headers, .. } = &mut e {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        if let Some(s) = shown {
            put(headers, s);
        }
    }
    e
}

/// A rejection without a quota to show (`limit-conn`): `Retry-After: 1`.
pub(super) fn busy(status: StatusCode, ctx: &RequestCtx) -> Early {
    global().record_ratelimit(&ctx.route_id, RateLimitDecision::Rejected);
    rejection(status, None, 1)
}

/// Records an admission that shows no quota (`limit-conn`).
pub(super) fn admitted(ctx: &RequestCtx) {
    global().record_ratelimit(&ctx.route_id, RateLimitDecision::Allowed);
}

/// Adds the remembered headers to an admitted response.
pub(super) fn response_headers(h: &mut HeaderMap, ctx: &RequestCtx) {
    if let Some(s) = ctx.ext.get::<Shown>() {
        put(h, *s);
    }
}

/// How long a key's state must outlive its last use: a window limit
/// needs the previous window too.
pub(super) fn idle_for(span: Duration) -> Duration {
    span.saturating_mul(2).max(Duration::from_secs(1))
}
