//! The `weir` command line: `serve`, `validate`, `echo`, and the admin
//! client commands `apply`, `get`, `delete`, `revisions`, `rollback`,
//! `cluster status` (gossip members) and `cluster store` (the config store).
//!
//! This module only parses arguments and dispatches: running a node is
//! `start`; the admin client commands call a node's admin API in
//! `client.rs`, draw their tables in `table.rs` and read and write
//! document files (`get -o yaml`, `apply -f`) in `manifest.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod client;
mod manifest;
mod table;

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
    /// 127.0.0.1:9180, no routes (every request gets a JSON 404), in store
    /// mode (config store in ./weir-data, written through the admin API)
    /// as a single node (no gossip; any cluster flag joins a gossip
    /// cluster, on UDP 7946). With --config alone: file mode. With
    /// --check: check everything, print the plan, start nothing.
    Serve(Box<crate::start::ServeArgs>),
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
    /// A document file (what `weir get KIND [ID] -o yaml` prints: YAML
    /// documents with a top-level `kind`) creates or updates just the
    /// documents it holds.
    Apply {
        /// The config file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: client::ConnArgs,
    },
    /// Show documents of a kind (routes, services, upstreams, consumers,
    /// credentials, subscriptions, plugins), or one of them.
    Get {
        /// Document kind.
        kind: String,
        /// Document id (all when absent).
        id: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = client::Output::Table)]
        output: client::Output,
        #[command(flatten)]
        conn: client::ConnArgs,
    },
    /// Delete a document.
    Delete {
        /// Document kind.
        kind: String,
        /// Document id.
        id: String,
        #[command(flatten)]
        conn: client::ConnArgs,
    },
    /// Show the config history: who changed what, when.
    Revisions {
        /// Only revisions after this one.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[command(flatten)]
        conn: client::ConnArgs,
    },
    /// Restore the config as it was at a revision (as a new revision).
    Rollback {
        /// The revision to restore.
        revision: u64,
        #[command(flatten)]
        conn: client::ConnArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print the members this node sees (id, state, generation, role in
    /// the config store, config revision served, region, zone, age,
    /// addresses), gossip counters, mesh links and health checks.
    Status {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::ConnArgs,
    },
    /// The node's view of the replicated config store: Raft members,
    /// leader, staleness.
    Store {
        /// Print the admin API's JSON (`/v1/status`'s `cluster`) instead of
        /// a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::ConnArgs,
    },
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
        Command::Serve(args) => crate::start::serve(*args),
        Command::Validate { file } => validate(&file),
        Command::Cluster {
            command: ClusterCommand::Status { json, conn },
        } => client::cluster_status(&conn, json),
        Command::Echo { listen, name } => crate::start::echo(listen, name),
        Command::Apply {
            file,
            dry_run,
            conn,
        } => client::apply(&conn, &file, dry_run),
        Command::Get {
            kind,
            id,
            output,
            conn,
        } => client::get(&conn, &kind, id.as_deref(), output),
        Command::Delete { kind, id, conn } => client::delete(&conn, &kind, &id),
        Command::Revisions { after, conn } => client::revisions(&conn, after),
        Command::Rollback { revision, conn } => client::rollback(&conn, revision),
        Command::Cluster {
            command: ClusterCommand::Store { json, conn },
        } => client::cluster_store(&conn, json),
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
            crate::start::print_problems(file, &errors);
            eprintln!("{}: {} problem(s)", file.display(), errors.0.len());
            ExitCode::from(2)
        }
    }
}
