//! The admin client behind `weir apply`, `get`, `delete`, `revisions`,
//! `rollback`, `cluster status` and `cluster store`: each calls the admin
//! API and prints the answer (tables are drawn by `table.rs`).
//!
//! The admin address and key come from flags, then the environment
//! (`WEIR_ADMIN`, `WEIR_ADMIN_KEY`), then a small YAML file
//! (`--cli-config`, `WEIR_CLI_CONFIG`, or `~/.config/weir/cli.yaml`):
//!
//! ```yaml
//! admin: http://10.0.0.5:9180
//! key: s3cr3t-s3cr3t-s3cr3t
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde::Deserialize;
use serde_json::{Value, json};

/// How to reach the admin API.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Admin API base URL (default http://127.0.0.1:9180).
    #[arg(long, env = "WEIR_ADMIN")]
    admin: Option<String>,
    /// Admin API key (the SECRET part of NAME:ROLE:SECRET).
    #[arg(
        long,
        visible_alias = "admin-key",
        env = "WEIR_ADMIN_KEY",
        hide_env_values = true
    )]
    key: Option<String>,
    /// CLI config file with `admin` and `key`.
    #[arg(long, env = "WEIR_CLI_CONFIG")]
    cli_config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliFile {
    /// Admin API base URL.
    #[serde(default)]
    admin: Option<String>,
    /// Admin API key.
    #[serde(default)]
    key: Option<String>,
}

/// Output format of `weir get`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

fn load_cli_file(path: &Path) -> anyhow::Result<CliFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("{}", path.display()))
}

impl Client {
    fn new(c: &ConnArgs) -> anyhow::Result<Client> {
        let file = match &c.cli_config {
            Some(p) => load_cli_file(p)?,
            None => match std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".config/weir/cli.yaml"))
            {
                Some(p) if p.exists() => load_cli_file(&p)?,
                _ => CliFile::default(),
            },
        };
        let mut base = c
            .admin
            .clone()
            .or(file.admin)
            .unwrap_or_else(|| "http://127.0.0.1:9180".into());
        if !base.starts_with("http://") && !base.starts_with("https://") {
            base = format!("http://{base}");
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            key: c.key.clone().or(file.key),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
        })
    }

    /// A GET that answers `None` when the node refuses it with `code`
    /// (e.g. `cluster_disabled` on a single node).
    async fn get_unless(&self, path: &str, code: &str) -> anyhow::Result<Option<Value>> {
        let mut rb = self.http.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if v["error"]["code"] == code {
                return Ok(None);
            }
        }
        self.call(reqwest::Method::GET, path, None).await.map(Some)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let e = &v["error"];
            let mut msg = format!(
                "{status}: {}",
                e["message"].as_str().unwrap_or("request failed")
            );
            if let Some(ps) = e["problems"].as_array() {
                for p in ps {
                    msg.push_str(&format!(
                        "\n  {}/{}{}: {}",
                        p["kind"].as_str().unwrap_or(""),
                        p["id"].as_str().unwrap_or(""),
                        p["pointer"].as_str().unwrap_or(""),
                        p["reason"].as_str().unwrap_or("")
                    ));
                }
            }
            bail!(msg);
        }
        Ok(v)
    }
}

fn run(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `weir cluster status [--json]`: gossip members, mesh links and the
/// health matrix.
pub fn cluster_status(conn: &ConnArgs, json: bool) -> ExitCode {
    run(async move {
        let client = Client::new(conn)?;
        let members = match client
            .get_unless("/v1/cluster/members", "cluster_disabled")
            .await?
        {
            Some(m) => m,
            // A node without gossip: itself, as its status describes it.
            None => {
                let status = client
                    .call(reqwest::Method::GET, "/v1/status", None)
                    .await?;
                super::table::single_node(&status)
            }
        };
        let health = client
            .call(reqwest::Method::GET, "/v1/cluster/health", None)
            .await?;
        // A node from before the mesh has no such endpoint: no mesh section.
        let mesh = client
            .call(reqwest::Method::GET, "/v1/cluster/mesh", None)
            .await
            .unwrap_or(Value::Null);
        let out = super::table::render_status(members, &health, mesh, json)?;
        println!("{}", out.trim_end());
        Ok(())
    })
}

/// `weir apply -f FILE [--dry-run]`.
pub fn apply(conn: &ConnArgs, file: &Path, dry_run: bool) -> ExitCode {
    // A document file (from `weir get -o yaml`): create or update its
    // documents, delete nothing; the node checks them with the rest.
    let text = match crate::config::read_file(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match super::manifest::parse(&text) {
        Ok(Some(by_kind)) => {
            let body = json!({
                "documents": by_kind,
                "dry_run": dry_run,
                "upsert": true,
                "message": format!("apply {}", file.display()),
            });
            return run(async move { post_apply(conn, body, dry_run).await });
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("{}: {e:#}", file.display());
            return ExitCode::from(2);
        }
    }
    let cfg = match crate::compile::load_file(file) {
        Ok(c) => c,
        Err(errors) => {
            crate::start::print_problems(file, &errors);
            return ExitCode::from(2);
        }
    };
    // Consumers, subscriptions and global plugins are managed only when
    // the file has their key (see `docs::OPTIONAL_FILE_KINDS`).
    let keys: Vec<String> = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<serde_yaml_ng::Mapping>(&t).ok())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    run(async move {
        let docs = crate::docs::docs_of_config(&cfg)?;
        let mut by_kind = serde_json::Map::new();
        for k in crate::docs::FILE_KINDS {
            by_kind.insert(k.into(), json!([]));
        }
        for k in crate::docs::OPTIONAL_FILE_KINDS {
            if keys.iter().any(|x| x == k) {
                by_kind.insert(k.into(), json!([]));
            }
        }
        for (kind, _, v) in docs {
            if let Some(Value::Array(a)) = by_kind.get_mut(&kind) {
                a.push(v);
            }
        }
        let body = json!({
            "documents": by_kind,
            "dry_run": dry_run,
            "message": format!("apply {}", file.display()),
        });
        post_apply(conn, body, dry_run).await
    })
}

/// Sends an apply request and prints its plan.
async fn post_apply(conn: &ConnArgs, body: Value, dry_run: bool) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    let r = client
        .call(reqwest::Method::POST, "/v1/apply", Some(body))
        .await?;
    let plan = r["plan"].as_array().cloned().unwrap_or_default();
    if plan.is_empty() {
        println!("no changes (revision {})", r["revision"]);
        return Ok(());
    }
    for s in &plan {
        let sign = match s["action"].as_str() {
            Some("create") => "+",
            Some("delete") => "-",
            _ => "~",
        };
        println!(
            "{sign} {} {}/{}",
            s["action"].as_str().unwrap_or(""),
            s["kind"].as_str().unwrap_or(""),
            s["id"].as_str().unwrap_or("")
        );
    }
    if dry_run {
        println!("dry run: {} change(s) not applied", plan.len());
    } else {
        println!(
            "applied {} change(s) as revision {}",
            plan.len(),
            r["revision"]
        );
    }
    Ok(())
}

fn check_kind(kind: &str) -> anyhow::Result<()> {
    if !crate::docs::is_kind(kind) {
        bail!("no kind `{kind}`; kinds: {}", crate::docs::KINDS.join(", "));
    }
    Ok(())
}

/// `weir get KIND [ID] [-o FORMAT]`.
pub fn get(conn: &ConnArgs, kind: &str, id: Option<&str>, output: Output) -> ExitCode {
    run(async move {
        check_kind(kind)?;
        let client = Client::new(conn)?;
        let items: Vec<Value> = match id {
            Some(id) => vec![
                client
                    .call(reqwest::Method::GET, &format!("/v1/{kind}/{id}"), None)
                    .await?,
            ],
            None => {
                let mut all = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let q = match &after {
                        Some(a) => format!("/v1/{kind}?limit=1000&after={a}"),
                        None => format!("/v1/{kind}?limit=1000"),
                    };
                    let page = client.call(reqwest::Method::GET, &q, None).await?;
                    all.extend(page["items"].as_array().cloned().unwrap_or_default());
                    match page["next"].as_str() {
                        Some(n) => after = Some(n.to_string()),
                        None => break,
                    }
                }
                all
            }
        };
        let values: Vec<&Value> = items.iter().map(|d| &d["value"]).collect();
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&values)?),
            Output::Yaml => print!("{}", super::manifest::to_yaml(kind, &values)?),
            Output::Table => print!("{}", super::table::documents(&items)),
        }
        Ok(())
    })
}

/// `weir delete KIND ID`.
pub fn delete(conn: &ConnArgs, kind: &str, id: &str) -> ExitCode {
    run(async move {
        check_kind(kind)?;
        let r = Client::new(conn)?
            .call(reqwest::Method::DELETE, &format!("/v1/{kind}/{id}"), None)
            .await?;
        println!("deleted {kind}/{id} (revision {})", r["revision"]);
        Ok(())
    })
}

/// `weir revisions`.
pub fn revisions(conn: &ConnArgs, after: u64) -> ExitCode {
    run(async move {
        let r = Client::new(conn)?
            .call(
                reqwest::Method::GET,
                &format!("/v1/revisions?after={after}&limit=1000"),
                None,
            )
            .await?;
        let records = r["items"].as_array().cloned().unwrap_or_default();
        print!("{}", super::table::revisions(&records));
        Ok(())
    })
}

/// `weir rollback N`.
pub fn rollback(conn: &ConnArgs, revision: u64) -> ExitCode {
    run(async move {
        let r = Client::new(conn)?
            .call(
                reqwest::Method::POST,
                &format!("/v1/rollback/{revision}"),
                None,
            )
            .await?;
        println!(
            "rolled back to the state of revision {revision}: {} (revision {})",
            r["outcome"].as_str().unwrap_or(""),
            r["revision"]
        );
        Ok(())
    })
}

/// `weir cluster store [--json]`.
pub fn cluster_store(conn: &ConnArgs, json: bool) -> ExitCode {
    run(async move {
        let r = Client::new(conn)?
            .call(reqwest::Method::GET, "/v1/status", None)
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&r["cluster"])?);
        } else {
            print!("{}", super::table::store(&r));
        }
        // Stored documents that block writes (ADR 0027), on stderr so the
        // output above stays machine-readable.
        if let Some(ps) = r["config"]["stored_problems"]
            .as_array()
            .filter(|p| !p.is_empty())
        {
            eprintln!(
                "writes are refused: the store holds documents that are not valid (fix them: docs/raft.md, \"Upgrading\"):"
            );
            for p in ps {
                eprintln!(
                    "  {}/{} {}: {}",
                    p["kind"].as_str().unwrap_or_default(),
                    p["id"].as_str().unwrap_or_default(),
                    p["pointer"].as_str().unwrap_or_default(),
                    p["reason"].as_str().unwrap_or_default()
                );
            }
        }
        Ok(())
    })
}
