//! The `weir` command line: `serve`, `validate`, `echo`, and the admin
//! client commands `apply`, `get`, `delete`, `revisions`, `rollback`,
//! `cluster status` (gossip members) and `cluster store` (the config store).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::config::{self, Config, ConfigErrors};
use crate::server::Server;
use crate::snapshot::State;

/// weir: a distributed API gateway.
#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "weir, an API gateway: routing, load balancing, retries and passive health, configured by a hot-reloaded YAML file or a Raft-replicated store with an admin API",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway node. With no flags: proxy on 0.0.0.0:9080, admin on
    /// 127.0.0.1:9180, no routes (every request gets a JSON 404), no
    /// cluster (any cluster flag joins one; gossip on UDP 7946).
    Serve(Box<ServeArgs>),
    /// Check a config file and print every problem with its location.
    /// Exits 0 when valid, 2 when not.
    Validate {
        /// The config file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Inspect the cluster through a node's admin API.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Run the built-in echo upstream, which answers every request with a
    /// JSON description of it.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9081")]
        listen: SocketAddr,
        /// Name reported in each answer (`served_by`).
        #[arg(long, default_value = "echo")]
        name: String,
    },
    /// Make the cluster's routes, services and upstreams match a config
    /// file (the `--config` format): prints the plan, then applies it as
    /// one atomic change. Running it twice changes nothing the second time.
    Apply {
        /// The config file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: crate::client::ConnArgs,
    },
    /// Show documents of a kind (routes, services, upstreams, consumers,
    /// credentials, subscriptions, plugins), or one of them.
    Get {
        /// Document kind.
        kind: String,
        /// Document id (all when absent).
        id: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = crate::client::Output::Table)]
        output: crate::client::Output,
        #[command(flatten)]
        conn: crate::client::ConnArgs,
    },
    /// Delete a document.
    Delete {
        /// Document kind.
        kind: String,
        /// Document id.
        id: String,
        #[command(flatten)]
        conn: crate::client::ConnArgs,
    },
    /// Show the config history: who changed what, when.
    Revisions {
        /// Only revisions after this one.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[command(flatten)]
        conn: crate::client::ConnArgs,
    },
    /// Restore the config as it was at a revision (as a new revision).
    Rollback {
        /// The revision to restore.
        revision: u64,
        #[command(flatten)]
        conn: crate::client::ConnArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print the members this node sees (id, state, region, zone, age,
    /// addresses) and gossip counters.
    Status {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: crate::client::ConnArgs,
    },
    /// The node's view of the replicated config store: Raft members,
    /// leader, staleness.
    Store {
        #[command(flatten)]
        conn: crate::client::ConnArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
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
    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,
    #[command(flatten)]
    store: crate::store_mode::StoreArgs,
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormatArg::Text => weir_observability::LogFormat::Text,
        LogFormatArg::Json => weir_observability::LogFormat::Json,
    };
    weir_observability::init(format, "info");
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Validate { file } => validate(&file),
        Command::Cluster {
            command: ClusterCommand::Status { json, conn },
        } => crate::client::members_status(&conn, json),
        Command::Echo { listen, name } => echo(listen, name),
        Command::Apply {
            file,
            dry_run,
            conn,
        } => crate::client::apply(&conn, &file, dry_run),
        Command::Get {
            kind,
            id,
            output,
            conn,
        } => crate::client::get(&conn, &kind, id.as_deref(), output),
        Command::Delete { kind, id, conn } => crate::client::delete(&conn, &kind, &id),
        Command::Revisions { after, conn } => crate::client::revisions(&conn, after),
        Command::Rollback { revision, conn } => crate::client::rollback(&conn, revision),
        Command::Cluster {
            command: ClusterCommand::Store { conn },
        } => crate::client::cluster_status(&conn),
    }
}

fn print_problems(source: &Path, errors: &ConfigErrors) {
    for p in &errors.0 {
        match p.location {
            Some((l, c)) => eprintln!("{}:{l}:{c}: {}: {}", source.display(), p.path, p.reason),
            None => eprintln!("{}: {}: {}", source.display(), p.path, p.reason),
        }
    }
}

fn validate(file: &Path) -> ExitCode {
    match crate::compile::load_file(file) {
        Ok(c) => {
            println!(
                "{}: ok ({} routes, {} services, {} upstreams)",
                file.display(),
                c.routes.len(),
                c.services.len(),
                c.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_problems(file, &errors);
            eprintln!("{}: {} problem(s)", file.display(), errors.0.len());
            ExitCode::from(2)
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

fn serve(args: ServeArgs) -> ExitCode {
    let mut cfg: Config = match &args.config {
        Some(path) => match crate::compile::load_file(path) {
            Ok(c) => c,
            Err(errors) => {
                print_problems(path, &errors);
                return ExitCode::from(2);
            }
        },
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
    if let Err(errors) = crate::compile::validate(&cfg) {
        print_problems(Path::new("command line"), &errors);
        return ExitCode::from(2);
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
    let store = args.store.clone();
    let file_mode = args.config.is_some() && !store.enabled_with_file();
    let run = async {
        if file_mode {
            serve_async(cfg, args.config, args.ready_file, overrides).await
        } else {
            crate::store_mode::serve(cfg, args.config, args.ready_file, store).await
        }
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) async fn serve_async(
    cfg: Config,
    config_path: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    overrides: crate::reload::Overrides,
) -> anyhow::Result<()> {
    crate::compile::validate(&cfg)
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    let mut cfg = cfg;
    let telemetry = start_telemetry(&mut cfg)?;
    let state = State::with_telemetry(&cfg, telemetry.clone())
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    let mut server = Server::bind(state.clone(), config_path.clone())?;
    let bound = server.bound()?;
    let (cluster, _health) = start_cluster(&cfg, &mut server, bound, &state).await?;

    let _echo = match cfg.settings.echo_listen {
        Some(addr) => {
            let l = crate::server::bind(addr).map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (settings.echo_listen): {e}")
            })?;
            tracing::info!(addr = %l.local_addr()?, "built-in echo upstream listening");
            Some(AbortOnDrop(tokio::spawn(crate::echo::serve(
                l,
                Arc::from("echo"),
            ))))
        }
        None => None,
    };

    let _watch = match &config_path {
        Some(p) => Some(crate::reload::watch(state.clone(), p.clone(), overrides)?),
        None => None,
    };

    tracing::info!(proxy = %bound.proxy, admin = %bound.admin, routes = state.load().router.len(), "weir is serving");
    if let Some(path) = &ready_file {
        write_ready_file(path, bound.proxy, bound.admin, cluster.as_deref())?;
    }

    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        // Peers stop routing to us first, then we drain.
        if let Some(c) = &cluster {
            c.leave().await;
        }
        let _ = tx.send(true);
    });
    server.run(rx).await;
    // Lines and spans of the last requests, then the exporters' threads.
    let drain = cfg.settings.drain_timeout;
    tokio::task::spawn_blocking(move || telemetry.shutdown(drain))
        .await
        .ok();
    tracing::info!("stopped");
    Ok(())
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
    server.cluster = cluster.clone();
    let health = Arc::new(crate::health::HealthChecker::default());
    server.health = health.clone();
    let task = AbortOnDrop(tokio::spawn(health.run(state.clone(), cluster.clone())));
    Ok((cluster, task))
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn echo(listen: SocketAddr, name: String) -> ExitCode {
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
