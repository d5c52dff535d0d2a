//! openraft's log and vote storage on redb.
//!
//! Each append, truncate, purge and vote save is one write transaction
//! committed with `Durability::Immediate` (redb's default): it is fsynced
//! before openraft hears that it is done. The committed index is the
//! exception: it is a hint (openraft re-learns it from the leader), so it
//! is written with `Durability::None` and reaches the disk with the next
//! durable commit, off the path of every write.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::db::{LOGS, META, blocking, dec, enc};
use crate::error::StoreError;
use crate::types::{NodeId, TypeConfig};

/// The Raft log and vote, in the node's redb file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        match t.get(key)? {
            Some(v) => Ok(Some(dec(key, v.value())?)),
            None => Ok(None),
        }
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        v: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = enc(v)?;
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability)?;
            tx.open_table(META)?.insert(key, bytes.as_slice())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    fn range(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOGS)?;
        let iter = t.range((Bound::Included(start), end))?;
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            out.push(dec(&format!("logs/{}", k.value()), v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        self.range(start, end).map_err(StoreError::read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> =
            self.read_meta("last_purged").map_err(StoreError::read)?;
        let last = (|| -> Result<Option<LogId<NodeId>>, StoreError> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(LOGS)?;
            match t.last()? {
                Some((k, v)) => {
                    let e: Entry<TypeConfig> = dec(&format!("logs/{}", k.value()), v.value())?;
                    Ok(Some(e.log_id))
                }
                None => Ok(None),
            }
        })()
        .map_err(StoreError::read)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta("vote", vote, Durability::Immediate)
            .await
            .map_err(StoreError::write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta("vote").map_err(StoreError::read)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write_meta("committed", &committed, Durability::None)
            .await
            .map_err(StoreError::write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>("committed")
            .map_err(StoreError::read)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, enc(&e)?)))
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(StoreError::write)?;
        let db = self.db.clone();
        let result = blocking(move || {
            let t0 = std::time::Instant::now();
            let tx = db.begin_write()?;
            let waited = t0.elapsed();
            {
                let mut t = tx.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    t.insert(*index, bytes.as_slice())?;
                }
            }
            tx.commit()?;
            if waited >= std::time::Duration::from_millis(2) {
                // Another durable write held the database (a snapshot's
                // commit, a purge): the append's latency is that wait.
                tracing::debug!(
                    wait_ms = waited.as_secs_f64() * 1e3,
                    ms = (t0.elapsed() - waited).as_secs_f64() * 1e3,
                    "raft log append waited for the database writer"
                );
            }
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.write())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            tx.open_table(LOGS)?
                .retain_in(log_id.index.., |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(StoreError::write)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        let bytes = enc(&log_id).map_err(StoreError::write)?;
        blocking(move || {
            let t0 = std::time::Instant::now();
            let tx = db.begin_write()?;
            let waited = t0.elapsed();
            tx.open_table(META)?
                .insert("last_purged", bytes.as_slice())?;
            tx.open_table(LOGS)?
                .retain_in(..=log_id.index, |_, _| false)?;
            tx.commit()?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            tracing::debug!(
                up_to = log_id.index,
                wait_ms = ms(waited),
                ms = ms(t0.elapsed() - waited),
                "raft log purged"
            );
            Ok(())
        })
        .await
        .map_err(StoreError::write)
    }
}
