//! The redb file, its tables and its format version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::state_machine::{StateMachine, Validator};

/// The on-disk layout version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// File name inside the data dir.
pub const DATA_FILE: &str = "weir.redb";

/// Where older versions kept the last snapshot they built, beside the
/// redb file. Snapshots are now built when a follower needs one, from the
/// database; a leftover file is removed when the store opens.
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// `format_version`, `vote`, `committed`, `last_purged`.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Raft log: index → JSON entry.
pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// State machine metadata: `last_applied`, `membership`, `revision`,
/// `snapshot_built` (the last log id made durable as a snapshot point),
/// `history_base`.
pub(crate) const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");
/// Live documents: (kind, id) → JSON document.
pub(crate) const DOCS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("docs");
/// History: revision → JSON record.
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");

/// An opened data dir.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. Refuses a file written with
    /// another format version, and leaves it untouched.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_path_buf(),
            reason: format!("cannot create the data dir: {e}"),
        })?;
        let path = dir.join(DATA_FILE);
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    "already in use by another process (each node needs its own --data-dir)"
                        .to_string()
                }
                other => format!("cannot open: {other}"),
            },
        })?;
        // Check the version before touching anything else.
        let found = {
            let tx = db.begin_read()?;
            match tx.open_table(META) {
                Ok(t) => match t.get("format_version")? {
                    Some(v) => Some(decode_u32(v.value()).ok_or_else(|| StoreError::Corrupt {
                        key: "meta/format_version".into(),
                        reason: "not a 4-byte integer".into(),
                    })?),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(found) = found
            && found != FORMAT_VERSION
        {
            return Err(StoreError::UnknownFormat {
                path,
                found,
                expected: FORMAT_VERSION,
            });
        }
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            if found.is_none() {
                meta.insert("format_version", FORMAT_VERSION.to_le_bytes().as_slice())?;
            }
            tx.open_table(LOGS)?;
            tx.open_table(SM)?;
            tx.open_table(DOCS)?;
            tx.open_table(HISTORY)?;
        }
        tx.commit()?;
        Ok(Store {
            db: Arc::new(db),
            path,
        })
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Raft log and vote store.
    pub fn log_store(&self) -> LogStore {
        LogStore::new(self.db.clone())
    }

    /// The config state machine; `validator` judges every batch's result.
    pub fn state_machine(&self, validator: Validator) -> Result<StateMachine, StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        StateMachine::open(self.db.clone(), dir.join(SNAPSHOT_FILE), validator)
    }
}

fn decode_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Runs blocking disk work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Db(format!("storage task failed: {e}")))?
}

/// Encodes a value as JSON bytes.
pub(crate) fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Db(format!("cannot encode: {e}")))
}

/// Decodes JSON bytes stored under `key`.
pub(crate) fn dec<T: serde::de::DeserializeOwned>(key: &str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}
