//! Launching a real `weir` process for a test.
//!
//! [`Gateway::start`] writes the YAML into a fresh temp dir as `weir.yaml`,
//! runs `<bin> serve --config <dir>/weir.yaml --ready-file <dir>/ready.json`
//! with `WEIR_LOG=info`, sends stdout and stderr to `<dir>/weir.log`, and
//! waits until the gateway has written `ready.json`:
//! `{"proxy":"127.0.0.1:PORT","admin":"127.0.0.1:PORT","pid":1234}`.
//!
//! Starting is async and polls with tokio timers, so upstreams on the same
//! runtime keep serving meanwhile. Everything else is cheap and synchronous
//! except [`Gateway::wait_exit`].
//!
//! Dropping a `Gateway` kills the process (SIGKILL, then reaps it) and
//! removes the temp dir, also when the test panics; in that case the tail
//! of the log is printed to stderr first, so the failure shows why.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use tempfile::TempDir;
use tokio::time::Instant;

/// How long [`Gateway::start`] waits for the ready file by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);

const CONFIG_FILE: &str = "weir.yaml";
const READY_FILE: &str = "ready.json";
const LOG_FILE: &str = "weir.log";
/// How much of the log a panicking test prints.
const LOG_TAIL_BYTES: usize = 16 * 1024;
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The contents of the ready file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Ready {
    /// Where the proxy listens.
    pub proxy: SocketAddr,
    /// Where the admin API listens, if it does.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// The gateway's process id as it reported it.
    pub pid: u32,
    /// Any further fields the gateway wrote.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A signal to send with [`Gateway::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: graceful shutdown.
    Term,
    /// SIGINT: graceful shutdown, as Ctrl-C.
    Int,
    /// SIGHUP.
    Hup,
    /// SIGKILL.
    Kill,
    /// SIGSTOP: freeze the process.
    Stop,
    /// SIGCONT: let a frozen process run again.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// Options for starting a gateway; from [`Gateway::builder`].
///
/// The temp dir exists from the moment the builder does, so a test can put
/// files in [`GatewayBuilder::dir`] (certificates, a data dir) and name them
/// in the config before starting.
#[derive(Debug)]
pub struct GatewayBuilder {
    bin: PathBuf,
    dir: TempDir,
    config: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
}

impl GatewayBuilder {
    /// The temp dir the gateway will run in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config to write as `weir.yaml`, as is (see [`Gateway::config`]).
    pub fn config(mut self, yaml: impl Into<String>) -> GatewayBuilder {
        self.config = yaml.into();
        self
    }

    /// An extra argument after the standard ones.
    pub fn arg(mut self, arg: impl Into<OsString>) -> GatewayBuilder {
        self.args.push(arg.into());
        self
    }

    /// Extra arguments after the standard ones.
    pub fn args<I, A>(mut self, args: I) -> GatewayBuilder
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable; may override `WEIR_LOG`.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> GatewayBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long to wait for the ready file (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> GatewayBuilder {
        self.ready_timeout = timeout;
        self
    }

    /// Writes the config, starts the process and waits until it is ready.
    ///
    /// # Errors
    /// If the binary cannot be run, exits before writing the ready file, or
    /// the deadline passes (the process is killed then). The error includes
    /// the log.
    pub async fn start(self) -> anyhow::Result<Gateway> {
        let config_path = self.dir.path().join(CONFIG_FILE);
        fs::write(&config_path, &self.config)
            .with_context(|| format!("write {}", config_path.display()))?;
        let mut gateway = Gateway {
            child: None,
            dir: self.dir,
            bin: self.bin,
            args: self.args,
            env: self.env,
            ready_timeout: self.ready_timeout,
            ready: None,
        };
        gateway.launch().await?;
        Ok(gateway)
    }
}

/// A running `weir` process in its own temp dir. See the module docs.
///
/// ```no_run
/// # async fn demo(bin: &std::path::Path) -> anyhow::Result<()> {
/// use weir_testsupport::{Gateway, Upstream};
/// let upstream = Upstream::start("a").await;
/// let config = Gateway::config(&format!(
///     "upstreams:\n  - id: a\n    targets: [{{addr: \"{}\"}}]\n",
///     upstream.target()
/// ));
/// // In the workspace's tests: `env!("CARGO_BIN_EXE_weir").as_ref()`.
/// let gateway = Gateway::start(bin, &config).await?;
/// let body = reqwest::get(gateway.url("/hello")).await?.text().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    dir: TempDir,
    bin: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
    ready: Option<Ready>,
}

impl Gateway {
    /// Starts `bin` with `config_yaml` (written as is) and the default
    /// options; see [`GatewayBuilder::start`].
    pub async fn start(bin: &Path, config_yaml: &str) -> anyhow::Result<Gateway> {
        Gateway::builder(bin).config(config_yaml).start().await
    }

    /// Options for starting `bin`. Creates the temp dir now.
    ///
    /// # Panics
    /// If the temp dir cannot be created.
    pub fn builder(bin: impl Into<PathBuf>) -> GatewayBuilder {
        GatewayBuilder {
            bin: bin.into(),
            dir: tempfile::Builder::new()
                .prefix("weir-test-")
                .tempdir()
                .expect("create a temp dir for weir"),
            config: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// `body` with `settings.listen` and `settings.admin_listen` set to
    /// `127.0.0.1:0`, unless `body` sets them itself. Other settings in
    /// `body` are kept. Comments are not.
    ///
    /// # Panics
    /// If `body` is not YAML, or its top level or `settings` is not a
    /// mapping.
    pub fn config(body: &str) -> String {
        let mut doc: Value = serde_yaml_ng::from_str(body)
            .unwrap_or_else(|e| panic!("test config is not valid YAML: {e}\n{body}"));
        if doc.is_null() {
            doc = Value::Mapping(Mapping::new());
        }
        let root = doc
            .as_mapping_mut()
            .unwrap_or_else(|| panic!("test config is not a YAML mapping:\n{body}"));
        let settings = root
            .entry(Value::from("settings"))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if settings.is_null() {
            *settings = Value::Mapping(Mapping::new());
        }
        let settings = settings
            .as_mapping_mut()
            .unwrap_or_else(|| panic!("`settings` in the test config is not a mapping:\n{body}"));
        for key in ["listen", "admin_listen"] {
            settings
                .entry(Value::from(key))
                .or_insert_with(|| Value::from("127.0.0.1:0"));
        }
        serde_yaml_ng::to_string(&doc).expect("a YAML value serializes")
    }

    /// What the gateway wrote to its ready file.
    pub fn ready(&self) -> &Ready {
        self.ready.as_ref().expect("a started gateway is ready")
    }

    /// Where the proxy listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.ready().proxy
    }

    /// Where the admin API listens.
    ///
    /// # Panics
    /// If the ready file named no admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.ready()
            .admin
            .expect("the gateway's ready file names no admin address")
    }

    /// `http://{proxy}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr())
    }

    /// `http://{admin}{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// The process id of the child (the one signals go to).
    ///
    /// # Panics
    /// Never for a started gateway.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("a started gateway has a child")
            .id()
    }

    /// The temp dir it runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/weir.yaml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// `<dir>/weir.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// Everything the process wrote to stdout and stderr so far, across
    /// restarts.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// Replaces `weir.yaml` atomically: writes a temp file in the same dir,
    /// then renames it over the config, so a watcher never sees half a file.
    pub fn rewrite_config(&self, yaml: &str) -> io::Result<()> {
        let tmp = self.dir.path().join(format!("{CONFIG_FILE}.tmp"));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(yaml.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, self.config_path())
    }

    /// Sends `signal` to the process.
    ///
    /// # Errors
    /// If the process has already exited, or `kill` fails.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.try_exit_status()? {
            bail!(
                "cannot send SIG{}: weir already exited with {status}",
                signal.name()
            );
        }
        let pid = self.pid();
        let status = Command::new("kill")
            .args(["-s", signal.name(), &pid.to_string()])
            .stdin(Stdio::null())
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -s {} {pid} failed with {status}", signal.name());
        }
        Ok(())
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("check whether weir exited"),
            None => bail!("weir was never started"),
        }
    }

    /// Waits for the process to exit by itself (e.g. after
    /// [`Signal::Term`]).
    ///
    /// # Errors
    /// If it is still running after `timeout` (it is left running); the
    /// error includes the log.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "weir (pid {}) still running after {timeout:?}; log:\n{}",
                    self.pid(),
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The extra arguments, to change before a [`Gateway::restart`].
    pub fn args_mut(&mut self) -> &mut Vec<OsString> {
        &mut self.args
    }

    /// Starts the process again in the same dir with the same config file
    /// and options, after killing it if it still runs. The log is appended
    /// to; the addresses are those of the new ready file.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill_child();
        self.launch().await
    }

    /// Spawns the child and waits for the ready file.
    async fn launch(&mut self) -> anyhow::Result<()> {
        let ready_path = self.dir.path().join(READY_FILE);
        match fs::remove_file(&ready_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("remove the old ready file"),
        }
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .arg("--ready-file")
            .arg(&ready_path)
            .args(&self.args)
            .env("WEIR_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate the log file handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("run {}", self.bin.display()))?;
        self.child = Some(child);
        self.ready = None;

        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(ready) = read_ready(&ready_path) {
                self.ready = Some(ready);
                return Ok(());
            }
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "weir exited with {status} before writing {}; log:\n{}",
                    ready_path.display(),
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                self.kill_child();
                bail!(
                    "weir did not become ready within {:?} (no valid {}); killed it; log:\n{}",
                    self.ready_timeout,
                    ready_path.display(),
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL unless already exited, then reap.
    fn kill_child(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill_child();
        if std::thread::panicking() {
            let log = self.log();
            let tail_start = log.len().saturating_sub(LOG_TAIL_BYTES);
            let tail_start = (tail_start..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(log.len());
            eprintln!(
                "--- weir log ({}), last {} bytes ---\n{}\n--- end of weir log ---",
                self.log_path().display(),
                log.len() - tail_start,
                &log[tail_start..]
            );
        }
    }
}

/// The ready file, if it exists and parses.
fn read_ready(path: &Path) -> Option<Ready> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

fn read_log(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Value {
        serde_yaml_ng::from_str(yaml).expect("valid yaml")
    }

    #[test]
    fn config_adds_loopback_listeners() {
        let merged = parse(&Gateway::config("routes: []\n"));
        assert_eq!(merged["settings"]["listen"], Value::from("127.0.0.1:0"));
        assert_eq!(
            merged["settings"]["admin_listen"],
            Value::from("127.0.0.1:0")
        );
        assert_eq!(merged["routes"], parse("[]"));
    }

    #[test]
    fn config_keeps_the_callers_settings() {
        let merged = parse(&Gateway::config(
            "settings:\n  via: ''\n  listen: 127.0.0.1:9999\n",
        ));
        assert_eq!(merged["settings"]["listen"], Value::from("127.0.0.1:9999"));
        assert_eq!(
            merged["settings"]["admin_listen"],
            Value::from("127.0.0.1:0")
        );
        assert_eq!(merged["settings"]["via"], Value::from(""));
    }

    #[test]
    fn config_of_nothing_is_just_the_listeners() {
        let merged = parse(&Gateway::config(""));
        assert_eq!(merged["settings"]["listen"], Value::from("127.0.0.1:0"));
        let merged = parse(&Gateway::config("settings:\n"));
        assert_eq!(
            merged["settings"]["admin_listen"],
            Value::from("127.0.0.1:0")
        );
    }

    #[test]
    fn ready_file_parses_with_extra_fields() {
        let ready: Ready = serde_json::from_str(
            r#"{"proxy":"127.0.0.1:1","admin":"127.0.0.1:2","pid":7,"cluster":"x"}"#,
        )
        .expect("parses");
        assert_eq!(ready.proxy.port(), 1);
        assert_eq!(ready.admin.map(|a| a.port()), Some(2));
        assert_eq!(ready.extra["cluster"], "x");
    }
}
