//! File mode of `weir serve`: the config file is the config. It is
//! watched and hot reloaded (`reload`), and the admin API is read-only.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::{AbortOnDrop, start_cluster, start_telemetry, wait_for_signal, write_ready_file};
use crate::config::Config;
use crate::server::Server;
use crate::snapshot::State;

/// Runs a node whose config is `cfg`, reloaded from `config_path`.
pub(crate) async fn serve(
    cfg: Config,
    config_path: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    overrides: crate::reload::Overrides,
) -> anyhow::Result<()> {
    let mut cfg = cfg;
    let telemetry = start_telemetry(&mut cfg)?;
    // The one compile of the file: its errors are the file's problems.
    let state = State::with_telemetry(&cfg, telemetry.clone()).map_err(anyhow::Error::new)?;
    let mut server = Server::bind(state.clone(), config_path.clone())?;
    let bound = server.bound()?;
    let (cluster, _health) = start_cluster(&cfg, &mut server, bound, &state).await?;

    let _echo = match cfg.settings.echo_listen {
        Some(addr) => {
            let l = crate::server::bind(addr).map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} (settings.echo_listen): {e}")
            })?;
            tracing::info!(addr = %l.local_addr()?, "built-in echo upstream listening");
            Some(AbortOnDrop(tokio::spawn(crate::echo::serve(
                l,
                Arc::from("echo"),
            ))))
        }
        None => None,
    };

    let _watch = match &config_path {
        Some(p) => Some(crate::reload::watch(state.clone(), p.clone(), overrides)?),
        None => None,
    };

    tracing::info!(
        node_id = state.telemetry().node_id(),
        proxy = %bound.proxy,
        admin = %bound.admin,
        routes = state.load().router.len(),
        "weir is serving ({} mode, {}): config from the file",
        crate::admin::mode_name(false),
        super::store::membership_words(cluster.as_deref())
    );
    if let Some(path) = &ready_file {
        write_ready_file(path, bound.proxy, bound.admin, cluster.as_deref())?;
    }

    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        // Peers stop routing to us first, then we drain.
        if let Some(c) = &cluster {
            c.leave().await;
        }
        let _ = tx.send(true);
    });
    server.run(rx).await;
    // Lines and spans of the last requests, then the exporters' threads.
    let drain = cfg.settings.drain_timeout;
    tokio::task::spawn_blocking(move || telemetry.shutdown(drain))
        .await
        .ok();
    tracing::info!("stopped");
    Ok(())
}
