//! The deployment files in `deploy/`: every `weir serve` command line and
//! environment they hold (Dockerfile, compose, Kubernetes, systemd) passes
//! `weir serve --check`; the compose file passes `docker-compose config`;
//! each rendered Kubernetes overlay passes `kubernetes-validate --strict`;
//! the image's health probe tells a ready node from a closed port.
//!
//! The tools are run for real. A missing one fails the test with how to
//! install it (`scripts/test` installs them).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::weir_bin;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

fn repo(p: &str) -> PathBuf {
    Path::new(ROOT).join(p)
}

/// The path of `tool`, or a failure saying how to install it.
fn tool(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: {install} (./scripts/test installs it)")
        })
}

fn docker_compose() -> PathBuf {
    tool(
        "docker-compose",
        "install Debian's docker-compose (`apt-get install docker-compose`)",
    )
}

/// `cmd`'s stdout; a failure shows its stderr.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `weir serve` invocation found in a deployment file, with container
/// paths mapped onto files of this checkout (or of a temp dir).
struct Invocation {
    origin: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// (path inside the container, path here), longest first.
    paths: Vec<(String, PathBuf)>,
}

impl Invocation {
    fn new(origin: impl Into<String>) -> Invocation {
        Invocation {
            origin: origin.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            paths: Vec::new(),
        }
    }

    fn map(&self, v: &str) -> String {
        let mut paths: Vec<_> = self.paths.iter().collect();
        paths.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (inside, here) in paths {
            if v == inside {
                return here.display().to_string();
            }
            if let Some(rest) = v.strip_prefix(&format!("{inside}/")) {
                return here.join(rest).display().to_string();
            }
        }
        v.to_string()
    }

    /// Runs `weir serve --check` with exactly these args and environment
    /// and asserts it is satisfied.
    fn check(&self) -> String {
        assert_eq!(
            self.args.first().map(String::as_str),
            Some("serve"),
            "{}: not a serve command: {:?}",
            self.origin,
            self.args
        );
        let mut cmd = Command::new(weir_bin());
        cmd.env_clear()
            .arg("serve")
            .arg("--check")
            .args(self.args[1..].iter().map(|a| self.map(a)))
            .envs(self.env.iter().map(|(k, v)| (k, self.map(v))));
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: `weir serve --check` refused {:?}:\n{stdout}\n{stderr}",
            self.origin,
            self.args
        );
        assert!(stdout.contains("weir serve --check: ok"), "{stdout}");
        stdout.into_owned()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
    }
}

// ---- container image --------------------------------------------------

/// The JSON array of the last top-level `INSTR [...]` line.
fn dockerfile_array(text: &str, instr: &str) -> Vec<String> {
    let line = text
        .lines()
        .rfind(|l| l.starts_with(&format!("{instr} [")))
        .unwrap_or_else(|| panic!("deploy/Dockerfile has no exec-form {instr}"));
    serde_json::from_str(&line[instr.len() + 1..])
        .unwrap_or_else(|e| panic!("deploy/Dockerfile {instr}: {e}"))
}

#[test]
fn the_dockerfile_command_passes_serve_check() {
    let text = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    assert_eq!(
        dockerfile_array(&text, "ENTRYPOINT"),
        ["/usr/local/bin/weir"]
    );
    let mut inv = Invocation::new("deploy/Dockerfile CMD");
    inv.args = dockerfile_array(&text, "CMD");
    let data = tempfile::tempdir().unwrap();
    inv.paths
        .push(("/var/lib/weir".into(), data.path().join("data")));
    let plan = inv.check();
    assert!(plan.contains("admin: listen on 127.0.0.1:9180"), "{plan}");
    // The runtime stage runs as the unprivileged user and probes readiness.
    let runtime = &text[text.rfind("\nFROM ").unwrap()..];
    assert!(runtime.contains("\nUSER 10001:10001\n"), "{runtime}");
    assert!(
        runtime.contains("HEALTHCHECK") && runtime.contains("CMD [\"/usr/local/bin/weir-ready\"]"),
        "{runtime}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_health_probe_tells_ready_from_closed() {
    let bash = tool("bash", "install bash (`apt-get install bash`)");
    let probe = repo("deploy/docker/weir-ready");
    let gw = common::gateway("").await;
    let admin = gw.admin_addr().to_string();
    let status = Command::new(&bash)
        .arg(&probe)
        .arg(&admin)
        .status()
        .unwrap();
    assert!(status.success(), "probe of ready {admin}: {status}");
    // Only the port, as the HEALTHCHECK gives it through HEALTHCHECK_PORT.
    let port = admin.rsplit_once(':').unwrap().1;
    let status = Command::new(&bash)
        .arg(&probe)
        .env("HEALTHCHECK_PORT", port)
        .status()
        .unwrap();
    assert!(status.success(), "probe of port {port}: {status}");

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let out = Command::new(&bash)
        .arg(&probe)
        .arg(addr.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success(), "probe of closed {addr} succeeded");
    // The proxy port answers HTTP, but not 200 on /v1/ready.
    let proxy = gw.proxy_addr().to_string();
    let out = Command::new(&bash)
        .arg(&probe)
        .arg(&proxy)
        .output()
        .unwrap();
    assert!(!out.status.success(), "probe of the proxy port succeeded");
}

// ---- compose ------------------------------------------------------------

fn compose_config() -> Value {
    let file = repo("deploy/compose/docker-compose.yml");
    let out = run_ok(
        Command::new(docker_compose())
            .arg("-f")
            .arg(&file)
            .arg("config"),
    );
    serde_yaml_ng::from_str(&out).unwrap()
}

#[test]
fn the_compose_file_passes_docker_compose_config() {
    let cfg = compose_config();
    let services = cfg["services"].as_mapping().unwrap();
    let names: Vec<String> = services.keys().map(scalar).collect();
    for want in [
        "weir-eu-0",
        "weir-eu-1",
        "weir-us-0",
        "weir-us-1",
        "weir-ap-0",
        "weir-ap-1",
        "wan-eu",
        "wan-us",
        "wan-ap",
        "echo-eu",
        "redis",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(names.iter().any(|n| n == want), "no `{want}` in {names:?}");
    }
    // What the `seed` service applies is a valid config.
    run_ok(
        Command::new(weir_bin())
            .args(["validate", "-f"])
            .arg(repo("deploy/compose/routes.yaml")),
    );
    // Each WAN proxy's file is one weir-faultproxy runs.
    for r in ["eu", "us", "ap"] {
        let text = std::fs::read_to_string(repo(&format!("deploy/compose/wan/{r}.json"))).unwrap();
        let file = weir_faultproxy::file::parse(&text)
            .unwrap_or_else(|e| panic!("deploy/compose/wan/{r}.json: {e}"));
        assert_eq!(file.proxies.len(), 6, "{r}");
        assert!(file.proxies.iter().all(|p| !p.toxics.is_empty()), "{r}");
    }
}

#[test]
fn every_compose_node_passes_serve_check() {
    let cfg = compose_config();
    let mut nodes = 0;
    for (name, svc) in cfg["services"].as_mapping().unwrap() {
        let name = scalar(name);
        let command = strings(&svc["command"]);
        // Services on the image's entrypoint (`weir`) that run `serve`.
        if !svc["entrypoint"].is_null() || command.first().map(String::as_str) != Some("serve") {
            continue;
        }
        let mut inv = Invocation::new(format!("compose service {name}"));
        inv.args = command;
        if let Some(env) = svc["environment"].as_mapping() {
            for (k, v) in env {
                inv.env.insert(scalar(k), scalar(v));
            }
        }
        for v in strings(&svc["volumes"]) {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            if src.starts_with('/') {
                inv.paths.push((dst.to_string(), PathBuf::from(src)));
            }
        }
        for s in svc["secrets"].as_sequence().into_iter().flatten() {
            let source = match s {
                Value::String(s) => s.clone(),
                m => scalar(&m["source"]),
            };
            let file = scalar(&cfg["secrets"][source.as_str()]["file"]);
            inv.paths
                .push((format!("/run/secrets/{source}"), PathBuf::from(file)));
        }
        let data = tempfile::tempdir().unwrap();
        inv.paths
            .push(("/var/lib/weir".into(), data.path().join("data")));
        let plan = inv.check();
        assert!(plan.contains("bootstrap-expect 6"), "{name}: {plan}");
        assert!(plan.contains("timing wan"), "{name}: {plan}");
        assert!(plan.contains("cluster secret from"), "{name}: {plan}");
        nodes += 1;
    }
    assert_eq!(nodes, 6, "six weir nodes in the compose file");
}

// ---- Kubernetes ---------------------------------------------------------

fn kustomize(region: &str) -> String {
    let kubectl = tool(
        "kubectl",
        "install Debian's kubernetes-client (`apt-get install kubernetes-client`)",
    );
    run_ok(
        Command::new(kubectl)
            .arg("kustomize")
            .arg(repo(&format!("deploy/k8s/overlays/{region}"))),
    )
}

fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect()
}

#[test]
fn each_rendered_overlay_passes_kubernetes_validate() {
    let validate = tool(
        "kubernetes-validate",
        "install it from PyPI (`pip install kubernetes-validate`)",
    );
    for region in REGIONS {
        let rendered = kustomize(region);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(format!("{region}.yaml"));
        std::fs::write(&f, &rendered).unwrap();
        run_ok(
            Command::new(&validate)
                .args(["--strict", "--quiet"])
                .arg(&f),
        );
        let kinds: Vec<String> = documents(&rendered)
            .iter()
            .map(|d| scalar(&d["kind"]))
            .collect();
        for want in [
            "Namespace",
            "ConfigMap",
            "Secret",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
        ] {
            assert!(kinds.iter().any(|k| k == want), "{region}: no {want}");
        }
        // What validate cannot see: a bogus field is refused, so strict
        // mode is on.
        let bogus = rendered.replacen(
            "  serviceName: weir-peers",
            "  serviceName: weir-peers\n  bogusField: 1",
            1,
        );
        assert_ne!(bogus, rendered);
        std::fs::write(&f, &bogus).unwrap();
        let out = Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "kubernetes-validate took a bogus field"
        );
    }
}

/// Expands `$(VAR)` as the kubelet does; an unknown one stays as written.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find(')') {
            Some(j) => {
                let var = &rest[i + 2..i + 2 + j];
                match env.get(var) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 3 + j]),
                }
                rest = &rest[i + 3 + j..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn every_kubernetes_node_passes_serve_check() {
    for region in REGIONS {
        let docs = documents(&kustomize(region));
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| scalar(&d["kind"]) == kind && scalar(&d["metadata"]["name"]) == name)
                .unwrap_or_else(|| panic!("{region}: no {kind} {name}"))
                .clone()
        };
        let sts = find("StatefulSet", "weir");
        let namespace = scalar(&sts["metadata"]["namespace"]);
        let pod = &sts["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let dir = tempfile::tempdir().unwrap();

        // The pod's environment, as the kubelet builds it for weir-0.
        let mut env = BTreeMap::new();
        for e in container["env"].as_sequence().unwrap() {
            let name = scalar(&e["name"]);
            let value = if let Some(v) = e.get("value") {
                expand(&scalar(v), &env)
            } else if let Some(f) = e["valueFrom"].get("fieldRef") {
                match scalar(&f["fieldPath"]).as_str() {
                    "metadata.name" => "weir-0".into(),
                    "metadata.namespace" => namespace.clone(),
                    "status.podIP" => "10.12.0.7".into(),
                    other => panic!("{region}: env {name} from unexpected field {other}"),
                }
            } else if let Some(s) = e["valueFrom"].get("secretKeyRef") {
                let secret = find("Secret", &scalar(&s["name"]));
                scalar(&secret["stringData"][scalar(&s["key"]).as_str()])
            } else {
                panic!("{region}: env {name} has no value this test knows")
            };
            env.insert(name, value);
        }

        // Volumes: ConfigMap and Secret files written where the pod sees them.
        let mut inv = Invocation::new(format!("k8s overlay {region}"));
        let volumes = pod["volumes"].as_sequence().unwrap();
        for m in container["volumeMounts"].as_sequence().unwrap() {
            let mount = scalar(&m["mountPath"]);
            let vol = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .or_else(|| (scalar(&m["name"]) == "data").then_some(&Value::Null));
            let here = dir.path().join(scalar(&m["name"]));
            match vol {
                Some(v) if v.get("configMap").is_some() => {
                    let cm = find("ConfigMap", &scalar(&v["configMap"]["name"]));
                    let key = scalar(&m["subPath"]);
                    std::fs::write(&here, scalar(&cm["data"][key.as_str()])).unwrap();
                }
                Some(v) if v.get("secret").is_some() => {
                    let secret = find("Secret", &scalar(&v["secret"]["secretName"]));
                    std::fs::create_dir_all(&here).unwrap();
                    for item in v["secret"]["items"].as_sequence().unwrap() {
                        let value = scalar(&secret["stringData"][scalar(&item["key"]).as_str()]);
                        std::fs::write(here.join(scalar(&item["path"])), value).unwrap();
                    }
                }
                // The data volume (a claim template): not opened by --check.
                _ => {}
            }
            inv.paths.push((mount, here));
        }
        inv.args = strings(&container["args"])
            .iter()
            .map(|a| expand(a, &env))
            .collect();
        for a in &inv.args {
            assert!(!a.contains("$("), "{region}: unexpanded {a}");
        }
        inv.env = env;
        let plan = inv.check();
        assert!(plan.contains(&format!("region `{region}`")), "{plan}");
        assert!(plan.contains("as node `weir-0`"), "{plan}");
        assert!(
            plan.contains(&format!(
                "advertised as weir-0.weir-peers.{namespace}.svc.cluster.local:9180"
            )),
            "{plan}"
        );
        assert!(plan.contains("admin keys: 1 (1 admin, 0 viewer)"), "{plan}");

        // Probes and the graceful stop.
        assert_eq!(
            scalar(&container["readinessProbe"]["httpGet"]["path"]),
            "/v1/ready"
        );
        assert_eq!(
            scalar(&container["livenessProbe"]["httpGet"]["path"]),
            "/v1/health"
        );
        assert!(container["lifecycle"]["preStop"].is_mapping(), "{region}");
    }
}

// ---- systemd ------------------------------------------------------------

#[test]
fn the_systemd_unit_passes_serve_check() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/weir.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/weir"));
    let mut inv = Invocation::new("deploy/systemd/weir.service");
    inv.args = words.map(str::to_string).collect();
    // The unit's own install steps copy the quickstart to /etc/weir/weir.yaml.
    inv.paths.push((
        "/etc/weir/weir.yaml".into(),
        repo("examples/quickstart.yaml"),
    ));
    // `--log-format` is global, given after the subcommand here.
    let plan = inv.check();
    assert!(plan.contains("mode: file"), "{plan}");
}
