//! `weir serve --check`: everything `serve` checks before it starts, and
//! what it would then do, without doing any of it. The flags, the
//! environment (`WEIR_*`, `OTEL_*`) and the config file have been parsed
//! and merged by `serve` exactly as for a real start; this module runs the
//! checks `serve` would run later (the full config compile, the store
//! flags, the cluster secret and addresses, the telemetry settings) and
//! prints the plan. It binds no port, opens no data dir, starts no thread
//! or runtime: deployment files can be checked on a build machine.
//!
//! Not here: parsing (clap, `config`), and the checks themselves, which
//! stay with the code that runs them (`store::StoreArgs::preflight`,
//! `compile::validate`, `cluster::read_secret`, the observability
//! settings' `resolve`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use weir_cluster::membership::MembershipError;
use weir_observability::metrics_export::MetricsExportSettings;
use weir_observability::trace::{EnvVars, TraceSettings};

use crate::config::Config;

use super::store::StoreArgs;

/// Runs the remaining checks on `cfg` (already merged with the flags and
/// checked on its own by `serve`), prints the plan on stdout and each
/// problem on stderr. Exit 0 when nothing is wrong, 2 otherwise.
pub(crate) fn run(
    cfg: &Config,
    config_path: Option<&Path>,
    file_mode: bool,
    store: &StoreArgs,
) -> ExitCode {
    let mut plan: Vec<(&'static str, String)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut config_problems = None;

    // Mode and the config's own objects.
    match (config_path, file_mode) {
        (Some(p), true) => plan.push((
            "mode",
            format!("file: {} is the config, watched and reloaded", p.display()),
        )),
        (Some(p), false) => plan.push((
            "mode",
            format!(
                "store: config from the replicated store; {} gives the settings",
                p.display()
            ),
        )),
        (None, _) => plan.push(("mode", "store: config from the replicated store".into())),
    }
    // `serve` compiles the routes of a file-mode config when the node
    // starts (and of a store-mode one before); here both now.
    if file_mode && let Err(e) = crate::compile::validate(cfg) {
        config_problems = Some(e);
    }
    if config_path.is_some() {
        plan.push((
            "config",
            format!(
                "{} routes, {} services, {} upstreams, {} consumers",
                cfg.routes.len(),
                cfg.services.len(),
                cfg.upstreams.len(),
                cfg.consumers.len()
            ),
        ));
    }

    // Listeners.
    let s = &cfg.settings;
    plan.push(("proxy", format!("listen on {} (TCP)", s.listen)));
    plan.push(("admin", format!("listen on {} (TCP)", s.admin_listen)));
    if let Some(e) = s.echo_listen {
        plan.push(("echo", format!("built-in echo upstream on {e} (TCP)")));
    }
    let mut tcp: Vec<(&str, SocketAddr)> =
        vec![("proxy", s.listen), ("admin listener", s.admin_listen)];
    tcp.extend(s.echo_listen.map(|e| ("echo listener", e)));
    clashes(&tcp, "TCP", &mut problems);
    plan.push((
        "workers",
        match s.workers {
            0 => "one per core".into(),
            n => n.to_string(),
        },
    ));

    // Store mode.
    if file_mode {
        if store.store_flags_given() {
            plan.push((
                "note",
                "store flags (--advertise, --raft-*, --admin-key) are not used in file mode: add --data-dir or --join for store mode".into(),
            ));
        }
    } else {
        match store.preflight(cfg) {
            Ok(timing) => plan.extend(store.plan(cfg, &timing)),
            Err(e) => problems.extend(e.to_string().lines().map(str::to_string)),
        }
    }

    // Gossip, the mesh and the secret.
    match &cfg.cluster {
        None => plan.push(("cluster", "single node, no gossip".into())),
        Some(c) => {
            let node_id = crate::cluster::resolve_node_id(c);
            plan.push((
                "cluster",
                format!(
                    "gossip cluster `{}` as node `{node_id}`, region {}, zone {}",
                    c.name,
                    label(&c.region),
                    label(&c.zone)
                ),
            ));
            let seeds = if c.seeds.is_empty() {
                "none (waits to be found)".to_string()
            } else {
                c.seeds.join(", ")
            };
            let advertised = c
                .advertise_addr
                .map(|ip| format!(", advertised as {ip}"))
                .unwrap_or_default();
            plan.push((
                "gossip",
                format!(
                    "listen on {} (UDP){advertised}, seeds {seeds}",
                    c.gossip_listen
                ),
            ));
            if c.gossip_listen.ip().is_unspecified() && c.advertise_addr.is_none() {
                problems.push(MembershipError::AdvertiseRequired(c.gossip_listen).to_string());
            }
            let secret = match crate::cluster::read_secret(c) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    None
                }
            };
            let source = match &c.secret_file {
                Some(p) => format!("from {}", p.display()),
                None => "from WEIR_CLUSTER_SECRET".into(),
            };
            match &secret {
                Some(bytes) => {
                    match weir_cluster::gossip::GossipKey::derive(bytes, &c.name) {
                        Ok(_) => plan.push(("secret", format!("cluster secret {source}"))),
                        Err(e) => problems.push(format!("cluster secret {source}: {e}")),
                    }
                    let mesh = c
                        .mesh_advertise
                        .map(|a| format!(", advertised as {a}"))
                        .unwrap_or_default();
                    plan.push((
                        "mesh",
                        format!("listen on {} (UDP, QUIC){mesh}", c.mesh_listen),
                    ));
                }
                None if c.gossip_listen.ip().is_loopback() => {
                    plan.push(("secret", "none: gossip in the clear on loopback".into()));
                    plan.push(("mesh", "off (it needs a cluster secret)".into()));
                }
                None if c.secret_file.is_none() => {
                    problems.push(MembershipError::SecretRequired(c.gossip_listen).to_string());
                }
                None => {}
            }
        }
    }

    // Telemetry, with the environment's OTEL_* variables.
    let node = crate::telemetry::node_info(cfg);
    let env = EnvVars::from_process();
    let o = &cfg.observability;
    match TraceSettings::resolve(&o.tracing, &node, &env) {
        Ok(Some(t)) => plan.push(("traces", format!("OTLP to {}", t.endpoint))),
        Ok(None) => plan.push(("traces", "off".into())),
        Err(e) => problems.push(format!("observability.tracing: {e}")),
    }
    if o.metrics.enabled {
        match MetricsExportSettings::resolve(&o.tracing, &o.metrics.otlp, &node, &env) {
            Ok(Some(m)) => plan.push(("metrics", format!("/metrics, and OTLP to {}", m.endpoint))),
            Ok(None) => plan.push(("metrics", "/metrics on the admin listener".into())),
            Err(e) => problems.push(format!("observability.metrics.otlp: {e}")),
        }
    } else {
        plan.push(("metrics", "off".into()));
    }

    for (topic, words) in &plan {
        println!("{topic:>10}: {words}");
    }
    let mut count = problems.len();
    if let Some(errors) = &config_problems {
        count += errors.0.len();
        if let Some(path) = config_path {
            super::print_problems(path, errors);
        }
    }
    for p in &problems {
        eprintln!("weir serve --check: {p}");
    }
    if count == 0 {
        println!("weir serve --check: ok");
        ExitCode::SUCCESS
    } else {
        eprintln!("weir serve --check: {count} problem(s)");
        ExitCode::from(2)
    }
}

/// Two listeners of one protocol on one address (port 0 never clashes).
fn clashes(addrs: &[(&str, SocketAddr)], proto: &str, problems: &mut Vec<String>) {
    for (i, (a, x)) in addrs.iter().enumerate() {
        for (b, y) in &addrs[i + 1..] {
            if x.port() != 0
                && x.port() == y.port()
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
            {
                problems.push(format!("the {a} and the {b} both want {proto} {x}"));
            }
        }
    }
}

/// A locality label as the plan shows it.
fn label(s: &str) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        format!("`{s}`")
    }
}
