//! The docs name the series `/metrics` serves: a real node (store mode,
//! gossip, mesh, access log, and routes with key-auth, limit-count and
//! proxy-cache) is driven through a cache hit, a 429 and a 401 and
//! scraped; every family it serves must be in the metric reference
//! (`docs/observability.md`), and every metric name any `docs/*.md`
//! mentions must be one it serves (with the labels it serves), or, for a
//! series this node has no reason to serve (Redis, a shared limit's
//! peers), one the code registers under that name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use weir_testsupport::raftnode::Node;
use weir_testsupport::{Origin, OriginScript, http_client};

use common::weir_bin;

/// Backticked names in the docs that are neither series nor labels of
/// `/metrics`: span attributes.
const NOT_METRICS: [&str; 1] = ["http_route"];

/// Family name → label names seen on its samples, from the text format.
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            out.entry(name.to_string()).or_default();
        }
    }
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let family = out
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned();
        if let Some(f) = family {
            let keys = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()));
            out.entry(f).or_default().extend(keys);
        }
    }
    out
}

/// Every `` `name` `` or `` `name{labels}` `` of a metric-like name in
/// `text`: (name, label names written in the braces).
fn mentions(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for span in text.split('`').skip(1).step_by(2) {
        let (name, braces) = span.split_once('{').unwrap_or((span, ""));
        let metric_like = ["weir_", "http_", "process_"]
            .iter()
            .any(|p| name.starts_with(p))
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !metric_like {
            continue;
        }
        let labels = braces
            .trim_end_matches('}')
            .split(',')
            .map(|l| l.split('=').next().unwrap_or_default().trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        out.push((name.to_string(), labels));
    }
    out
}

/// The Rust sources of the workspace, concatenated.
fn sources(root: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && p.file_name().is_some_and(|n| n != "target" && n != "tests") {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    for d in ["node/src", "cluster", "observability/src", "storage/src"] {
        walk(&root.join(d), &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_name_the_series_metrics_serves() -> anyhow::Result<()> {
    const KEY: &str = "metric-docs-key-77aa";
    let root_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir()?;
    let origin = Origin::start().await;
    origin.script(
        "/c",
        OriginScript::ok("cached", &[("cache-control", "max-age=60")]),
    );
    origin.script("/l", OriginScript::ok("limited", &[]));
    let file = tmp.path().join("weir.yaml");
    std::fs::write(
        &file,
        format!(
            "{}observability:\n  access_log: {{enabled: true, target: !file {}}}\n",
            common::verdict_routes(&origin.target(), KEY, ", scope: cluster"),
            tmp.path().join("access.log").display()
        ),
    )?;
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "metric-docs-cluster-secret-0123456789")?;
    let node = Node::start(
        weir_bin(),
        &tmp.path().join("n"),
        &[
            "--config",
            &file.to_string_lossy(),
            "--cluster-name",
            "docs",
            "--gossip-listen",
            "127.0.0.1:0",
            "--mesh-listen",
            "127.0.0.1:0",
            "--cluster-secret-file",
            &secret.to_string_lossy(),
        ],
    )
    .await?;
    weir_testsupport::wait_until(
        "the seeded routes are served",
        std::time::Duration::from_secs(30),
        || async { node.proxy_status("/c").await == Some(200) },
    )
    .await;
    let c = http_client();
    for (path, key, want) in [
        ("/c", None, 200),
        ("/l", Some(KEY), 200),
        ("/l", Some(KEY), 429),
        ("/l", None, 401),
    ] {
        let mut rb = c.get(format!("http://{}{path}", node.proxy));
        if let Some(k) = key {
            rb = rb.header("apikey", k);
        }
        let r = rb.send().await?;
        assert_eq!(r.status().as_u16(), want, "{path}");
        r.bytes().await?;
    }
    let text = c
        .get(format!("http://{}/metrics", node.admin))
        .send()
        .await?
        .text()
        .await?;
    let served = families(&text);
    let labels: BTreeSet<&String> = served.values().flatten().collect();

    // Every family served is in the reference.
    let reference = std::fs::read_to_string(root_dir.join("docs/observability.md"))?;
    let undocumented: Vec<&String> = served
        .keys()
        .filter(|f| {
            !reference.contains(&format!("`{f}`")) && !reference.contains(&format!("`{f}{{"))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/observability.md: {undocumented:?}"
    );

    // Every metric the docs name is served under that name, with those
    // labels, or registered under it by the code.
    let code = sources(root_dir);
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(root_dir.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "md") {
            continue;
        }
        let doc = std::fs::read_to_string(&path)?;
        let doc_name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        // Plugins and clustering exist: no page may say they do not.
        for l in doc.lines() {
            if l.contains("not exist yet") || l.contains("don't exist yet") {
                wrong.push(format!(
                    "{doc_name}: says something does not exist yet: {l}"
                ));
            }
        }
        for (name, named_labels) in mentions(&doc) {
            if NOT_METRICS.contains(&name.as_str()) || labels.contains(&name) {
                continue;
            }
            if let Some(has) = served.get(&name) {
                for l in &named_labels {
                    if !has.is_empty() && !has.contains(l) {
                        wrong.push(format!(
                            "{doc_name}: `{name}` has no label `{l}` (it has {has:?})"
                        ));
                    }
                }
                continue;
            }
            if served.contains_key(&format!("{name}_total")) {
                wrong.push(format!("{doc_name}: `{name}` is served as `{name}_total`"));
                continue;
            }
            let registered = code.contains(&format!("\"{name}\""))
                || name
                    .strip_suffix("_total")
                    .is_some_and(|n| code.contains(&format!("\"{n}\"")));
            if !registered {
                wrong.push(format!("{doc_name}: `{name}` is not a series weir has"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}
