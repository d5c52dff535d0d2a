//! Starting a node: `weir serve` (config file, flags, runtime) in one of
//! its two modes, and `weir echo`. What both modes share lives here:
//! telemetry, gossip membership and health checks, the ready file,
//! signals.
//!
//! - `file.rs`: file mode, the config file is the config and is hot
//!   reloaded;
//! - `store.rs`: store mode, the config follows the Raft-replicated store
//!   (ADR 0015 says which mode runs);
//! - `follow.rs`: the store follower, rebuilding the route snapshot when
//!   the store's revision moves;
//! - `check.rs`: `weir serve --check`, the checks of a start and its plan,
//!   without starting.
//!
//! Argument parsing is `cli`; what runs once started (server, admin API,
//! reload) lives in its own modules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors};
use crate::server::Server;
use crate::snapshot::State;

mod check;
mod file;
mod follow;
pub mod store;

/// Flags of `weir serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// YAML config file; watched and reloaded on change.
    #[arg(short = 'c', long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Proxy listen address (overrides `settings.listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listen address (overrides `settings.admin_listen`).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Worker threads (overrides `settings.workers`; 0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// After binding, write `{"proxy":ADDR,"admin":ADDR,"pid":N}` to this
    /// file (for scripts and tests that bind port 0); in a cluster also
    /// `"gossip":ADDR` and `"node_id":ID`.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Check the flags, the environment and the config file as a start
    /// would, print what the node would do (listeners, mode, cluster,
    /// store, telemetry; never a secret), and exit: 0 when everything is
    /// valid, 2 when not. Binds no port, opens no data dir, starts nothing.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,
    #[command(flatten)]
    store: store::StoreArgs,
}

/// Prints config problems on stderr, each prefixed with `source`.
/// Problems found after parsing carry no position yet; they get the
/// position of their field in the file, when `source` is one.
pub(crate) fn print_problems(source: &Path, errors: &ConfigErrors) {
    let mut errors = errors.clone();
    if let Ok(src) = std::fs::read_to_string(source) {
        crate::config::locate_problems(&src, &mut errors);
    }
    for p in &errors.0 {
        match p.location {
            Some(_) => eprintln!("{}:{p}", source.display()),
            None => eprintln!("{}: {p}", source.display()),
        }
    }
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    // One worker means one thread doing everything: a current-thread
    // runtime, with no cross-thread wake-ups at all.
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

/// `weir serve`: loads and checks the config, applies the flags, and runs
/// the node in file mode or store mode.
pub fn serve(args: ServeArgs) -> ExitCode {
    let store = args.store.clone();
    let file_mode = args.config.is_some() && !store.enabled_with_file();
    let mut cfg: Config = match &args.config {
        Some(path) => {
            // In file mode the node's first compile checks the routes,
            // consumers and plugins (once: the snapshot it builds is the
            // one served); here only what the file says on its own. In
            // store mode the file's objects only seed the store, so they
            // are compiled here.
            let checked = crate::config::parse_file(path).and_then(|c| {
                if file_mode {
                    c.validate_local()
                } else {
                    crate::compile::validate(&c)
                }
                .map(|()| c)
            });
            match checked {
                Ok(c) => c,
                Err(errors) => {
                    print_problems(path, &errors);
                    return ExitCode::from(2);
                }
            }
        }
        None => Config::default(),
    };
    let (listen, admin_listen, workers) = (args.listen, args.admin_listen, args.workers);
    let cluster_args = args.cluster.clone();
    let overrides: crate::reload::Overrides = std::sync::Arc::new(move |cfg: &mut Config| {
        cluster_args.apply(&mut cfg.cluster);
        if let Some(l) = listen {
            cfg.settings.listen = l;
        }
        if let Some(l) = admin_listen {
            cfg.settings.admin_listen = l;
        }
        if let Some(w) = workers {
            cfg.settings.workers = w;
        }
    });
    overrides(&mut cfg);
    // Flags are checked like the file, so a bad `--region` is named.
    if let Err(errors) = cfg.validate_local() {
        print_problems(Path::new("command line"), &errors);
        return ExitCode::from(2);
    }
    if args.check {
        return check::run(&cfg, args.config.as_deref(), file_mode, &store);
    }
    // Cluster settings are read at start only: a reload keeps them, so
    // locality never disagrees with the region this node gossips.
    let pinned_cluster = cfg.cluster.clone();
    let base = overrides;
    let overrides: crate::reload::Overrides = Arc::new(move |cfg: &mut Config| {
        base(cfg);
        cfg.cluster.clone_from(&pinned_cluster);
    });
    let rt = match runtime(cfg.settings.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config_path = args.config.clone();
    let run = async {
        if file_mode {
            file::serve(cfg, args.config, args.ready_file, overrides).await
        } else {
            store::serve(cfg, args.config, args.ready_file, store).await
        }
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match (e.downcast_ref::<ConfigErrors>(), &config_path) {
            (Some(errors), Some(path)) => {
                print_problems(path, errors);
                ExitCode::from(2)
            }
            _ => {
                eprintln!("weir: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `weir echo`: runs the built-in echo upstream until a signal.
pub fn echo(listen: SocketAddr, name: String) -> ExitCode {
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let l = match crate::server::bind(listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("weir: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %listen, "echo upstream listening");
        tokio::select! {
            _ = crate::echo::serve(l, Arc::from(name.as_str())) => {}
            _ = wait_for_signal() => {}
        }
        ExitCode::SUCCESS
    })
}

/// Resolves the node id (one for gossip, spans and metrics alike) and
/// starts the exporters; both serve modes begin here.
pub(crate) fn start_telemetry(
    cfg: &mut Config,
) -> anyhow::Result<Arc<crate::telemetry::Telemetry>> {
    if let Some(c) = cfg.cluster.as_mut() {
        c.node_id = crate::cluster::resolve_node_id(c);
    }
    Ok(Arc::new(crate::telemetry::Telemetry::start(
        &cfg.observability,
        &crate::telemetry::node_info(cfg),
    )?))
}

/// Joins gossip membership when the config has a `cluster` section and
/// starts active health checks; both serve modes run them.
pub(crate) async fn start_cluster(
    cfg: &Config,
    server: &mut Server,
    bound: crate::server::Bound,
    state: &Arc<State>,
) -> anyhow::Result<(crate::cluster::SharedCluster, AbortOnDrop)> {
    let cluster = match &cfg.cluster {
        Some(c) => Some(Arc::new(
            crate::cluster::Cluster::start(c, bound.proxy, bound.admin).await?,
        )),
        None => None,
    };
    if let Some(c) = &cluster {
        state
            .stores()
            .cluster_limits()
            .attach(c.membership_handle(), c.mesh().mesh().cloned());
    }
    server.cluster = cluster.clone();
    let health = Arc::new(crate::health::HealthChecker::default());
    server.health = health.clone();
    let task = AbortOnDrop(tokio::spawn(health.run(state.clone(), cluster.clone())));
    Ok((cluster, task))
}

/// A task that is aborted when this handle is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we still stop on Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Writes the ready file atomically (temp file, then rename), so a reader
/// never sees half of it.
pub(crate) fn write_ready_file(
    path: &Path,
    proxy: SocketAddr,
    admin: SocketAddr,
    cluster: Option<&crate::cluster::Cluster>,
) -> anyhow::Result<()> {
    let mut doc = serde_json::json!({"proxy": proxy.to_string(), "admin": admin.to_string(), "pid": std::process::id()});
    if let Some(c) = cluster {
        doc["gossip"] = serde_json::json!(c.membership().gossip_addr().to_string());
        doc["node_id"] = serde_json::json!(c.membership().node_id());
        if let Some(m) = c.mesh().mesh() {
            doc["mesh"] = serde_json::json!(m.local_addr().to_string());
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
