//! The store follower: in store mode, publishes the route snapshot of the
//! stored documents (on top of the file's settings) whenever the store's
//! revision moves, and records the revision the running snapshot was
//! built from and whether the stored documents are valid (`/v1/status`,
//! and in gossip for `weir cluster status`).
//! The snapshot was compiled by the store's validator when the write was
//! applied; the follower compiles only when it was not. The first snapshot at start is built by
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
    publish_revision(&ctx).await;
    loop {
        let (docs, revision) = kv.view().docs_at();
        if revision != ctx.applied_revision.load(Ordering::Relaxed) {
            let st = ctx.state.clone();
            let base = base.clone();
            let held = ctx.stored_problems.clone();
            let built = tokio::task::spawn_blocking(move || {
                // The store's validator compiled these documents when the
                // write was applied; publishing serves that snapshot.
                let key = docs::DocsKey::of(&docs);
                let published = st.publish_prepared(
                    || {
                        let (cfg, problems) = docs::config_from_docs(&base, &docs);
                        if problems.is_empty() {
                            Ok(cfg)
                        } else {
                            Err(docs::located(problems))
                        }
                    },
                    key,
                );
                // Only a store that does not compile is checked again, to
                // say which documents block writes (`/v1/status`).
                match &published {
                    Ok(_) => held.record(revision, Vec::new()),
                    Err(_) => held.record(revision, crate::stored::check(&docs)),
                }
                published
            })
            .await;
            match built {
                Ok(Ok(generation)) => {
                    ctx.applied_revision.store(revision, Ordering::Relaxed);
                    publish_revision(&ctx).await;
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

/// Tells the other nodes, through gossip, which config revision this node
/// serves (`weir cluster status` shows it per member).
async fn publish_revision(ctx: &AdminCtx) {
    if let Some(c) = &ctx.cluster {
        let revision = ctx.applied_revision.load(Ordering::Relaxed);
        c.membership()
            .set_key(
                weir_cluster::membership::KEY_CONFIG_REVISION,
                &revision.to_string(),
            )
            .await;
    }
}
