//! The `weir` command line: `serve`, `validate`, `echo`.

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
    about = "weir, an API gateway: routing, load balancing, retries and passive health over a hot-reloaded YAML config",
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
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print the members this node sees (id, state, region, zone, age,
    /// addresses) and gossip counters.
    Status {
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:9180", env = "WEIR_ADMIN")]
        admin: SocketAddr,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
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
            command: ClusterCommand::Status { admin, json },
        } => cluster_status(admin, json),
        Command::Echo { listen, name } => echo(listen, name),
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
    match config::load_file(file) {
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
        Some(path) => match config::load_file(path) {
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
    if let Err(errors) = cfg.validate() {
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
    match rt.block_on(serve_async(cfg, args.config, args.ready_file, overrides)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(
    cfg: Config,
    config_path: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    overrides: crate::reload::Overrides,
) -> anyhow::Result<()> {
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    // One node id for gossip, spans and metrics alike.
    let mut cfg = cfg;
    if let Some(c) = cfg.cluster.as_mut() {
        c.node_id = crate::cluster::resolve_node_id(c);
    }
    let telemetry = Arc::new(crate::telemetry::Telemetry::start(
        &cfg.observability,
        &crate::telemetry::node_info(&cfg),
    )?);
    let state = State::with_telemetry(&cfg, telemetry.clone())
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    let mut server = Server::bind(state.clone(), config_path.clone())?;
    let bound = server.bound()?;
    let cluster = match &cfg.cluster {
        Some(c) => Some(Arc::new(
            crate::cluster::Cluster::start(c, bound.proxy, bound.admin).await?,
        )),
        None => None,
    };
    server.cluster = cluster.clone();
    let health = Arc::new(crate::health::HealthChecker::default());
    server.health = health.clone();
    let _health = AbortOnDrop(tokio::spawn(health.run(state.clone(), cluster.clone())));

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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn wait_for_signal() {
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
fn write_ready_file(
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

fn cluster_status(admin: SocketAddr, json: bool) -> ExitCode {
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::cluster::status(admin, json)) {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
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
