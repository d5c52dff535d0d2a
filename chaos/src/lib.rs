//! weir's chaos harness: starts a cluster of real `weir` processes on
//! loopback and does things to them: kill -9, pause (SIGSTOP/SIGCONT),
//! graceful stop, restart. It reads each node's view of the cluster through
//! its admin API and waits for conditions with deadlines; a timeout error
//! carries every node's view and the tail of every node's log.
//!
//! Each node is a [`weir_testsupport::Gateway`]: its own temp dir, its log
//! kept across restarts, killed and reaped on drop (also when a test
//! panics), so no process outlives the test. `weir` starts no children of
//! its own, so killing the one process is enough.
//!
//! A cluster can put each node's mesh behind a UDP fault proxy
//! (`weir-faultproxy`, [`ClusterSpec::mesh_behind_proxies`]): the node
//! advertises the proxy's address (`--mesh-advertise`), so every peer
//! dials it through the proxy, and a test can degrade a node's links
//! ([`Node::mesh_proxy`]) or cut it off from the others both ways and
//! heal it ([`Cluster::partition_mesh`], [`Cluster::heal_mesh`]). Gossip,
//! Raft and the admin API stay direct.
//!
//! Load generation, a fault timeline and invariant reports are not here
//! yet.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tokio::time::Instant;
use weir_faultproxy::{Partition, Proxy, ProxyConfig, ProxyHandle, Source};
use weir_testsupport::{Gateway, Signal};

/// How much of each log a failure message carries.
const LOG_TAIL_BYTES: usize = 4 * 1024;
const POLL: Duration = Duration::from_millis(50);

/// One node to start.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id (`--node-id`).
    pub id: String,
    /// Region label.
    pub region: String,
    /// Zone label.
    pub zone: String,
    /// Cluster secret for this node (`WEIR_CLUSTER_SECRET`); `None` uses
    /// the cluster's.
    pub secret: Option<String>,
    /// The config file body (listeners are forced to loopback port 0);
    /// `None` uses the cluster's.
    pub config: Option<String>,
}

impl NodeSpec {
    /// A node with an id and region, zone `{region}-a`.
    pub fn new(id: impl Into<String>, region: impl Into<String>) -> NodeSpec {
        let region = region.into();
        NodeSpec {
            id: id.into(),
            zone: format!("{region}-a"),
            region,
            secret: None,
            config: None,
        }
    }

    /// Sets this node's own secret.
    pub fn secret(mut self, s: impl Into<String>) -> NodeSpec {
        self.secret = Some(s.into());
        self
    }

    /// Sets this node's own config.
    pub fn config(mut self, yaml: impl Into<String>) -> NodeSpec {
        self.config = Some(yaml.into());
        self
    }
}

/// A cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Cluster name.
    pub name: String,
    /// Shared secret.
    pub secret: String,
    /// Config file body shared by the nodes.
    pub config: String,
    /// The nodes, started in order; each joins through the ones before it.
    pub nodes: Vec<NodeSpec>,
    /// Extra `weir serve` arguments for every node.
    pub args: Vec<String>,
    /// Whether each node's mesh sits behind its own UDP fault proxy.
    pub mesh_proxies: bool,
}

impl ClusterSpec {
    /// `n` nodes `node-0`… in regions `region-0`…, a fixed test secret and
    /// an empty config.
    pub fn new(n: usize) -> ClusterSpec {
        ClusterSpec {
            name: "chaos".to_string(),
            secret: "chaos-harness-test-secret".to_string(),
            config: String::new(),
            nodes: (0..n)
                .map(|i| NodeSpec::new(format!("node-{i}"), format!("region-{i}")))
                .collect(),
            args: Vec::new(),
            mesh_proxies: false,
        }
    }

    /// Sets the shared config.
    pub fn config(mut self, yaml: impl Into<String>) -> ClusterSpec {
        self.config = yaml.into();
        self
    }

    /// Puts each node's mesh behind its own UDP fault proxy: peers dial
    /// the proxy (the node advertises it), the proxy forwards to the node.
    pub fn mesh_behind_proxies(mut self) -> ClusterSpec {
        self.mesh_proxies = true;
        self
    }
}

/// A member as a node's admin API reports it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MemberView {
    /// Node id.
    pub id: String,
    /// Generation.
    pub generation: u64,
    /// `alive`, `joining`, `dead` or `left`.
    pub state: String,
    /// Whether it is the reporting node.
    pub is_self: bool,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// Proxy address.
    pub proxy_addr: Option<SocketAddr>,
    /// Admin address.
    pub admin_addr: Option<SocketAddr>,
}

/// `GET /v1/cluster/members` as a whole.
#[derive(Debug, Clone, Deserialize)]
pub struct MembersDoc {
    /// Cluster name.
    pub cluster: String,
    /// Reporting node.
    pub node_id: String,
    /// Its members.
    pub members: Vec<MemberView>,
    /// Transport counters.
    pub gossip: GossipCounters,
}

/// Gossip transport counters of one node.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct GossipCounters {
    /// Datagrams sent.
    pub sent_datagrams: u64,
    /// Datagrams received and accepted.
    pub received_datagrams: u64,
    /// Datagrams that failed to open.
    pub rejected_datagrams: u64,
    /// Datagrams that opened but did not decode.
    pub malformed_datagrams: u64,
}

impl MembersDoc {
    /// The newest incarnation of `id`, if listed.
    pub fn member(&self, id: &str) -> Option<&MemberView> {
        self.members
            .iter()
            .filter(|m| m.id == id)
            .max_by_key(|m| m.generation)
    }

    /// The state of the newest incarnation of `id`.
    pub fn state_of(&self, id: &str) -> Option<&str> {
        self.member(id).map(|m| m.state.as_str())
    }
}

/// One running (or stopped) node.
#[derive(Debug)]
pub struct Node {
    /// Its spec.
    pub spec: NodeSpec,
    gateway: Gateway,
    gossip: SocketAddr,
    /// The mesh socket itself (from the ready file), if the mesh runs.
    mesh: Option<SocketAddr>,
    /// The fault proxy in front of the mesh socket.
    mesh_proxy: Option<Proxy>,
    running: bool,
    paused: bool,
}

impl Node {
    /// The process launcher (admin URL, proxy URL, log, config file).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Its gossip address.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip
    }

    /// Its mesh socket (not the proxy's), if its mesh runs.
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh
    }

    /// The fault proxy in front of its mesh, with
    /// [`ClusterSpec::mesh_behind_proxies`].
    pub fn mesh_proxy(&self) -> Option<ProxyHandle> {
        self.mesh_proxy.as_ref().map(Proxy::handle)
    }

    /// Whether the process should be running (not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Its admin API's member list.
    ///
    /// # Errors
    /// If the admin API does not answer 200 with the expected JSON.
    pub async fn members(&self) -> anyhow::Result<MembersDoc> {
        let url = self.gateway.admin_url("/v1/cluster/members");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let resp = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {url}: bad JSON: {body}"))
    }

    fn log_tail(&self) -> String {
        let log = self.gateway.log();
        let start = log.len().saturating_sub(LOG_TAIL_BYTES);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        log[start..].to_string()
    }
}

/// A cluster of `weir` processes. Dropping it kills them all.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    spec: ClusterSpec,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts every node of `spec` in order, each seeded with the gossip
    /// addresses of the ones before it. Does not wait for convergence.
    ///
    /// # Errors
    /// If a node fails to start (the error has its log).
    pub async fn start(bin: &Path, spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            spec: spec.clone(),
            nodes: Vec::new(),
        };
        for ns in spec.nodes {
            let seeds: Vec<String> = cluster.nodes.iter().map(|n| n.gossip.to_string()).collect();
            let node = cluster.launch(ns, seeds, "127.0.0.1:0".parse()?).await?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    async fn launch(
        &self,
        ns: NodeSpec,
        seeds: Vec<String>,
        gossip_listen: SocketAddr,
    ) -> anyhow::Result<Node> {
        // The proxy comes first: the node advertises its address. It has
        // no upstream (and drops what arrives) until the node's mesh
        // socket is known.
        let mesh_proxy = if self.spec.mesh_proxies {
            let seed = u64::try_from(self.nodes.len()).unwrap_or(0);
            let cfg = ProxyConfig::new(format!("mesh-{}", ns.id), "127.0.0.1:0".parse()?, None)
                .seed(seed);
            Some(Proxy::udp(cfg).await.context("start a mesh proxy")?)
        } else {
            None
        };
        let advertise = mesh_proxy.as_ref().map(Proxy::listen_addr);
        let config = Gateway::config(ns.config.as_deref().unwrap_or(&self.spec.config));
        let mut b = Gateway::builder(&self.bin)
            .config(config)
            .env(
                "WEIR_CLUSTER_SECRET",
                ns.secret.as_deref().unwrap_or(&self.spec.secret),
            )
            .args(node_args(&self.spec, &ns, &seeds, gossip_listen, advertise));
        b = b.args(self.spec.args.iter());
        let gateway = b
            .start()
            .await
            .with_context(|| format!("start {}", ns.id))?;
        let gossip = gossip_of(&gateway)?;
        let mesh = mesh_of(&gateway)?;
        if let (Some(p), Some(m)) = (&mesh_proxy, mesh) {
            p.handle().set_upstream(m);
        }
        Ok(Node {
            spec: ns,
            gateway,
            gossip,
            mesh,
            mesh_proxy,
            running: true,
            paused: false,
        })
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Adds and starts a node seeded with every current node.
    ///
    /// # Errors
    /// If it fails to start.
    pub async fn add(&mut self, ns: NodeSpec) -> anyhow::Result<usize> {
        let seeds = self.nodes.iter().map(|n| n.gossip.to_string()).collect();
        let node = self.launch(ns, seeds, "127.0.0.1:0".parse()?).await?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// SIGKILL to node `i`.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        n.gateway.signal(Signal::Kill)?;
        n.gateway.wait_exit(Duration::from_secs(10)).await?;
        n.running = false;
        n.paused = false;
        Ok(())
    }

    /// SIGTERM to node `i`, then wait for it to exit.
    ///
    /// # Errors
    /// If it does not exit within 30 s.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        n.gateway.signal(Signal::Term)?;
        n.gateway.wait_exit(Duration::from_secs(30)).await?;
        n.running = false;
        Ok(())
    }

    /// SIGSTOP to node `i`.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].gateway.signal(Signal::Stop)?;
        self.nodes[i].paused = true;
        Ok(())
    }

    /// SIGCONT to node `i`.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].gateway.signal(Signal::Cont)?;
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Restarts node `i` (killing it first if it runs) on the same gossip
    /// port, seeded with every other node.
    ///
    /// # Errors
    /// If it fails to start.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.gossip.to_string())
            .collect();
        let spec = self.spec.clone();
        let n = &mut self.nodes[i];
        let advertise = n.mesh_proxy.as_ref().map(Proxy::listen_addr);
        let mut args = node_args(&spec, &n.spec, &seeds, n.gossip, advertise);
        args.extend(spec.args.iter().map(OsString::from));
        *n.gateway.args_mut() = args;
        n.gateway.restart().await?;
        n.gossip = gossip_of(&n.gateway)?;
        n.mesh = mesh_of(&n.gateway)?;
        if let (Some(p), Some(m)) = (&n.mesh_proxy, n.mesh) {
            p.handle().set_upstream(m);
        }
        n.running = true;
        n.paused = false;
        Ok(())
    }

    /// Cuts node `i`'s mesh off from every other node's, both ways: its
    /// proxy drops what the others send it and theirs drop what it sends
    /// them (and the answers). Gossip is untouched, so membership still
    /// sees every node alive. The rules name the mesh sockets as they are
    /// now: call it again after a restart.
    ///
    /// # Errors
    /// Without [`ClusterSpec::mesh_behind_proxies`], or a node whose mesh
    /// does not run.
    pub fn partition_mesh(&self, i: usize) -> anyhow::Result<()> {
        let mine = self.nodes[i]
            .mesh
            .with_context(|| format!("{} runs no mesh", self.nodes[i].spec.id))?;
        let others: Vec<Source> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, n)| n.mesh.map(Source::Addr))
            .collect();
        let rule = isolation_rule(&self.nodes[i].spec.id);
        for (j, n) in self.nodes.iter().enumerate() {
            let p = n.mesh_proxy().context(
                "the cluster's meshes are not behind proxies (ClusterSpec::mesh_behind_proxies)",
            )?;
            let cut = if j == i {
                Partition::sources(others.iter().copied())
            } else {
                Partition::sources([Source::Addr(mine)])
            };
            p.partition(&rule, cut)?;
        }
        Ok(())
    }

    /// Heals what [`Cluster::partition_mesh`] cut for node `i`.
    ///
    /// # Errors
    /// Without [`ClusterSpec::mesh_behind_proxies`].
    pub fn heal_mesh(&self, i: usize) -> anyhow::Result<()> {
        let rule = isolation_rule(&self.nodes[i].spec.id);
        for n in &self.nodes {
            let p = n.mesh_proxy().context(
                "the cluster's meshes are not behind proxies (ClusterSpec::mesh_behind_proxies)",
            )?;
            // A proxy without the rule is healed already.
            let _ = p.heal(&rule);
        }
        Ok(())
    }

    /// Waits until every running, unpaused node sees every other such node
    /// `alive`.
    ///
    /// # Errors
    /// On timeout, with every node's view and log tail.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<()> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running && !self.nodes[i].paused)
            .collect();
        self.wait_until("convergence", timeout, |docs| {
            live.iter().all(|&i| {
                docs[i].as_ref().is_some_and(|d| {
                    live.iter()
                        .all(|&j| d.state_of(&self.nodes[j].spec.id) == Some("alive"))
                })
            })
        })
        .await
    }

    /// Waits until every running, unpaused node other than `target` reports
    /// `target` in `state`.
    ///
    /// # Errors
    /// On timeout, with every node's view and log tail.
    pub async fn wait_seen_as(
        &self,
        target: usize,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let id = self.nodes[target].spec.id.clone();
        let observers: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != target && self.nodes[i].running && !self.nodes[i].paused)
            .collect();
        self.wait_until(&format!("{id} seen as {state}"), timeout, |docs| {
            observers.iter().all(|&i| {
                docs[i]
                    .as_ref()
                    .is_some_and(|d| d.state_of(&id) == Some(state))
            })
        })
        .await
    }

    /// Every running, unpaused node's member list (`None` for the others
    /// and for nodes whose admin API failed).
    pub async fn views(&self) -> Vec<Option<MembersDoc>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            if n.running && !n.paused {
                out.push(n.members().await.ok());
            } else {
                out.push(None);
            }
        }
        out
    }

    /// Polls [`Cluster::views`] until `pred` holds.
    ///
    /// # Errors
    /// On timeout, with every node's view and log tail.
    pub async fn wait_until<F>(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(&[Option<MembersDoc>]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let docs = self.views().await;
            if pred(&docs) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.report(&docs)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every node's view and log tail, for a failure message.
    pub fn report(&self, docs: &[Option<MembersDoc>]) -> String {
        let mut out = String::new();
        for (n, d) in self.nodes.iter().zip(docs) {
            let _ = writeln!(
                out,
                "=== {} (running: {}, paused: {}) ===",
                n.spec.id, n.running, n.paused
            );
            match d {
                Some(d) => {
                    for m in &d.members {
                        let _ = writeln!(
                            out,
                            "  sees {} gen {} {} ({})",
                            m.id, m.generation, m.state, m.region
                        );
                    }
                    let _ = writeln!(out, "  gossip {:?}", d.gossip);
                }
                None => out.push_str("  (no view)\n"),
            }
            let _ = writeln!(out, "--- log tail ---\n{}", n.log_tail());
        }
        out
    }
}

fn isolation_rule(id: &str) -> String {
    format!("isolate-{id}")
}

fn node_args(
    spec: &ClusterSpec,
    ns: &NodeSpec,
    seeds: &[String],
    gossip_listen: SocketAddr,
    mesh_advertise: Option<SocketAddr>,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--cluster-name".into(),
        spec.name.clone().into(),
        "--node-id".into(),
        ns.id.clone().into(),
        "--region".into(),
        ns.region.clone().into(),
        "--zone".into(),
        ns.zone.clone().into(),
        "--gossip-listen".into(),
        gossip_listen.to_string().into(),
        // Every node on this host gets its own mesh port.
        "--mesh-listen".into(),
        "127.0.0.1:0".into(),
    ];
    if let Some(m) = mesh_advertise {
        a.push("--mesh-advertise".into());
        a.push(m.to_string().into());
    }
    if !seeds.is_empty() {
        a.push("--seeds".into());
        a.push(seeds.join(",").into());
    }
    a
}

fn gossip_of(g: &Gateway) -> anyhow::Result<SocketAddr> {
    let v = g
        .ready()
        .extra
        .get("gossip")
        .and_then(|v| v.as_str())
        .context("the ready file names no gossip address (is clustering on?)")?;
    v.parse().context("gossip address in the ready file")
}

/// The node's mesh socket from its ready file, if its mesh runs.
fn mesh_of(g: &Gateway) -> anyhow::Result<Option<SocketAddr>> {
    g.ready()
        .extra
        .get("mesh")
        .and_then(|v| v.as_str())
        .map(|v| v.parse().context("mesh address in the ready file"))
        .transpose()
}
