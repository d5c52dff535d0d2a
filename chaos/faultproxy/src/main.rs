//! `weir-faultproxy PROXIES.json`: runs the fault proxies a proxy file
//! lists (see `weir_faultproxy::file`) and their control API until
//! SIGTERM or Ctrl-C. `--check` reads the file and exits: 0 when it is
//! valid, 2 when not. Upstream names are resolved at start and every few
//! seconds after, so a proxy follows a container that comes back on
//! another address. This is what `deploy/compose` runs between regions.

use std::process::ExitCode;
use std::time::Duration;

use weir_faultproxy::file::{ProxyFile, ProxySpec};
use weir_faultproxy::{ControlServer, Protocol, Proxy, ProxyConfig, ProxyHandle, Registry};

const USAGE: &str = "usage: weir-faultproxy [--check] PROXIES.json";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (check, path) = match args.as_slice() {
        [flag, path] if flag == "--check" => (true, path),
        [path] if !path.starts_with('-') => (false, path),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let file = match std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read it: {e}"))
        .and_then(|t| weir_faultproxy::file::parse(&t).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    if check {
        println!("{path}: ok ({} proxies)", file.proxies.len());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-faultproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-faultproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(file: ProxyFile) -> Result<(), String> {
    let registry = Registry::new();
    let mut running = Vec::new();
    for spec in &file.proxies {
        let cfg = ProxyConfig::new(spec.name.clone(), spec.listen, None).seed(spec.seed);
        let proxy = match spec.protocol {
            Protocol::Tcp => Proxy::tcp(cfg).await,
            Protocol::Udp => Proxy::udp(cfg).await,
        }
        .map_err(|e| format!("proxy `{}` on {}: {e}", spec.name, spec.listen))?;
        let h = proxy.handle();
        for t in &spec.toxics {
            h.add_toxic(t.clone())
                .map_err(|e| format!("proxy `{}`: {e}", spec.name))?;
        }
        registry.add(h.clone());
        eprintln!(
            "weir-faultproxy: {} `{}` on {} to {}",
            spec.protocol.as_str(),
            spec.name,
            proxy.listen_addr(),
            spec.upstream
        );
        tokio::spawn(follow_upstream(h, spec.clone()));
        running.push(proxy);
    }
    let _control = match file.control {
        Some(addr) => {
            let c = ControlServer::start(registry, addr)
                .await
                .map_err(|e| format!("control API on {addr}: {e}"))?;
            eprintln!("weir-faultproxy: control API on {}", c.addr());
            Some(c)
        }
        None => None,
    };
    wait_for_signal().await;
    drop(running);
    Ok(())
}

/// Keeps the proxy's upstream on what its name resolves to now. Until the
/// name resolves, the proxy drops traffic (counted as `no_upstream`).
async fn follow_upstream(h: ProxyHandle, spec: ProxySpec) {
    loop {
        match tokio::net::lookup_host(spec.upstream.as_str()).await {
            Ok(mut addrs) => {
                if let Some(a) = addrs.next()
                    && h.upstream() != Some(a)
                {
                    eprintln!(
                        "weir-faultproxy: `{}` forwards to {a} ({})",
                        spec.name, spec.upstream
                    );
                    h.set_upstream(a);
                }
            }
            Err(e) => eprintln!(
                "weir-faultproxy: `{}`: cannot resolve {}: {e}",
                spec.name, spec.upstream
            ),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
