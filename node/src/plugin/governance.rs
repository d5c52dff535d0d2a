//! API lifecycle and subscriptions: built-in steps of a route's chain, set
//! by the route's (or its service's) `lifecycle` and `require_subscription`
//! rather than in a `plugins:` map.
//!
//! - `deprecated`: answers carry `Deprecation` (RFC 9745), `Sunset`
//!   (RFC 8594) and `Link: <…>; rel="successor-version"`.
//! - `retired`: 410 Gone with a JSON body naming the successor; runs before
//!   every other plugin, so the upstream is never called and no
//!   credential is asked for.
//! - `require_subscription`: the consumer (set by an auth plugin) needs an
//!   `approved` subscription to the route or its service; otherwise 403
//!   `subscription_required`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::{Early, Plugin, PluginDef, RequestCtx, RequestHead, ResponseHead, auth_failure};
use crate::config::{Config, LifecycleConfig, LifecycleStatus, Problems, SubscriptionState};

fn no_build(
    _: &serde_yaml_ng::Value,
    _: &super::BuildEnv,
) -> Result<Arc<dyn Plugin>, super::ConfigErrorList> {
    Err(vec![(
        String::new(),
        "set through `lifecycle`, not `plugins`".into(),
    )])
}

/// The lifecycle step: first in every chain.
pub(super) static LIFECYCLE: PluginDef = PluginDef {
    name: "lifecycle",
    priority: 100_000,
    build: no_build,
};

/// The subscription step: after the auth and consumer plugins.
pub(super) static SUBSCRIPTION: PluginDef = PluginDef {
    name: "subscription",
    priority: 2390,
    build: no_build,
};

static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
static SUNSET: HeaderName = HeaderName::from_static("sunset");

struct Lifecycle {
    retired: bool,
    deprecation: Option<HeaderValue>,
    sunset: Option<HeaderValue>,
    link: Option<HeaderValue>,
    successor: Option<String>,
}

fn parse_time(p: &mut Problems, at: String, v: &str) -> Option<SystemTime> {
    match humantime::parse_rfc3339_weak(v) {
        Ok(t) => Some(t),
        Err(e) => {
            p.push(at, format!("`{v}` is not an RFC 3339 time: {e}"));
            None
        }
    }
}

/// Compiles a lifecycle config; `None` for `published` (nothing to do).
pub(super) fn lifecycle(
    c: &LifecycleConfig,
    at: &str,
    p: &mut Problems,
) -> Option<Arc<dyn Plugin>> {
    let deprecated_at = c
        .deprecated_at
        .as_deref()
        .and_then(|v| parse_time(p, format!("{at}.deprecated_at"), v));
    let sunset = c
        .sunset
        .as_deref()
        .and_then(|v| parse_time(p, format!("{at}.sunset"), v));
    if let (Some(d), Some(s)) = (deprecated_at, sunset)
        && s < d
    {
        p.push(format!("{at}.sunset"), "must not be before `deprecated_at`");
    }
    let link = match &c.successor {
        None => None,
        Some(u) => {
            let ok = u.parse::<http::Uri>().is_ok() && !u.contains(['<', '>', '"', ' ']);
            match HeaderValue::from_str(&format!("<{u}>; rel=\"successor-version\"")) {
                Ok(v) if ok => Some(v),
                _ => {
                    p.push(
                        format!("{at}.successor"),
                        format!("`{u}` is not a valid URI"),
                    );
                    None
                }
            }
        }
    };
    match c.status {
        LifecycleStatus::Published => {
            if c.deprecated_at.is_some() || c.sunset.is_some() {
                p.push(
                    format!("{at}.status"),
                    "`deprecated_at` and `sunset` need status `deprecated` or `retired`",
                );
            }
            return None;
        }
        LifecycleStatus::Deprecated if c.deprecated_at.is_none() => {
            p.push(
                format!("{at}.deprecated_at"),
                "a deprecated API needs the date it was deprecated (RFC 9745)",
            );
        }
        _ => {}
    }
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    Some(Arc::new(Lifecycle {
        retired: c.status == LifecycleStatus::Retired,
        deprecation: deprecated_at
            .and_then(|t| HeaderValue::from_str(&format!("@{}", secs(t))).ok()),
        sunset: sunset.and_then(|t| HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()),
        link,
        successor: c.successor.clone(),
    }))
}

impl Lifecycle {
    fn add_headers(&self, h: &mut http::HeaderMap) {
        if let Some(v) = &self.deprecation {
            h.insert(DEPRECATION.clone(), v.clone());
        }
        if let Some(v) = &self.sunset {
            h.insert(SUNSET.clone(), v.clone());
        }
        if let Some(v) = &self.link {
            h.append(header::LINK, v.clone());
        }
    }
}

#[async_trait::async_trait]
impl Plugin for Lifecycle {
    async fn access(&self, _req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        if !self.retired {
            return Ok(());
        }
        let body = serde_json::json!({
            "error": {
                "status": 410,
                "code": "api_retired",
                "message": match &self.successor {
                    Some(s) => format!("this API has been retired; use {s}"),
                    None => "this API has been retired".to_string(),
                },
                "request_id": ctx.request_id.to_str().unwrap_or_default(),
                "successor": self.successor,
            }
        });
        let mut r = Response::new(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()));
        *r.status_mut() = StatusCode::GONE;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.add_headers(h);
        Err(Early::Response(r))
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, _ctx: &mut RequestCtx) {
        if !self.retired {
            self.add_headers(resp.headers);
        }
    }
}

struct Subscription {
    /// Consumers with an approved subscription to the route or its service.
    approved: HashSet<String>,
}

static CHALLENGE: HeaderValue = HeaderValue::from_static("ApiKey realm=\"weir\"");

/// The subscription step for route `route_id` (of `service_id`).
pub(super) fn subscription(
    config: &Config,
    route_id: &str,
    service_id: Option<&str>,
) -> Arc<dyn Plugin> {
    let approved = config
        .subscriptions
        .iter()
        .filter(|s| s.state == SubscriptionState::Approved)
        .filter(|s| {
            s.route.as_deref() == Some(route_id)
                || (service_id.is_some() && s.service.as_deref() == service_id)
        })
        .map(|s| s.consumer.clone())
        .collect();
    Arc::new(Subscription { approved })
}

#[async_trait::async_trait]
impl Plugin for Subscription {
    async fn access(&self, _req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let Some(c) = &ctx.consumer else {
            return Err(auth_failure(
                ctx,
                SUBSCRIPTION.name,
                "no_consumer",
                &CHALLENGE,
            ));
        };
        if self.approved.contains(&*c.name) {
            return Ok(());
        }
        tracing::info!(route = %ctx.route_id, consumer = %c.name, "no approved subscription");
        Err(Early::forbidden(
            "subscription_required",
            "an approved subscription to this API is required",
        ))
    }
}

/// Checks the `subscriptions:` list, for [`crate::compile::validate`].
pub(crate) fn validate_subscriptions(config: &Config, p: &mut Problems) {
    let consumers: HashSet<&str> = config.consumers.iter().map(|c| c.name.as_str()).collect();
    let routes: HashSet<&str> = config.routes.iter().map(|r| r.id.as_str()).collect();
    let services: HashSet<&str> = config.services.iter().map(|s| s.id.as_str()).collect();
    let mut seen = HashSet::new();
    for (i, s) in config.subscriptions.iter().enumerate() {
        let at = format!("subscriptions[{i}]");
        if !consumers.contains(s.consumer.as_str()) {
            p.push(
                format!("{at}.consumer"),
                format!("no consumer named `{}`", s.consumer),
            );
        }
        match (&s.route, &s.service) {
            (Some(r), None) if !routes.contains(r.as_str()) => {
                p.push(format!("{at}.route"), format!("no route with id `{r}`"))
            }
            (None, Some(v)) if !services.contains(v.as_str()) => {
                p.push(format!("{at}.service"), format!("no service with id `{v}`"))
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => p.push(at.clone(), "set exactly one of `route`, `service`"),
        }
        // Rejected and revoked ones are history: the consumer may ask
        // again, but holds at most one live subscription per target.
        let live = matches!(
            s.state,
            SubscriptionState::Requested | SubscriptionState::Approved
        );
        if live && !seen.insert((&s.consumer, &s.route, &s.service)) {
            p.push(
                at,
                format!(
                    "consumer `{}` already has a subscription to this target",
                    s.consumer
                ),
            );
        }
    }
}
