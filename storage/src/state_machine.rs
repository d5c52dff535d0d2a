//! The config state machine: an ordered, versioned map of JSON documents.
//!
//! Applying a batch is deterministic: every node starts from the same
//! documents, checks the same preconditions, runs the same validator and so
//! reaches the same outcome and revision. A batch that fails anything
//! changes nothing and uses no revision.
//!
//! The live documents are kept in memory too (config is small; reads are
//! served from there) and published to watchers after the transaction that
//! stores them has committed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::db::{DOCS, HISTORY, SM, blocking, dec, enc};
use crate::error::StoreError;
use crate::types::{
    Action, Batch, Change, DocKey, Docs, Document, NodeId, Op, Problem, RevisionRecord, TypeConfig,
    WriteOutcome,
};

/// How many revisions back a rollback may reach, and so how much history
/// a snapshot carries. It decides whether a rollback is accepted, so every
/// node must use the same value: a constant, not a setting.
pub const ROLLBACK_WINDOW: u64 = 1000;

/// The documents as they were at `revision`, kept when a snapshot left
/// out the history before it (the starting point of [`state_at`]).
#[derive(Debug, Default, Serialize, Deserialize)]
struct HistoryBase {
    revision: u64,
    docs: Vec<(DocKey, serde_json::Value)>,
}

/// The stored [`HistoryBase`] (`sm/history_base`; none: history starts at
/// revision 0).
fn history_base(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<HistoryBase, StoreError> {
    match t.get("history_base")? {
        Some(v) => dec("sm/history_base", v.value()),
        None => Ok(HistoryBase::default()),
    }
}

/// Judges the documents a batch would leave behind: returns every problem
/// (none = accept). It must be deterministic.
pub type Validator = Arc<dyn Fn(&Docs) -> Vec<Problem> + Send + Sync>;

struct Kv {
    docs: Arc<Docs>,
    revision: u64,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

struct Shared {
    kv: RwLock<Kv>,
    db: Arc<Database>,
    revision_tx: watch::Sender<u64>,
}

/// A read handle on the applied config: cheap to clone, never blocks on
/// Raft.
#[derive(Clone)]
pub struct ConfigView {
    shared: Arc<Shared>,
}

impl ConfigView {
    fn kv(&self) -> std::sync::RwLockReadGuard<'_, Kv> {
        self.shared.kv.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision of the last applied change.
    pub fn revision(&self) -> u64 {
        self.kv().revision
    }

    /// Index of the last applied Raft entry.
    pub fn applied_index(&self) -> u64 {
        self.kv().last_applied.map_or(0, |l| l.index)
    }

    /// Every document, as of [`revision`](Self::revision).
    pub fn docs(&self) -> Arc<Docs> {
        self.kv().docs.clone()
    }

    /// The documents and the revision they are at, read together.
    pub fn docs_at(&self) -> (Arc<Docs>, u64) {
        let kv = self.kv();
        (kv.docs.clone(), kv.revision)
    }

    /// One document.
    pub fn get(&self, kind: &str, id: &str) -> Option<Arc<Document>> {
        self.kv()
            .docs
            .get(&(kind.to_string(), id.to_string()))
            .cloned()
    }

    /// Changes of the revision: the receiver sees each new revision (or
    /// the latest of several).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision_tx.subscribe()
    }

    /// History records with `revision > after`, oldest first, at most
    /// `limit`.
    pub fn history(&self, after: u64, limit: usize) -> Result<Vec<RevisionRecord>, StoreError> {
        let tx = self.shared.db.begin_read()?;
        let t = tx.open_table(HISTORY)?;
        let mut out = Vec::new();
        for item in t.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            out.push(dec(&format!("history/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// What `batch` would do now, without storing anything (a dry run of
    /// the same code the state machine runs).
    pub fn preview(
        &self,
        batch: &Batch,
        validator: &Validator,
    ) -> Result<WriteOutcome, StoreError> {
        let (docs, revision) = self.docs_at();
        let db = self.shared.db.clone();
        let at = |n: u64| {
            let tx = db.begin_read()?;
            state_at(
                &history_base(&tx.open_table(SM)?)?,
                &tx.open_table(HISTORY)?,
                n,
            )
        };
        Ok(compute(&docs, revision, batch, validator, &at)?.0)
    }
}

/// The state machine openraft drives.
#[derive(Clone)]
pub struct StateMachine {
    view: ConfigView,
    validator: Validator,
}

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    revision: u64,
    docs: Vec<Document>,
    /// The last [`ROLLBACK_WINDOW`] revisions (all, in snapshots built
    /// before the window existed).
    history: Vec<RevisionRecord>,
    /// The documents as they were before that history, when it does not
    /// start at revision 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<HistoryBase>,
}

impl StateMachine {
    pub(crate) fn open(
        db: Arc<Database>,
        old_snapshot_file: PathBuf,
        validator: Validator,
    ) -> Result<StateMachine, StoreError> {
        // Versions that built snapshots ahead of need kept the last one in
        // this file; nothing reads it now.
        match std::fs::remove_file(&old_snapshot_file) {
            Ok(()) => tracing::info!(
                file = %old_snapshot_file.display(),
                "removed the snapshot file of an older version"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %old_snapshot_file.display(),
                error = %e,
                "could not remove the snapshot file of an older version"
            ),
        }
        let tx = db.begin_read()?;
        let sm = tx.open_table(SM)?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(sm.get(key)?.map(|v| v.value().to_vec()))
        };
        let revision: u64 = match get("revision")? {
            Some(b) => dec("sm/revision", &b)?,
            None => 0,
        };
        let last_applied: Option<LogId<NodeId>> = match get("last_applied")? {
            Some(b) => dec("sm/last_applied", &b)?,
            None => None,
        };
        let membership = match get("membership")? {
            Some(b) => dec("sm/membership", &b)?,
            None => StoredMembership::default(),
        };
        let mut docs = Docs::new();
        let t = tx.open_table(DOCS)?;
        for item in t.iter()? {
            let (k, v) = item?;
            let (kind, id) = k.value();
            let d: Document = dec(&format!("docs/{kind}/{id}"), v.value())?;
            docs.insert((d.kind.clone(), d.id.clone()), Arc::new(d));
        }
        drop(t);
        drop(sm);
        drop(tx);
        let (revision_tx, _) = watch::channel(revision);
        Ok(StateMachine {
            view: ConfigView {
                shared: Arc::new(Shared {
                    kv: RwLock::new(Kv {
                        docs: Arc::new(docs),
                        revision,
                        last_applied,
                        membership,
                    }),
                    db,
                    revision_tx,
                }),
            },
            validator,
        })
    }

    /// A read handle on the applied config.
    pub fn view(&self) -> ConfigView {
        self.view.clone()
    }

    fn publish(&self, kv: Kv) {
        let revision = kv.revision;
        *self
            .view
            .shared
            .kv
            .write()
            .unwrap_or_else(|e| e.into_inner()) = kv;
        self.view.shared.revision_tx.send_replace(revision);
    }

    /// A snapshot of the applied state as it is now: the documents, the
    /// revision and the history a rollback can reach. Built when a leader
    /// sends one to a follower, never on the apply path or on a schedule.
    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let (docs, revision, last_applied, membership) = {
            let kv = self.view.kv();
            (
                kv.docs.clone(),
                kv.revision,
                kv.last_applied,
                kv.membership.clone(),
            )
        };
        if last_applied.is_none() {
            return Ok(None);
        }
        // The history a rollback can still reach, and the state before it;
        // read up to `revision` only, since applies go on meanwhile (the
        // database is never behind the published state: an apply
        // publishes after it commits).
        let floor = revision.saturating_sub(ROLLBACK_WINDOW);
        let (base, history) = {
            let tx = self.view.shared.db.begin_read()?;
            let t = tx.open_table(HISTORY)?;
            let old_base = history_base(&tx.open_table(SM)?)?;
            let base = (floor > 0).then(|| -> Result<HistoryBase, StoreError> {
                Ok(HistoryBase {
                    revision: floor,
                    docs: state_at(&old_base, &t, floor)?.into_iter().collect(),
                })
            });
            let base = base.transpose()?;
            let mut history = Vec::new();
            for item in t.range(floor + 1..=revision)? {
                let (k, v) = item?;
                history.push(dec(&format!("history/{}", k.value()), v.value())?);
            }
            (base, history)
        };
        let data = enc(&SnapshotData {
            revision,
            docs: docs.values().map(|d| (**d).clone()).collect(),
            history,
            base,
        })?;
        Ok(Some(Snapshot {
            meta: snapshot_meta(last_applied, membership, revision),
            snapshot: Box::new(Cursor::new(data)),
        }))
    }

    /// What openraft calls building a snapshot: the applied state up to
    /// now is made durable (applies are not fsynced, ADR 0014, and
    /// openraft purges the log entries a snapshot covers once it is
    /// built), and its id returned. The data is not built here: the
    /// database already holds the state, and a follower that needs a
    /// snapshot gets one of the state as it is when it asks
    /// ([`Self::current_snapshot`]). So a snapshot costs each node one
    /// small durable commit instead of encoding and writing every document.
    fn mark_built(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let t0 = std::time::Instant::now();
        let tx = self.view.shared.db.begin_write()?;
        // Read under the writer: no apply runs meanwhile, so everything up
        // to `last_applied` is in this transaction's view and made durable
        // by its commit.
        let (revision, last_applied, membership) = {
            let kv = self.view.kv();
            (kv.revision, kv.last_applied, kv.membership.clone())
        };
        put_sm(&tx, "snapshot_built", &last_applied)?;
        tx.commit()?;
        tracing::debug!(
            revision,
            commit_ms = t0.elapsed().as_secs_f64() * 1e3,
            "raft snapshot point made durable"
        );
        Ok(Snapshot {
            meta: snapshot_meta(last_applied, membership, revision),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

fn snapshot_meta(
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    revision: u64,
) -> SnapshotMeta<NodeId, openraft::BasicNode> {
    let snapshot_id = match last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, revision),
        None => format!("0-0-{revision}"),
    };
    SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    }
}

/// The documents as they were at `revision`, rebuilt from `base` and the
/// history table `t`: the committed one (a read transaction) or the one of
/// an open write transaction, which also sees the history written earlier
/// in it.
fn state_at(
    base: &HistoryBase,
    t: &impl ReadableTable<u64, &'static [u8]>,
    revision: u64,
) -> Result<BTreeMap<DocKey, serde_json::Value>, StoreError> {
    if revision < base.revision {
        return Err(StoreError::Db(format!(
            "the history before revision {} is not kept here",
            base.revision
        )));
    }
    let mut out: BTreeMap<DocKey, serde_json::Value> = base.docs.iter().cloned().collect();
    for item in t.range(base.revision + 1..=revision)? {
        let (k, v) = item?;
        let rec: RevisionRecord = dec(&format!("history/{}", k.value()), v.value())?;
        for c in rec.changes {
            match c.value {
                Some(v) => {
                    out.insert((c.kind, c.id), v);
                }
                None => {
                    out.remove(&(c.kind, c.id));
                }
            }
        }
    }
    Ok(out)
}

type StateAt<'a> = &'a dyn Fn(u64) -> Result<BTreeMap<DocKey, serde_json::Value>, StoreError>;

/// Applies `batch` to `docs` in memory. Returns the outcome and, when
/// something changed, the new documents and the history record.
fn compute(
    docs: &Arc<Docs>,
    revision: u64,
    batch: &Batch,
    validator: &Validator,
    state_at: StateAt<'_>,
) -> Result<(WriteOutcome, Option<(Docs, RevisionRecord)>), StoreError> {
    let mut next: BTreeMap<DocKey, Option<serde_json::Value>> = BTreeMap::new();
    let current = |k: &DocKey| docs.get(k).map_or(0, |d| d.revision);
    let check = |kind: &str, id: &str, expect: Option<u64>| -> Option<WriteOutcome> {
        let k = (kind.to_string(), id.to_string());
        match expect {
            Some(e) if e != current(&k) => Some(WriteOutcome::Conflict {
                kind: kind.to_string(),
                id: id.to_string(),
                expected: e,
                current: current(&k),
            }),
            _ => None,
        }
    };
    for op in &batch.ops {
        match op {
            Op::Put {
                kind,
                id,
                value,
                expect,
            } => {
                if let Some(c) = check(kind, id, *expect) {
                    return Ok((c, None));
                }
                next.insert((kind.clone(), id.clone()), Some(value.clone()));
            }
            Op::Delete { kind, id, expect } => {
                if let Some(c) = check(kind, id, *expect) {
                    return Ok((c, None));
                }
                next.insert((kind.clone(), id.clone()), None);
            }
            Op::RollbackTo { revision: target } => {
                if *target > revision {
                    return Ok((
                        WriteOutcome::Rejected {
                            problems: vec![Problem {
                                kind: String::new(),
                                id: String::new(),
                                pointer: String::new(),
                                reason: format!(
                                    "revision {target} does not exist (the latest is {revision})"
                                ),
                            }],
                        },
                        None,
                    ));
                }
                if target.saturating_add(ROLLBACK_WINDOW) < revision {
                    return Ok((
                        WriteOutcome::Rejected {
                            problems: vec![Problem {
                                kind: String::new(),
                                id: String::new(),
                                pointer: String::new(),
                                reason: format!(
                                    "revision {target} is too old: a rollback reaches back {ROLLBACK_WINDOW} revisions (the latest is {revision})"
                                ),
                            }],
                        },
                        None,
                    ));
                }
                let old = state_at(*target)?;
                let keys: BTreeSet<DocKey> = docs
                    .keys()
                    .cloned()
                    .chain(next.keys().cloned())
                    .chain(old.keys().cloned())
                    .collect();
                for k in keys {
                    let v = old.get(&k).cloned();
                    next.insert(k, v);
                }
            }
        }
    }
    let new_rev = revision + 1;
    let mut out: Docs = (**docs).clone();
    let mut changes = Vec::new();
    for ((kind, id), value) in next {
        let key = (kind.clone(), id.clone());
        let old = docs.get(&key);
        match (old, value) {
            (None, None) => {}
            (Some(_), None) => {
                out.remove(&key);
                changes.push(Change {
                    kind,
                    id,
                    action: Action::Deleted,
                    value: None,
                });
            }
            (Some(o), Some(v)) if o.value == v => {}
            (o, Some(v)) => {
                let created = o.map_or(new_rev, |o| o.created);
                out.insert(
                    key,
                    Arc::new(Document {
                        kind: kind.clone(),
                        id: id.clone(),
                        revision: new_rev,
                        created,
                        value: v.clone(),
                        memo: Default::default(),
                    }),
                );
                changes.push(Change {
                    kind,
                    id,
                    action: if o.is_some() {
                        Action::Updated
                    } else {
                        Action::Created
                    },
                    value: Some(v),
                });
            }
        }
    }
    if changes.is_empty() {
        return Ok((WriteOutcome::Unchanged { revision }, None));
    }
    let problems = validator(&out);
    if !problems.is_empty() {
        return Ok((WriteOutcome::Rejected { problems }, None));
    }
    let changed = changes.len();
    let record = RevisionRecord {
        revision: new_rev,
        at_ms: batch.at_ms,
        author: batch.author.clone(),
        message: batch.message.clone(),
        changes,
    };
    Ok((
        WriteOutcome::Applied {
            revision: new_rev,
            changed,
        },
        Some((out, record)),
    ))
}

fn put_sm<T: Serialize>(tx: &WriteTransaction, key: &str, v: &T) -> Result<(), StoreError> {
    tx.open_table(SM)?.insert(key, enc(v)?.as_slice())?;
    Ok(())
}

/// Stores the changes of `record` (the documents are taken from `docs`).
fn persist_record(
    tx: &WriteTransaction,
    docs: &Docs,
    record: &RevisionRecord,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(DOCS)?;
    for c in &record.changes {
        let key = (c.kind.clone(), c.id.clone());
        match docs.get(&key) {
            Some(d) => {
                t.insert((c.kind.as_str(), c.id.as_str()), enc(&**d)?.as_slice())?;
            }
            None => {
                t.remove((c.kind.as_str(), c.id.as_str()))?;
            }
        }
    }
    tx.open_table(HISTORY)?
        .insert(record.revision, enc(record)?.as_slice())?;
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || this.mark_built())
            .await
            .map_err(StoreError::write)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        StorageError<NodeId>,
    > {
        let kv = self.view.kv();
        Ok((kv.last_applied, kv.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<WriteOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let this = self.clone();
        blocking(move || {
            let (mut docs, mut revision, mut last_applied, mut membership) = {
                let kv = this.view.kv();
                (
                    kv.docs.clone(),
                    kv.revision,
                    kv.last_applied,
                    kv.membership.clone(),
                )
            };
            let db = this.view.shared.db.clone();
            let mut tx = db.begin_write()?;
            // Not fsynced: the entries are in the durable log, and a node
            // that loses this transaction in a crash applies them again
            // (ADR 0014, amended). The next durable commit (a log append,
            // a vote, a snapshot) writes it out.
            tx.set_durability(Durability::None)?;
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in entries {
                last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => outcomes.push(WriteOutcome::Unchanged { revision }),
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(entry.log_id), m);
                        outcomes.push(WriteOutcome::Unchanged { revision });
                    }
                    EntryPayload::Normal(batch) => {
                        // History written earlier in this transaction is
                        // visible to a rollback through `tx`'s own view.
                        let at = |n: u64| {
                            let base = history_base(&tx.open_table(SM)?)?;
                            state_at(&base, &tx.open_table(HISTORY)?, n)
                        };
                        let (outcome, change) =
                            compute(&docs, revision, &batch, &this.validator, &at)?;
                        if let Some((new_docs, record)) = change {
                            persist_record(&tx, &new_docs, &record)?;
                            docs = Arc::new(new_docs);
                            revision = record.revision;
                        }
                        outcomes.push(outcome);
                    }
                }
            }
            put_sm(&tx, "revision", &revision)?;
            put_sm(&tx, "last_applied", &last_applied)?;
            put_sm(&tx, "membership", &membership)?;
            tx.commit()?;
            this.publish(Kv {
                docs,
                revision,
                last_applied,
                membership,
            });
            Ok(outcomes)
        })
        .await
        .map_err(StoreError::write)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let meta = meta.clone();
        let this = self.clone();
        blocking(move || {
            let data: SnapshotData = dec("snapshot", &bytes)?;
            let db = this.view.shared.db.clone();
            let tx = db.begin_write()?;
            {
                let mut d = tx.open_table(DOCS)?;
                d.retain(|_, _| false)?;
                for doc in &data.docs {
                    d.insert((doc.kind.as_str(), doc.id.as_str()), enc(doc)?.as_slice())?;
                }
                let mut h = tx.open_table(HISTORY)?;
                h.retain(|_, _| false)?;
                for r in &data.history {
                    h.insert(r.revision, enc(r)?.as_slice())?;
                }
                let mut sm = tx.open_table(SM)?;
                match &data.base {
                    Some(b) => {
                        sm.insert("history_base", enc(b)?.as_slice())?;
                    }
                    None => {
                        sm.remove("history_base")?;
                    }
                }
            }
            put_sm(&tx, "revision", &data.revision)?;
            put_sm(&tx, "last_applied", &meta.last_log_id)?;
            put_sm(&tx, "membership", &meta.last_membership)?;
            // Stores before snapshots were built on demand kept the
            // installed one here; it is the state itself now.
            tx.open_table(SM)?.remove("snapshot")?;
            tx.commit()?;
            let docs: Docs = data
                .docs
                .into_iter()
                .map(|d| ((d.kind.clone(), d.id.clone()), Arc::new(d)))
                .collect();
            this.publish(Kv {
                docs: Arc::new(docs),
                revision: data.revision,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            });
            Ok(())
        })
        .await
        .map_err(StoreError::write)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let this = self.clone();
        blocking(move || this.current_snapshot())
            .await
            .map_err(StoreError::read)
    }
}
