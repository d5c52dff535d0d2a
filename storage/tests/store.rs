//! The redb store against openraft's own storage test suite, plus the
//! config semantics weir adds: revisions, preconditions, validation,
//! rollback, format version, durability across reopen.

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, LogId, StorageError, Vote};
use weir_storage::{
    Batch, LogStore, NodeId, Op, Problem, StateMachine, Store, StoreError, TypeConfig, Validator,
    WriteOutcome,
};

fn accept_all() -> Validator {
    Arc::new(|_| Vec::new())
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        })?;
        let store = Store::open(dir.path()).map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let sm = store.state_machine(accept_all()).map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok((dir, store.log_store(), sm))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(Builder).map_err(|e| anyhow::anyhow!("{e}"))
}

fn put(kind: &str, id: &str, v: serde_json::Value) -> Op {
    Op::Put {
        kind: kind.into(),
        id: id.into(),
        value: v,
        expect: None,
    }
}

fn batch(ops: Vec<Op>) -> Batch {
    Batch {
        ops,
        author: "test".into(),
        message: String::new(),
        at_ms: 1,
    }
}

fn entry(index: u64, b: Batch) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(b),
    }
}

/// Refuses a route whose `upstream` names no upstream document.
fn upstream_refs() -> Validator {
    Arc::new(|docs| {
        docs.values()
            .filter(|d| d.kind == "routes")
            .filter_map(|d| {
                let up = d.value.get("upstream")?.as_str()?;
                (!docs.contains_key(&("upstreams".to_string(), up.to_string()))).then(|| Problem {
                    kind: d.kind.clone(),
                    id: d.id.clone(),
                    pointer: "/upstream".into(),
                    reason: format!("no upstream `{up}`"),
                })
            })
            .collect()
    })
}

#[tokio::test]
async fn batches_get_revisions_preconditions_and_validation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let mut sm = store.state_machine(upstream_refs())?;
    let view = sm.view();
    let out = sm
        .apply([
            entry(
                1,
                batch(vec![
                    put("upstreams", "u", serde_json::json!({"id": "u"})),
                    put(
                        "routes",
                        "r",
                        serde_json::json!({"id": "r", "upstream": "u"}),
                    ),
                ]),
            ),
            // The same again: nothing changes, no revision used.
            entry(
                2,
                batch(vec![put("upstreams", "u", serde_json::json!({"id": "u"}))]),
            ),
            // A dangling reference: refused as a whole.
            entry(
                3,
                batch(vec![
                    put("upstreams", "v", serde_json::json!({"id": "v"})),
                    put(
                        "routes",
                        "x",
                        serde_json::json!({"id": "x", "upstream": "nope"}),
                    ),
                ]),
            ),
            // Wrong precondition: refused.
            entry(
                4,
                batch(vec![Op::Delete {
                    kind: "routes".into(),
                    id: "r".into(),
                    expect: Some(7),
                }]),
            ),
        ])
        .await?;
    assert_eq!(
        out[0],
        WriteOutcome::Applied {
            revision: 1,
            changed: 2
        }
    );
    assert_eq!(out[1], WriteOutcome::Unchanged { revision: 1 });
    assert!(
        matches!(&out[2], WriteOutcome::Rejected { problems } if problems.len() == 1 && problems[0].id == "x" && problems[0].pointer == "/upstream"),
        "{:?}",
        out[2]
    );
    assert_eq!(
        out[3],
        WriteOutcome::Conflict {
            kind: "routes".into(),
            id: "r".into(),
            expected: 7,
            current: 1
        }
    );
    assert_eq!(view.revision(), 1);
    assert!(
        view.get("upstreams", "v").is_none(),
        "a refused batch stored nothing"
    );

    // Delete with the right precondition, then roll back to revision 1.
    let out = sm
        .apply([
            entry(
                5,
                batch(vec![Op::Delete {
                    kind: "routes".into(),
                    id: "r".into(),
                    expect: Some(1),
                }]),
            ),
            entry(6, batch(vec![Op::RollbackTo { revision: 1 }])),
            entry(7, batch(vec![Op::RollbackTo { revision: 99 }])),
        ])
        .await?;
    assert!(matches!(out[0], WriteOutcome::Applied { revision: 2, .. }));
    assert!(matches!(out[1], WriteOutcome::Applied { revision: 3, .. }));
    assert!(matches!(out[2], WriteOutcome::Rejected { .. }));
    let r = view
        .get("routes", "r")
        .ok_or_else(|| anyhow::anyhow!("route back"))?;
    assert_eq!(r.revision, 3);
    assert_eq!(r.created, 3);
    let h = view.history(0, 100)?;
    assert_eq!(h.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(h[0].author, "test");

    // Everything survives a reopen.
    drop(sm);
    drop(view);
    drop(store);
    let store = Store::open(dir.path())?;
    let mut sm = store.state_machine(upstream_refs())?;
    assert_eq!(sm.view().revision(), 3);
    assert_eq!(sm.view().docs().len(), 2);
    let (applied, _) = sm.applied_state().await?;
    assert_eq!(applied.map(|l| l.index), Some(7));
    Ok(())
}

#[tokio::test]
async fn vote_and_log_survive_reopen_and_snapshots_round_trip() -> anyhow::Result<()> {
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir()?;
    {
        let store = Store::open(dir.path())?;
        let mut log = store.log_store();
        log.save_vote(&Vote::new(3, 2)).await?;
        let mut sm = store.state_machine(accept_all())?;
        sm.apply([entry(
            1,
            batch(vec![put("routes", "a", serde_json::json!({"id": "a"}))]),
        )])
        .await?;
        let built = sm.get_snapshot_builder().await.build_snapshot().await?;
        // Building marks the point; the data is made when a follower asks
        // for the current snapshot, of the same state here.
        let snap = sm.get_current_snapshot().await?.expect("a snapshot");
        assert_eq!(snap.meta, built.meta);
        // Install it in a fresh store: same documents, same revision, same
        // history.
        let other = tempfile::tempdir()?;
        let s2 = Store::open(other.path())?;
        let mut sm2 = s2.state_machine(accept_all())?;
        sm2.install_snapshot(&snap.meta, snap.snapshot).await?;
        assert_eq!(sm2.view().revision(), 1);
        assert!(sm2.view().get("routes", "a").is_some());
        assert_eq!(sm2.view().history(0, 10)?.len(), 1);
        assert!(sm2.get_current_snapshot().await?.is_some());
    }
    let store = Store::open(dir.path())?;
    let mut log = store.log_store();
    assert_eq!(log.read_vote().await?, Some(Vote::new(3, 2)));
    Ok(())
}

/// A snapshot carries the last `ROLLBACK_WINDOW` revisions and the state
/// before them; a node that installed it answers every rollback exactly as
/// the node that built it (the window is the same everywhere).
#[tokio::test]
async fn snapshots_carry_a_bounded_history_and_rollbacks_agree() -> anyhow::Result<()> {
    use openraft::RaftSnapshotBuilder;
    use weir_storage::ROLLBACK_WINDOW;
    let total = ROLLBACK_WINDOW + 5;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let mut sm = store.state_machine(accept_all())?;
    // Revision n sets `a` to n; `b` is written once, at revision 1.
    let mut entries = vec![entry(
        1,
        batch(vec![
            put("routes", "a", serde_json::json!({"n": 1})),
            put("routes", "b", serde_json::json!({"n": 1})),
        ]),
    )];
    for n in 2..=total {
        entries.push(entry(
            n,
            batch(vec![put("routes", "a", serde_json::json!({"n": n}))]),
        ));
    }
    sm.apply(entries).await?;
    assert_eq!(sm.view().revision(), total);
    // An older version's snapshot file is removed when the store opens.
    drop(sm);
    drop(store);
    let old_file = dir.path().join(weir_storage::SNAPSHOT_FILE);
    std::fs::write(&old_file, b"left by an older version")?;
    let store = Store::open(dir.path())?;
    let mut sm = store.state_machine(accept_all())?;
    assert!(!old_file.exists());
    let built = sm.get_snapshot_builder().await.build_snapshot().await?;
    let snap = sm.get_current_snapshot().await?.expect("a snapshot");
    assert_eq!(snap.meta, built.meta);

    let other = tempfile::tempdir()?;
    let s2 = Store::open(other.path())?;
    let mut sm2 = s2.state_machine(accept_all())?;
    sm2.install_snapshot(&snap.meta, snap.snapshot).await?;
    let h = sm2.view().history(0, usize::MAX)?;
    assert_eq!(h.len() as u64, ROLLBACK_WINDOW);
    assert_eq!(h[0].revision, total - ROLLBACK_WINDOW + 1);

    let oldest = total - ROLLBACK_WINDOW;
    for (i, target) in [oldest, oldest - 1].into_iter().enumerate() {
        let index = total + 1 + i as u64;
        let rb = || {
            vec![entry(
                index,
                batch(vec![Op::RollbackTo { revision: target }]),
            )]
        };
        let here = sm.apply(rb()).await?;
        let there = sm2.apply(rb()).await?;
        assert_eq!(here, there, "rollback to {target}");
        if target == oldest {
            assert!(matches!(here[0], WriteOutcome::Applied { .. }), "{here:?}");
            for view in [sm.view(), sm2.view()] {
                let a = view.get("routes", "a").expect("a");
                assert_eq!(a.value, serde_json::json!({"n": oldest}));
                assert!(view.get("routes", "b").is_some());
            }
        } else {
            let WriteOutcome::Rejected { problems } = &here[0] else {
                panic!("rollback past the window accepted: {here:?}");
            };
            assert!(problems[0].reason.contains("too old"), "{problems:?}");
        }
    }
    Ok(())
}

#[test]
fn unknown_format_version_is_refused_and_left_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    drop(Store::open(dir.path())?);
    // Pretend a future weir wrote this file.
    {
        let db = redb::Database::create(dir.path().join(weir_storage::DATA_FILE))?;
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))?;
            t.insert("format_version", 9u32.to_le_bytes().as_slice())?;
        }
        tx.commit()?;
    }
    let err = Store::open(dir.path())
        .err()
        .ok_or_else(|| anyhow::anyhow!("opened"))?;
    assert!(matches!(
        err,
        StoreError::UnknownFormat {
            found: 9,
            expected: 1,
            ..
        }
    ));
    assert!(err.to_string().contains("format version 9"), "{err}");
    // Still version 9: nothing was rewritten.
    let db = redb::Database::create(dir.path().join(weir_storage::DATA_FILE))?;
    let tx = redb::ReadableDatabase::begin_read(&db)?;
    let t = tx.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))?;
    let v = t
        .get("format_version")?
        .ok_or_else(|| anyhow::anyhow!("version gone"))?;
    assert_eq!(v.value(), 9u32.to_le_bytes().as_slice());
    Ok(())
}

#[test]
fn a_second_process_on_the_same_dir_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = Store::open(dir.path())?;
    let err = Store::open(dir.path())
        .err()
        .ok_or_else(|| anyhow::anyhow!("opened twice"))?;
    assert!(err.to_string().contains("already in use"), "{err}");
    Ok(())
}
