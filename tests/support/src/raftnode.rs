//! A launcher for `weir serve` in cluster mode (the replicated config
//! store): each node has its own data dir, port-0 listeners and a ready
//! file, can be killed or stopped, restarted on the same admin (Raft)
//! address or a new one, or frozen with SIGSTOP; the process is killed on drop. Used by the Raft
//! tests and the propagation benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{http_client, wait_for, wait_until};

const START: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(30);

/// One `weir serve` process in cluster mode.
pub struct Node {
    bin: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
    /// Environment changes: `Some(value)` sets, `None` removes.
    env: Vec<(String, Option<String>)>,
    child: Option<Child>,
    /// Proxy address.
    pub proxy: String,
    /// Admin address (also its Raft address).
    pub admin: String,
    /// Gossip address, when the node gossips (empty otherwise).
    pub gossip: String,
    /// Process id.
    pub pid: u32,
}

impl Node {
    /// Starts a node whose data lives in `dir` (created if missing).
    pub async fn start(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Node> {
        Node::start_with_env(bin, dir, extra, &[]).await
    }

    /// [`Node::start`] with environment changes: `Some(value)` sets a
    /// variable, `None` removes it (e.g. `WEIR_LOG`, for the default log
    /// level); kept across restarts.
    pub async fn start_with_env(
        bin: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> anyhow::Result<Node> {
        std::fs::create_dir_all(dir)?;
        let mut n = Node {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
            child: None,
            proxy: String::new(),
            admin: String::new(),
            gossip: String::new(),
            pid: 0,
        };
        n.launch(None).await?;
        Ok(n)
    }

    /// (Re)spawns the process; `admin` pins the admin address (a restarted
    /// node keeps its Raft address).
    pub async fn launch(&mut self, admin: Option<&str>) -> anyhow::Result<()> {
        let ready = self.dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weir.log"))?;
        let mut cmd = Command::new(&self.bin);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen"])
            .arg(admin.unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn weir")?;
        self.child = Some(child);
        let deadline = Instant::now() + START;
        loop {
            if let Some(doc) = std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                self.proxy = doc["proxy"].as_str().unwrap_or_default().to_string();
                self.admin = doc["admin"].as_str().unwrap_or_default().to_string();
                self.gossip = doc["gossip"].as_str().unwrap_or_default().to_string();
                self.pid = doc["pid"].as_u64().unwrap_or_default() as u32;
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("weir exited with {status}; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("weir not ready; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weir.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let admin = self.admin.clone();
        self.launch(Some(&admin)).await
    }

    /// Stops the process with SIGTERM (a clean shutdown: it leaves gossip
    /// and stops Raft) and waits for it to exit; kills it if it has not
    /// after 30 s.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        self.signal("-TERM");
        let deadline = Instant::now() + START;
        loop {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("weir did not stop on SIGTERM; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn status(&self) -> Option<Value> {
        http_client()
            .get(self.url("/v1/status"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = http_client()
            .put(self.url(path))
            .timeout(Duration::from_secs(20))
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = http_client()
            .get(self.url(path))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// GET on the proxy port: the status code.
    pub async fn proxy_status(&self, path: &str) -> Option<u16> {
        http_client()
            .get(format!("http://{}{path}", self.proxy))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail = log.len().saturating_sub(4000);
            let tail = (tail..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!("--- {} ---\n{}", self.dir.display(), &log[tail..]);
        }
    }
}

/// Three nodes: the first bootstraps, the others join it; returns once
/// all three are voters that agree on a leader.
pub async fn cluster(bin: &Path, root: &Path) -> anyhow::Result<Vec<Node>> {
    cluster_with_env(bin, root, &[]).await
}

/// [`cluster`] with environment changes for every node (see
/// [`Node::start_with_env`]).
pub async fn cluster_with_env(
    bin: &Path,
    root: &Path,
    env: &[(&str, Option<&str>)],
) -> anyhow::Result<Vec<Node>> {
    cluster_with_args(bin, root, &[], env).await
}

/// [`cluster_with_env`] with `args` added to every node's command line.
pub async fn cluster_with_args(
    bin: &Path,
    root: &Path,
    args: &[&str],
    env: &[(&str, Option<&str>)],
) -> anyhow::Result<Vec<Node>> {
    let joining = |join: &str| {
        let mut a = vec!["--join".to_string(), join.to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        a
    };
    let first = Node::start_with_env(bin, &root.join("n1"), args, env).await?;
    let join = first.admin.clone();
    let a = joining(&join);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let second = Node::start_with_env(bin, &root.join("n2"), &a, env).await?;
    let third = Node::start_with_env(bin, &root.join("n3"), &a, env).await?;
    let nodes = vec![first, second, third];
    wait_until(
        "three voters with one leader everywhere",
        CONVERGE,
        || async {
            let mut leaders = Vec::new();
            for n in &nodes {
                let Some(s) = n.status().await else {
                    return false;
                };
                let voters = s["cluster"]["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["role"] == "voter").count());
                if voters != 3 || s["cluster"]["leader"].is_null() {
                    return false;
                }
                leaders.push(s["cluster"]["leader"].clone());
            }
            leaders.windows(2).all(|w| w[0] == w[1])
        },
    )
    .await;
    Ok(nodes)
}

/// For a benchmark's `main`: the `weir` binary to measure, or `None`
/// when not run by `cargo bench`. `cargo bench` passes `--bench`;
/// `cargo test`/`nextest` (listing or running all targets) do not, and
/// must not start a cluster. `WEIR_BENCH_BIN` measures another build
/// (e.g. an older commit's, for before/after figures in one run) instead
/// of `built`, the one cargo built.
pub fn bench_bin(built: &str) -> Option<PathBuf> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some(std::env::var_os("WEIR_BENCH_BIN").map_or_else(|| built.into(), PathBuf::from))
}

pub async fn leader_index(nodes: &[Node]) -> usize {
    wait_for("a leader", CONVERGE, || async {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(s) = n.status().await
                && s["cluster"]["role"] == "leader"
            {
                return Some(i);
            }
        }
        None
    })
    .await
}
