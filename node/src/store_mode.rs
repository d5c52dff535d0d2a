//! `weir serve` in cluster mode: the route snapshot follows the
//! Raft-replicated config store, and the admin listener serves the config
//! API and the Raft RPC endpoints.
//!
//! Which mode runs (ADR 0015): with `--config FILE` and neither
//! `--data-dir` nor `--join`, the file is the config (file mode, hot
//! reload, read-only admin). Otherwise the store is: the file, if given,
//! supplies the settings and — only while the store is empty — seeds it
//! as one atomic batch.
//!
//! Gossip membership and active health checks (a `cluster` config section
//! or the gossip flags) and telemetry run here as in file mode.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use weir_cluster::raft::{RaftKv, RaftSettings};
use weir_storage::{Batch, Op};

use crate::admin::{AdminCtx, ApiKey};
use crate::cli::{AbortOnDrop, start_cluster, start_telemetry, wait_for_signal, write_ready_file};
use crate::config::Config;
use crate::server::Server;
use crate::snapshot::State;

/// Flags of `weir serve` for the replicated store.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Directory of the replicated config store (default `./weir-data`).
    /// Without `--config` the node always uses the store; with `--config`
    /// only when this or `--join` is given.
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Join the config cluster through a member's admin address
    /// (`host:port`). Joining through gossip arrives with the membership
    /// work; until then this flag is how a node joins.
    #[arg(long, env = "WEIR_JOIN")]
    join: Option<String>,
    /// `host:port` where peers reach this node's admin listener (default:
    /// the bound admin address).
    #[arg(long)]
    advertise: Option<String>,
    /// Raft node id (default: random, kept in `<data-dir>/node-id`).
    #[arg(long)]
    raft_node_id: Option<u64>,
    /// Voters the leader keeps (fewer while fewer nodes exist).
    #[arg(long, default_value_t = 3)]
    raft_voters: usize,
    /// A voter silent this long is replaced by a live learner.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    raft_voter_timeout: Duration,
    /// Without contact with the leader for this long, `/v1/status` says
    /// `config_stale: true`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
    /// Admin API key `NAME:ROLE:SECRET`, role `admin` or `viewer`
    /// (repeatable; `WEIR_ADMIN_KEYS` takes a comma-separated list). The
    /// admin listener refuses a non-loopback address without one.
    #[arg(
        long = "admin-key",
        env = "WEIR_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    admin_keys: Vec<ApiKey>,
}

impl StoreArgs {
    /// True when the flags ask for the store although a file is given.
    pub fn enabled_with_file(&self) -> bool {
        self.data_dir.is_some() || self.join.is_some()
    }
}

/// Runs a node whose config comes from the replicated store.
pub async fn serve(
    file_cfg: Config,
    config_path: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    args: StoreArgs,
) -> anyhow::Result<()> {
    let admin_addr = file_cfg.settings.admin_listen;
    if !admin_addr.ip().is_loopback() && args.admin_keys.is_empty() {
        anyhow::bail!(
            "refusing to serve the admin API on {admin_addr} without an admin key: pass --admin-key NAME:admin:SECRET (or WEIR_ADMIN_KEYS), or listen on loopback"
        );
    }
    if args.raft_voters == 0 {
        anyhow::bail!("--raft-voters must be at least 1");
    }
    let mut file_cfg = file_cfg;
    let telemetry = start_telemetry(&mut file_cfg)?;
    // Start from the settings alone; routes come from the store.
    let base = Arc::new(file_cfg.clone());
    let (empty, _) = crate::docs::config_from_docs(&base, &Default::default());
    let state = State::with_telemetry(&empty, telemetry.clone())
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    let mut server = Server::bind(state.clone(), config_path.clone())?;
    let bound = server.bound()?;
    let (cluster, _health) = start_cluster(&file_cfg, &mut server, bound, &state).await?;

    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("weir-data"));
    let mut settings = RaftSettings::new(
        data_dir.clone(),
        args.advertise
            .clone()
            .unwrap_or_else(|| bound.admin.to_string()),
    );
    settings.node_id = args.raft_node_id;
    settings.join = args.join.clone();
    settings.voters = args.raft_voters;
    settings.voter_down_timeout = args.raft_voter_timeout;
    settings.stale_after = args.stale_after;
    settings.key = args
        .admin_keys
        .iter()
        .find(|k| k.role == crate::admin::Role::Admin)
        .map(|k| k.secret.clone());
    let kv = RaftKv::start(settings, crate::docs::validator())
        .await
        .map_err(|e| anyhow::anyhow!("config store in {}: {e}", data_dir.display()))?;

    let ctx = Arc::new(AdminCtx {
        state: state.clone(),
        store: Some(kv.clone()),
        keys: args.admin_keys.clone(),
        applied_revision: Default::default(),
        cluster: cluster.clone(),
        health: server.health.clone(),
    });
    server.set_admin_router(crate::admin::router(ctx.clone()));

    let (tx, rx) = watch::channel(false);
    let run = tokio::spawn(server.run(rx));

    if let Some(path) = &config_path
        && args.join.is_none()
    {
        seed(&kv, &file_cfg, path).await?;
    }
    // The first snapshot from whatever the store holds now.
    let (docs, revision) = kv.view().docs_at();
    let (cfg, problems) = crate::docs::config_from_docs(&base, &docs);
    if !problems.is_empty() {
        anyhow::bail!("the stored config does not parse: {problems:?}");
    }
    state
        .apply(&cfg)
        .map_err(|e| anyhow::anyhow!("the stored config does not compile:\n{e}"))?;
    ctx.applied_revision.store(revision, Ordering::Relaxed);
    let _follow = AbortOnDrop(tokio::spawn(crate::admin::follow_store(ctx.clone(), base)));

    let _echo = match file_cfg.settings.echo_listen {
        Some(addr) => {
            let l = crate::server::bind(addr).map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (settings.echo_listen): {e}")
            })?;
            Some(AbortOnDrop(tokio::spawn(crate::echo::serve(
                l,
                Arc::from("echo"),
            ))))
        }
        None => None,
    };

    tracing::info!(proxy = %bound.proxy, admin = %bound.admin, node_id = kv.id(), revision, "weir is serving (cluster mode)");
    if let Some(path) = &ready_file {
        write_ready_file(path, bound.proxy, bound.admin, cluster.as_deref())?;
    }
    wait_for_signal().await;
    // Peers stop routing to us first, then we drain.
    if let Some(c) = &cluster {
        c.leave().await;
    }
    let _ = tx.send(true);
    let _ = run.await;
    kv.shutdown().await;
    // Lines and spans of the last requests, then the exporters' threads.
    let drain = file_cfg.settings.drain_timeout;
    tokio::task::spawn_blocking(move || telemetry.shutdown(drain))
        .await
        .ok();
    tracing::info!("stopped");
    Ok(())
}

/// Seeds an empty store from the file, as one batch.
async fn seed(kv: &RaftKv, cfg: &Config, path: &std::path::Path) -> anyhow::Result<()> {
    if kv.view().revision() == 0 {
        // Wait for this node to lead its fresh single-voter cluster (or
        // learn that a cluster it belongs to already holds config).
        if let Err(e) = kv.read_barrier(Duration::from_secs(10)).await {
            tracing::warn!(error = %e, path = %path.display(), "no leader; the file does not seed the store");
            return Ok(());
        }
    }
    if kv.view().revision() != 0 {
        tracing::info!(path = %path.display(), "the store already holds config; the file's routes, services and upstreams are not re-applied (use `weir apply`)");
        return Ok(());
    }
    let ops: Vec<Op> = crate::docs::docs_of_config(cfg)?
        .into_iter()
        .map(|(kind, id, value)| Op::Put {
            kind,
            id,
            value,
            expect: Some(0),
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    let w = kv
        .write(Batch {
            ops,
            author: "file".into(),
            message: format!("seed from {}", path.display()),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })
        .await?;
    tracing::info!(outcome = ?w.outcome, "store seeded from the config file");
    Ok(())
}
