//! `weir serve` in store mode: the route snapshot follows the
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
use weir_cluster::membership::{
    KEY_RAFT_ADDR, KEY_RAFT_BOOT, KEY_RAFT_EXPECT, KEY_RAFT_ID, KEY_RAFT_STATE, Member, MemberState,
};
use weir_cluster::raft::{Peer, RaftKv, RaftSettings, RaftTiming, TimingProfile};
use weir_storage::{Batch, Op};

use super::{AbortOnDrop, start_cluster, start_telemetry, wait_for_signal, write_ready_file};
use crate::admin::{AdminCtx, ApiKey};
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
    /// (`host:port`). Not needed with gossip seeds: the leader adds nodes
    /// it finds through gossip as learners.
    #[arg(long, env = "WEIR_JOIN")]
    join: Option<String>,
    /// `host:port` where peers reach this node's admin listener (default:
    /// the bound admin address).
    #[arg(long)]
    advertise: Option<String>,
    /// Raft node id (default: random, kept in `<data-dir>/node-id`).
    #[arg(long)]
    raft_node_id: Option<u64>,
    /// Voters the leader keeps (fewer while fewer nodes exist), one per
    /// gossip region before a second in any region.
    #[arg(long, default_value_t = 3)]
    raft_voters: usize,
    /// A voter that has not answered the leader this long is replaced by a
    /// live, caught-up learner.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    raft_voter_timeout: Duration,
    /// A learner that has not answered the leader this long, and that
    /// gossip does not list as alive, is removed from the Raft membership
    /// (voters never are; a removed node that comes back is added again).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    raft_remove_dead_learner_after: Duration,
    /// Form a new cluster when every node has the same gossip seeds: a node
    /// with an empty store waits until gossip shows this many nodes with
    /// empty stores and the same setting, then exactly one of them (the
    /// lowest Raft id, by vote) initialises the cluster. If a node found
    /// through gossip already belongs to a cluster, this one joins it
    /// instead. Needs gossip; not with `--join`.
    #[arg(long, env = "WEIR_RAFT_BOOTSTRAP_EXPECT")]
    raft_bootstrap_expect: Option<usize>,
    /// Raft timing profile: `lan` (voters on one network: heartbeat 100ms,
    /// election timeout 500-750ms, a lost leader is replaced in under 2 s)
    /// or `wan` (voters in different regions: heartbeat 500ms, election
    /// timeout 2-3s, writes wait up to 10s for a leader). The
    /// `--raft-heartbeat`, `--raft-election-timeout-*` and
    /// `--raft-write-wait` flags override single values.
    #[arg(long, env = "WEIR_RAFT_TIMING", default_value = "lan")]
    raft_timing: TimingProfile,
    /// Raft heartbeat interval (default: from `--raft-timing`).
    #[arg(long, value_parser = humantime::parse_duration)]
    raft_heartbeat: Option<Duration>,
    /// Lower bound of the Raft election timeout (default: from
    /// `--raft-timing`); at least 3 heartbeats.
    #[arg(long, value_parser = humantime::parse_duration)]
    raft_election_timeout_min: Option<Duration>,
    /// Upper bound of the Raft election timeout, also the leader lease
    /// (default: from `--raft-timing`); at least the lower bound plus one
    /// heartbeat.
    #[arg(long, value_parser = humantime::parse_duration)]
    raft_election_timeout_max: Option<Duration>,
    /// How long an admin write waits for a leader before it is answered
    /// `503` with `Retry-After` (default: from `--raft-timing`); at least
    /// the election timeout's upper bound.
    #[arg(long, value_parser = humantime::parse_duration)]
    raft_write_wait: Option<Duration>,
    /// Build a Raft snapshot (all documents, the history a rollback can
    /// reach) and purge the log after this many entries. Fewer means
    /// shorter logs and more snapshot builds.
    #[arg(long, default_value_t = 1000)]
    raft_snapshot_every: u64,
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

    /// What `serve` checks before it touches anything: the admin listener
    /// has a key unless on loopback, the Raft flags are in range and agree
    /// with each other and with `cfg`'s gossip. Returns the Raft timing.
    /// `weir serve --check` runs exactly this.
    pub(crate) fn preflight(&self, file_cfg: &Config) -> anyhow::Result<RaftTiming> {
        let admin_addr = file_cfg.settings.admin_listen;
        if !admin_addr.ip().is_loopback() && self.admin_keys.is_empty() {
            anyhow::bail!(
                "refusing to serve the admin API on {admin_addr} without an admin key: pass --admin-key NAME:admin:SECRET (or WEIR_ADMIN_KEYS), or listen on loopback"
            );
        }
        if self.raft_voters == 0 {
            anyhow::bail!("--raft-voters must be at least 1");
        }
        if let Some(n) = self.raft_bootstrap_expect {
            if n == 0 {
                anyhow::bail!("--raft-bootstrap-expect must be at least 1");
            }
            if self.join.is_some() {
                anyhow::bail!(
                    "--raft-bootstrap-expect and --join exclude each other: a node either joins an existing cluster or helps form a new one"
                );
            }
            if file_cfg.cluster.is_none() {
                anyhow::bail!(
                    "--raft-bootstrap-expect needs gossip to find the other nodes: add --seeds (or a `cluster` section)"
                );
            }
        }
        if self.raft_remove_dead_learner_after < Duration::from_secs(1) {
            anyhow::bail!("--raft-remove-dead-learner-after must be at least 1s");
        }
        if self.raft_snapshot_every < 10 {
            anyhow::bail!(
                "--raft-snapshot-every must be at least 10 (got {})",
                self.raft_snapshot_every
            );
        }
        self.raft_timing()
    }

    /// What the store side of `serve` would do with `cfg` and these flags,
    /// as `(topic, words)` lines for `weir serve --check`. Counts admin
    /// keys by role; never shows a secret.
    pub(crate) fn plan(&self, cfg: &Config, timing: &RaftTiming) -> Vec<(&'static str, String)> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("weir-data"));
        let gossip = cfg.cluster.as_ref();
        let has_seeds = gossip.is_some_and(|c| !c.seeds.is_empty());
        let formation = match (&self.join, self.raft_bootstrap_expect) {
            (Some(j), _) => format!("join the config cluster through {j}"),
            (None, Some(n)) => format!(
                "with an empty store, wait for {n} nodes with empty stores in gossip, then form a new config cluster (bootstrap-expect {n})"
            ),
            (None, None) if has_seeds => {
                "with an empty store, wait to be added by the leader found through gossip".into()
            }
            (None, None) => {
                "with an empty store, form a new single-node config cluster, seeded with the config file's routes, services and upstreams if one is given".into()
            }
        };
        let admin = cfg.settings.admin_listen;
        let advertise = match (&self.advertise, gossip.and_then(|c| c.advertise_addr)) {
            (Some(a), _) => a.clone(),
            (None, Some(ip)) if admin.ip().is_unspecified() => {
                std::net::SocketAddr::new(ip, admin.port()).to_string()
            }
            (None, _) => format!("{admin} (the bound admin address)"),
        };
        let admins = self
            .admin_keys
            .iter()
            .filter(|k| k.role == crate::admin::Role::Admin)
            .count();
        vec![
            (
                "data dir",
                format!("{} (opened at start, not now)", data_dir.display()),
            ),
            ("raft", formation),
            (
                "raft",
                format!(
                    "id {}, advertised as {advertise}",
                    self.raft_node_id.map_or_else(
                        || format!("kept in {}", data_dir.join("node-id").display()),
                        |id| id.to_string()
                    )
                ),
            ),
            (
                "raft",
                format!(
                    "{} voters, timing {} (heartbeat {}, election timeout {}-{}, write wait {}), snapshot every {} entries",
                    self.raft_voters,
                    self.raft_timing,
                    humantime::format_duration(timing.heartbeat),
                    humantime::format_duration(timing.election_timeout_min),
                    humantime::format_duration(timing.election_timeout_max),
                    humantime::format_duration(timing.write_wait),
                    self.raft_snapshot_every
                ),
            ),
            (
                "admin keys",
                format!(
                    "{} ({admins} admin, {} viewer)",
                    self.admin_keys.len(),
                    self.admin_keys.len() - admins
                ),
            ),
        ]
    }

    /// True when a flag that only store mode reads was given (for the
    /// file-mode note of `weir serve --check`).
    pub(crate) fn store_flags_given(&self) -> bool {
        self.advertise.is_some()
            || self.raft_node_id.is_some()
            || self.raft_bootstrap_expect.is_some()
            || !self.admin_keys.is_empty()
    }

    /// The Raft timing: the profile's values, overridden by the explicit
    /// flags, checked; an error names each flag at fault.
    fn raft_timing(&self) -> anyhow::Result<RaftTiming> {
        let mut t = RaftTiming::profile(self.raft_timing);
        t.heartbeat = self.raft_heartbeat.unwrap_or(t.heartbeat);
        t.election_timeout_min = self
            .raft_election_timeout_min
            .unwrap_or(t.election_timeout_min);
        t.election_timeout_max = self
            .raft_election_timeout_max
            .unwrap_or(t.election_timeout_max);
        t.write_wait = self.raft_write_wait.unwrap_or(t.write_wait);
        t.validate().map_err(|errs| {
            let lines: Vec<String> = errs
                .iter()
                .map(|e| {
                    format!(
                        "--raft-{}: {} (with --raft-timing {})",
                        e.field.replace('_', "-"),
                        e.reason,
                        self.raft_timing
                    )
                })
                .collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })?;
        Ok(t)
    }
}

/// Runs a node whose config comes from the replicated store.
pub async fn serve(
    file_cfg: Config,
    config_path: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    args: StoreArgs,
) -> anyhow::Result<()> {
    let timing = args.preflight(&file_cfg)?;
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
    // An admin listener on 0.0.0.0 is reached on the gossip advertise IP.
    let gossip_advertise = file_cfg.cluster.as_ref().and_then(|c| c.advertise_addr);
    let admin_reachable = match gossip_advertise {
        Some(ip) if bound.admin.ip().is_unspecified() => {
            std::net::SocketAddr::new(ip, bound.admin.port())
        }
        _ => bound.admin,
    };
    let mut settings = RaftSettings::new(
        data_dir.clone(),
        args.advertise
            .clone()
            .unwrap_or_else(|| admin_reachable.to_string()),
    );
    settings.node_id = args.raft_node_id;
    settings.join = args.join.clone();
    // With gossip seeds, a leader finds this node and adds it; a node with
    // an empty store bootstraps only when it has nobody to be found by.
    let has_seeds = file_cfg
        .cluster
        .as_ref()
        .is_some_and(|c| !c.seeds.is_empty());
    settings.bootstrap = args.join.is_none() && !has_seeds;
    settings.region = file_cfg
        .cluster
        .as_ref()
        .map(|c| c.region.clone())
        .unwrap_or_default();
    settings.bootstrap_expect = args.raft_bootstrap_expect;
    let bootstrap = settings.bootstrap && settings.bootstrap_expect.is_none();
    settings.voters = args.raft_voters;
    settings.voter_down_timeout = args.raft_voter_timeout;
    settings.remove_dead_learner_after = args.raft_remove_dead_learner_after;
    settings.stale_after = args.stale_after;
    settings.timing = timing;
    settings.snapshot_every = args.raft_snapshot_every;
    settings.key = args
        .admin_keys
        .iter()
        .find(|k| k.role == crate::admin::Role::Admin)
        .map(|k| k.secret.clone());
    let kv = RaftKv::start(
        settings,
        crate::docs::validator(state.clone(), base.clone()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("config store in {}: {e}", data_dir.display()))?;
    let _discover = cluster.clone().map(|c| {
        AbortOnDrop(tokio::spawn(publish_and_discover(
            kv.clone(),
            c,
            args.raft_bootstrap_expect,
        )))
    });

    let ctx = Arc::new(AdminCtx {
        state: state.clone(),
        store: Some(kv.clone()),
        keys: args.admin_keys.clone(),
        applied_revision: Default::default(),
        cluster: cluster.clone(),
        health: server.health.clone(),
        stored_problems: Default::default(),
        // Peers address this node by its Raft advertise address.
        hosts: crate::admin::Hosts::new(
            bound.admin,
            file_cfg
                .settings
                .admin_hosts
                .iter()
                .map(String::as_str)
                .chain([kv.advertise()]),
        ),
    });
    server.set_admin_router(crate::admin::router(ctx.clone()));

    let (tx, rx) = watch::channel(false);
    let run = tokio::spawn(server.run(rx));

    if let Some(path) = &config_path
        && bootstrap
    {
        seed(&kv, &file_cfg, path).await?;
    }
    // The first snapshot from whatever the store holds now. Documents that
    // are not valid (written by an older version) are reported, and the
    // node still starts so that they can be fixed through the admin API.
    let (docs, revision) = kv.view().docs_at();
    match first_config(&base, &docs) {
        Ok(cfg) => {
            state
                .apply(&cfg)
                .map_err(|e| anyhow::anyhow!("the stored config does not compile:\n{e}"))?;
            ctx.applied_revision.store(revision, Ordering::Relaxed);
        }
        Err(Degraded::Partial(cfg, left_out)) => match state.apply(&cfg) {
            Ok(_) => {
                tracing::error!(revision, left_out = ?left_out, "serving the stored config without the documents that are not valid; fix them (see /v1/status)");
            }
            Err(e) => {
                tracing::error!(revision, error = %e, "the stored config without its invalid documents does not compile either; serving no routes until they are fixed");
            }
        },
        Err(Degraded::Nothing(why)) => {
            tracing::error!(revision, reason = %why, "serving no routes until the stored documents are fixed (see /v1/status)");
        }
    }
    let _follow = AbortOnDrop(tokio::spawn(super::follow::follow_store(ctx.clone(), base)));

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

    tracing::info!(
        node_id = telemetry.node_id(),
        raft_id = kv.id(),
        proxy = %bound.proxy,
        admin = %bound.admin,
        revision,
        "weir is serving ({} mode, {}): config from the store in {}",
        crate::admin::mode_name(true),
        membership_words(cluster.as_deref()),
        data_dir.display()
    );
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

/// How the serving line names the membership: a single node, or a member
/// of the named gossip cluster.
pub(crate) fn membership_words(cluster: Option<&crate::cluster::Cluster>) -> String {
    match cluster {
        Some(c) => format!("member of gossip cluster {}", c.membership().cluster_name()),
        None => "single node".to_string(),
    }
}

/// Publishes this node's Raft id and address in gossip (and, for forming
/// a new cluster, whether its store is in one, its `bootstrap_expect` and
/// its bootstrap vote), and keeps the store's list of live peers (those
/// that publish theirs) up to date; the leader adds new ones as learners.
async fn publish_and_discover(
    kv: RaftKv,
    cluster: Arc<crate::cluster::Cluster>,
    expect: Option<usize>,
) {
    let m = cluster.membership();
    m.set_key(KEY_RAFT_ID, &kv.id().to_string()).await;
    m.set_key(KEY_RAFT_ADDR, kv.advertise()).await;
    if let Some(n) = expect {
        m.set_key(KEY_RAFT_EXPECT, &n.to_string()).await;
    }
    let mut changes = m.changes();
    loop {
        // Unchanged values are not re-sent (chitchat keeps the version).
        let state = if kv.in_cluster() { "member" } else { "empty" };
        m.set_key(KEY_RAFT_STATE, state).await;
        if let Some(v) = kv.boot_vote() {
            m.set_key(KEY_RAFT_BOOT, &v.to_string()).await;
        }
        kv.set_discovered(raft_peers(&m.members().await));
        // Changes cover joins, deaths and key updates; the tick is a
        // backstop.
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The live peers that publish a usable Raft id and address. Values come
/// from gossip: a member whose keys do not parse is left out (and logged),
/// never guessed. Two live members that claim one Raft id with different
/// addresses (an old incarnation not yet seen dead, or a copied data dir)
/// are both left out until gossip settles: the leader must not move a
/// member's address back and forth.
fn raft_peers(members: &[Member]) -> Vec<Peer> {
    let peers = valid_raft_peers(members);
    peers
        .iter()
        .filter(|p| {
            let clash = peers.iter().any(|q| q.id == p.id && q.addr != p.addr);
            if clash {
                tracing::debug!(raft_id = p.id, raft_addr = %p.addr, "two live members claim this raft id; ignoring both for now");
            }
            !clash
        })
        .cloned()
        .collect()
}

fn valid_raft_peers(members: &[Member]) -> Vec<Peer> {
    members
        .iter()
        .filter(|m| !m.is_self && m.state == MemberState::Alive)
        .filter_map(|m| {
            let id = m.keys.get(KEY_RAFT_ID)?;
            let addr = m.keys.get(KEY_RAFT_ADDR)?;
            let parsed_id = id.parse::<u64>().ok().filter(|&i| i != 0);
            let addr_ok = addr.len() <= 255
                && addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            match (parsed_id, addr_ok) {
                (Some(id), true) => Some(Peer {
                    id,
                    addr: addr.clone(),
                    region: m.region.clone(),
                    in_cluster: match m.keys.get(KEY_RAFT_STATE).map(String::as_str) {
                        Some("member") => Some(true),
                        Some("empty") => Some(false),
                        _ => None,
                    },
                    expect: m
                        .keys
                        .get(KEY_RAFT_EXPECT)
                        .and_then(|v| v.parse().ok())
                        .filter(|&n: &usize| n > 0),
                    boot_vote: m
                        .keys
                        .get(KEY_RAFT_BOOT)
                        .and_then(|v| v.parse().ok())
                        .filter(|&n: &u64| n > 0),
                }),
                _ => {
                    tracing::debug!(member = %m.id, raft_id = %id, raft_addr = %addr, "ignoring a member with an unusable raft id or address");
                    None
                }
            }
        })
        .collect()
}

/// Why the first snapshot is not the whole stored config.
#[derive(Debug)]
enum Degraded {
    /// Built without these invalid documents, none of which can let a
    /// request through that the whole config would stop.
    Partial(Box<Config>, Vec<String>),
    /// Not served at all: leaving the invalid documents out could let
    /// requests through that the whole config stops.
    Nothing(String),
}

/// The config to serve first from `docs`. When some documents do not
/// parse, the others are served only if every invalid one fails closed
/// when left out: a consumer, credential or subscription only grants
/// access. Without a global plugin, or a route (another route may match
/// instead, without its plugins), requests could pass that should not, so
/// then no routes are served.
fn first_config(base: &Config, docs: &weir_storage::Docs) -> Result<Config, Degraded> {
    let (cfg, problems) = crate::docs::config_from_docs(base, docs);
    if problems.is_empty() {
        return Ok(cfg);
    }
    let bad = crate::stored::documents(&problems);
    if let Some((kind, id)) = bad
        .iter()
        .find(|(kind, _)| !matches!(kind.as_str(), "consumers" | "credentials" | "subscriptions"))
    {
        return Err(Degraded::Nothing(format!(
            "the document {kind}/{id} is not valid, and serving without it could let requests through"
        )));
    }
    let kept: weir_storage::Docs = docs
        .iter()
        .filter(|(k, _)| !bad.contains(&(k.0.clone(), k.1.clone())))
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    let (cfg, more) = crate::docs::config_from_docs(base, &kept);
    let left_out = bad.iter().map(|(k, i)| format!("{k}/{i}")).collect();
    if more.is_empty() {
        Err(Degraded::Partial(Box::new(cfg), left_out))
    } else {
        Err(Degraded::Nothing(format!("{more:?}")))
    }
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
            at_ms: crate::clock::unix_ms(),
        })
        .await?;
    tracing::info!(outcome = ?w.outcome, "store seeded from the config file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, state: MemberState, keys: &[(&str, &str)]) -> Member {
        Member {
            id: id.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:7946".parse().expect("addr"),
            state,
            is_self: false,
            region: format!("r-{id}"),
            zone: String::new(),
            proxy_addr: None,
            admin_addr: None,
            mesh_addr: None,
            version: String::new(),
            started_at_ms: None,
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn raft_peers_take_only_live_members_with_valid_keys() {
        let ok = [(KEY_RAFT_ID, "7"), (KEY_RAFT_ADDR, "10.0.0.7:9180")];
        let mut me = member("self", MemberState::Alive, &ok);
        me.is_self = true;
        let members = vec![
            member("a", MemberState::Alive, &ok),
            member(
                "booting",
                MemberState::Alive,
                &[
                    (KEY_RAFT_ID, "8"),
                    (KEY_RAFT_ADDR, "10.0.0.8:9180"),
                    (KEY_RAFT_STATE, "empty"),
                    (KEY_RAFT_EXPECT, "3"),
                    (KEY_RAFT_BOOT, "7"),
                ],
            ),
            member(
                "odd-boot-keys",
                MemberState::Alive,
                &[
                    (KEY_RAFT_ID, "9"),
                    (KEY_RAFT_ADDR, "10.0.0.9:9180"),
                    (KEY_RAFT_STATE, "maybe"),
                    (KEY_RAFT_EXPECT, "0"),
                    (KEY_RAFT_BOOT, "x"),
                ],
            ),
            me,
            member("dead", MemberState::Dead, &ok),
            member("left", MemberState::Left, &ok),
            member("no-keys", MemberState::Alive, &[]),
            member(
                "zero",
                MemberState::Alive,
                &[(KEY_RAFT_ID, "0"), (KEY_RAFT_ADDR, "h:1")],
            ),
            member(
                "bad-id",
                MemberState::Alive,
                &[(KEY_RAFT_ID, "x"), (KEY_RAFT_ADDR, "h:1")],
            ),
            member(
                "bad-addr",
                MemberState::Alive,
                &[(KEY_RAFT_ID, "3"), (KEY_RAFT_ADDR, "nohost")],
            ),
            member(
                "bad-port",
                MemberState::Alive,
                &[(KEY_RAFT_ID, "3"), (KEY_RAFT_ADDR, "h:99999")],
            ),
            member(
                "twin-1",
                MemberState::Alive,
                &[(KEY_RAFT_ID, "5"), (KEY_RAFT_ADDR, "h:1")],
            ),
            member(
                "twin-2",
                MemberState::Alive,
                &[(KEY_RAFT_ID, "5"), (KEY_RAFT_ADDR, "h:2")],
            ),
        ];
        assert_eq!(
            raft_peers(&members),
            vec![
                Peer {
                    id: 7,
                    addr: "10.0.0.7:9180".into(),
                    region: "r-a".into(),
                    ..Peer::default()
                },
                Peer {
                    id: 8,
                    addr: "10.0.0.8:9180".into(),
                    region: "r-booting".into(),
                    in_cluster: Some(false),
                    expect: Some(3),
                    boot_vote: Some(7),
                },
                // Unreadable bootstrap keys read as "says nothing".
                Peer {
                    id: 9,
                    addr: "10.0.0.9:9180".into(),
                    region: "r-odd-boot-keys".into(),
                    ..Peer::default()
                },
            ]
        );
    }
}
