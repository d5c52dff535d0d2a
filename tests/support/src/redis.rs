//! A real `redis-server` for tests: started on a free loopback port in a
//! temp dir with persistence off, awaited until it answers PING, and able
//! to play a stalled Redis (SIGSTOP / SIGCONT), a dead one (kill) and a
//! recovered one (restart on the same port). Killed on drop.
//!
//! It owns the process only; what a test does with the server (and the
//! client it uses) is the test's.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a starting server has to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`RedisServer`] is started.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: clients must authenticate with this password.
    pub password: Option<String>,
    /// One-node Redis Cluster (`cluster-enabled`, every slot assigned to
    /// the node).
    pub cluster: bool,
}

/// A `redis-server` process on `127.0.0.1`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    options: RedisOptions,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl RedisServer {
    /// Starts a plain server (no password, not a cluster).
    pub fn start() -> anyhow::Result<RedisServer> {
        RedisServer::start_with(RedisOptions::default())
    }

    /// Starts a server with `options` on a free port and waits until it
    /// answers PING (and, for a cluster, until the cluster is up).
    pub fn start_with(options: RedisOptions) -> anyhow::Result<RedisServer> {
        // A port found free can be taken before the server binds it: try a
        // few.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = RedisServer {
                child: None,
                port,
                options: options.clone(),
                dir: tempfile::tempdir().context("temp dir for redis-server")?,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the process (SIGSTOP): connections are accepted by the kernel
    /// but nothing is answered, the case that hangs clients without a
    /// timeout.
    pub fn stall(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a stalled process run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// Kills the process (SIGKILL) and reaps it: connections are reset
    /// and the port refuses.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill redis-server")?;
            child.wait().context("reap redis-server")?;
        }
        Ok(())
    }

    /// Kills the server if it runs and starts a new, empty one on the same
    /// port, waiting until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let deadline = Instant::now() + START_TIMEOUT;
        // The port may linger a moment after the kill; retry until the
        // deadline.
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends one command and returns the first line of the reply (e.g.
    /// `+OK`, `:3`, `$5`, `-ERR …`).
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        command(self.port, self.options.password.as_deref(), args)
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            bail!("redis-server is not running");
        };
        let status = Command::new("kill")
            .args(["-s", name, &child.id().to_string()])
            .stdin(Stdio::null())
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -s {name} {} failed: {status}", child.id());
        }
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let dir: &Path = self.dir.path();
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(dir)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &dir.display().to_string()])
            .args(["--logfile", "redis.log"]);
        if let Some(pw) = &self.options.password {
            cmd.args(["--requirepass", pw]);
        }
        if self.options.cluster {
            // A fresh node file each start: a restarted node is a new,
            // empty cluster of one, like a restarted single server.
            let _ = std::fs::remove_file(dir.join("nodes.conf"));
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (is the redis-server package installed?)")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                bail!("redis-server exited with {status}: {log}");
            }
            if self.ping() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        if self.options.cluster {
            let reply = self.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])?;
            if !reply.starts_with("+OK") {
                bail!("CLUSTER ADDSLOTSRANGE answered {reply}");
            }
            while !self.cluster_ok() {
                if Instant::now() >= deadline {
                    bail!("the one-node cluster on port {} did not come up", self.port);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_ok_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
    }

    fn cluster_ok(&self) -> bool {
        let Ok(mut s) = connect(self.port) else {
            return false;
        };
        let auth_ok = match &self.options.password {
            Some(pw) => exchange(&mut s, &["AUTH", pw]).is_ok_and(|r| r.starts_with("+OK")),
            None => true,
        };
        auth_ok
            && exchange(&mut s, &["CLUSTER", "INFO"]).is_ok()
            && read_bulk_contains(&mut s, "cluster_state:ok")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free port")?;
    Ok(l.local_addr()?.port())
}

fn connect(port: u16) -> anyhow::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    Ok(s)
}

fn command(port: u16, password: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    let mut s = connect(port)?;
    if let Some(pw) = password {
        let r = exchange(&mut s, &["AUTH", pw])?;
        if !r.starts_with("+OK") {
            bail!("AUTH answered {r}");
        }
    }
    exchange(&mut s, args)
}

/// Writes one command in RESP and reads the first line of the reply.
fn exchange(s: &mut TcpStream, args: &[&str]) -> anyhow::Result<String> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        std::io::Read::read_exact(s, &mut byte)?;
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

fn read_bulk_contains(s: &mut TcpStream, needle: &str) -> bool {
    let mut r = BufReader::new(s);
    let mut text = String::new();
    // The bulk string of CLUSTER INFO is a few hundred bytes of lines.
    for _ in 0..64 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        text.push_str(&line);
        if text.contains(needle) {
            return true;
        }
    }
    false
}
