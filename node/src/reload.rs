//! Hot reload of the config file.
//!
//! The file's directory is watched (editors and `mv` replace files, so
//! watching the file itself would lose track of it after the first save).
//! Events are debounced; each change re-reads the file, and a good config
//! is compiled and swapped in atomically. A bad one is logged with every
//! problem and the running config stays. `SIGHUP` forces a reload too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config;
use crate::snapshot::State;

/// Command-line settings that win over the file, on every reload as at
/// start.
pub type Overrides = Arc<dyn Fn(&mut config::Config) + Send + Sync>;

/// Reloads `path` into `state` once. Returns the new generation.
pub fn reload_once(
    state: &State,
    path: &Path,
    overrides: &Overrides,
) -> Result<u64, config::ConfigErrors> {
    let result = reload_inner(state, path, overrides);
    if let Some(m) = state.telemetry().metrics() {
        m.record_config_reload(result.is_ok());
    }
    result
}

fn reload_inner(
    state: &State,
    path: &Path,
    overrides: &Overrides,
) -> Result<u64, config::ConfigErrors> {
    // `apply` is the check and the build in one compile.
    let mut cfg = config::parse_file(path)?;
    overrides(&mut cfg);
    let old = state.load();
    if cfg.settings.listen != old.settings.listen
        || cfg.settings.admin_listen != old.settings.admin_listen
        || cfg.settings.workers != old.settings.workers
    {
        tracing::warn!(
            "settings.listen, settings.admin_listen and settings.workers change only on restart"
        );
    }
    if cfg.settings.admin_hosts != old.settings.admin_hosts {
        tracing::warn!("settings.admin_hosts changes only on restart");
    }
    if cfg.observability != old.observability {
        tracing::warn!("the observability section changes only on restart");
    }
    state.apply(&cfg).map_err(|mut e| {
        // The compile's problems get their place in the file too.
        if let Ok(src) = std::fs::read_to_string(path) {
            config::locate_problems(&src, &mut e);
        }
        e
    })
}

/// Watches `path` and reloads on change until the returned guard is
/// dropped.
pub fn watch(state: Arc<State>, path: PathBuf, overrides: Overrides) -> notify::Result<WatchGuard> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let file_name = path.file_name().map(|f| f.to_os_string());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let ev_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|f| f.to_os_string()) == file_name)
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            let _ = ev_tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;

    #[cfg(unix)]
    {
        let hup_tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                if hup_tx.send(()).is_err() {
                    break;
                }
            }
        });
    }

    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: an editor's save is several events.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let p = path.clone();
            let st = state.clone();
            let ov = overrides.clone();
            let result = tokio::task::spawn_blocking(move || reload_once(&st, &p, &ov)).await;
            match result {
                Ok(Ok(generation)) => {
                    tracing::info!(path = %path.display(), generation, "config reloaded")
                }
                Ok(Err(errors)) => {
                    for p in &errors.0 {
                        tracing::error!(path = %path.display(), problem = %p, "config rejected; keeping the running config");
                    }
                }
                Err(e) => tracing::error!(error = %e, "config reload task failed"),
            }
        }
    });
    Ok(WatchGuard {
        _watcher: watcher,
        task,
    })
}

/// Stops watching when dropped.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
