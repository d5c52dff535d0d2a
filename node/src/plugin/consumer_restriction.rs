//! `consumer-restriction`: allow or deny the authenticated consumer by name
//! or group. Runs after the auth plugins; a request with no consumer is
//! refused with 401.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::HeaderValue;
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, auth_failure,
    parse_config,
};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "consumer-restriction",
    priority: 2400,
    build,
};

/// Config of `consumer-restriction`: `allow`, `deny`, or both (deny wins).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Only these consumers or groups may pass.
    #[serde(default)]
    allow: Option<Who>,
    /// These consumers or groups are refused.
    #[serde(default)]
    deny: Option<Who>,
}

/// A set of consumers and groups.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Who {
    /// Consumer names.
    #[serde(default)]
    consumers: Vec<String>,
    /// Group names.
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Default)]
struct Set {
    consumers: HashSet<String>,
    groups: HashSet<String>,
}

impl Set {
    fn matches(&self, c: &crate::consumer::Consumer) -> bool {
        self.consumers.contains(&*c.name) || c.groups.iter().any(|g| self.groups.contains(&**g))
    }
}

struct ConsumerRestriction {
    allow: Option<Set>,
    deny: Option<Set>,
}

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    let mut compile = |who: Option<Who>, key: &str| -> Option<Set> {
        let who = who?;
        if who.consumers.is_empty() && who.groups.is_empty() {
            errs.push((
                key.to_string(),
                "name at least one consumer or group".to_string(),
            ));
        }
        for (i, c) in who.consumers.iter().enumerate() {
            // A typo would silently lock a client out (or let one in).
            if env.consumers().get(c).is_none() {
                errs.push((
                    format!("{key}.consumers[{i}]"),
                    format!("no consumer named `{c}`"),
                ));
            }
        }
        Some(Set {
            consumers: who.consumers.into_iter().collect(),
            groups: who.groups.into_iter().collect(),
        })
    };
    let allow = compile(raw.allow, "allow");
    let deny = compile(raw.deny, "deny");
    if allow.is_none() && deny.is_none() {
        errs.push((String::new(), "set `allow`, `deny` or both".to_string()));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Arc::new(ConsumerRestriction { allow, deny }))
}

static CHALLENGE: HeaderValue = HeaderValue::from_static("ApiKey realm=\"weir\"");

#[async_trait::async_trait]
impl Plugin for ConsumerRestriction {
    async fn access(&self, _req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let Some(c) = &ctx.consumer else {
            return Err(auth_failure(ctx, DEF.name, "no_consumer", &CHALLENGE));
        };
        let denied = self.deny.as_ref().is_some_and(|d| d.matches(c))
            || self.allow.as_ref().is_some_and(|a| !a.matches(c));
        if denied {
            tracing::info!(route = %ctx.route_id, consumer = %c.name, "consumer refused by consumer-restriction");
            return Err(Early::forbidden(
                "consumer_not_allowed",
                "this consumer may not use this route",
            ));
        }
        Ok(())
    }
}
