//! `limit-conn`: at most `max` requests in flight per key. A request holds
//! its place until its response body has been sent or abandoned.

use std::sync::Arc;

use serde::Deserialize;

use super::ratelimit::{self, Common, Compiled};
use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, parse_config,
};
use weir_limits::conn::{Acquire, InFlight, Permit};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "limit-conn",
    priority: 1003,
    build,
};

/// Config of `limit-conn`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Requests in flight per key.
    max: u64,
    /// What makes requests share a limit: `client_ip`, `route`,
    /// `service`, `consumer`, `header:<name>`, or a list of them.
    #[serde(default)]
    key: Vec<String>,
    /// Status of a rejection (400–599). Default 429.
    #[serde(default = "ratelimit::default_rejected")]
    rejected_code: u16,
    /// Whether admitted responses carry the `RateLimit-*` headers.
    #[serde(default = "ratelimit::yes")]
    headers: bool,
}

struct LimitConn {
    /// A route-level instance, which defers to the consumer\'s own one.
    overridable: bool,
    max: u64,
    common: Compiled,
    table: Arc<InFlight>,
}

/// The place a request holds; in the context so it is freed with it.
#[derive(Clone)]
struct Held(#[allow(dead_code)] Arc<Permit>);

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    ratelimit::at_least_one(raw.max, "max", &mut errs);
    let common = Common {
        key: &raw.key,
        rejected_code: raw.rejected_code,
        headers: raw.headers,
    }
    .compile(&mut errs);
    let Some(common) = common.filter(|_| errs.is_empty()) else {
        return Err(errs);
    };
    Ok(Arc::new(LimitConn {
        overridable: !env.consumer_level(),
        max: raw.max,
        common,
        table: env.stores().in_flight(&env.limit_id(DEF.name, v)),
    }))
}

#[async_trait::async_trait]
impl Plugin for LimitConn {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        if self.overridable
            && let Some(own) = super::overrides::consumer_limit(ctx, DEF.name)
        {
            return own.access(req, ctx).await;
        }
        let key = self.common.key.key(req.headers, ctx);
        match self.table.acquire(&key, self.max) {
            Acquire::Admitted { permit, .. } => {
                ratelimit::admitted(ctx);
                ctx.ext.insert(Held(Arc::new(permit)));
                Ok(())
            }
            Acquire::Full => Err(ratelimit::busy(self.common.rejected, ctx)),
        }
    }
}
