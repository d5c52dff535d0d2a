//! The store follower: in store mode, rebuilds the route snapshot from
//! the stored documents and the file's settings whenever the store's
//! revision moves, and records the revision the running snapshot was
//! built from (`/v1/status`). The first snapshot at start is built by
//! `store.rs`; the admin API only writes to the store.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::admin::AdminCtx;
use crate::config::Config;
use crate::docs;

/// Rebuilds the route snapshot whenever the store's revision moves, from
/// the documents and `base` (settings, observability). Runs until the
/// store goes away.
pub async fn follow_store(ctx: Arc<AdminCtx>, base: Arc<Config>) {
    let Some(kv) = ctx.store.clone() else { return };
    let mut rx = kv.view().subscribe();
    loop {
        let (docs, revision) = kv.view().docs_at();
        if revision != ctx.applied_revision.load(Ordering::Relaxed) {
            let st = ctx.state.clone();
            let base = base.clone();
            let built = tokio::task::spawn_blocking(move || {
                let (cfg, problems) = docs::config_from_docs(&base, &docs);
                if !problems.is_empty() {
                    return Err(format!("{problems:?}"));
                }
                st.apply(&cfg).map_err(|e| e.to_string())
            })
            .await;
            match built {
                Ok(Ok(generation)) => {
                    ctx.applied_revision.store(revision, Ordering::Relaxed);
                    tracing::info!(
                        revision,
                        generation,
                        "route snapshot rebuilt from the store"
                    );
                }
                Ok(Err(e)) => {
                    tracing::error!(revision, error = %e, "stored config does not compile; keeping the running snapshot")
                }
                Err(e) => tracing::error!(error = %e, "snapshot rebuild task failed"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
