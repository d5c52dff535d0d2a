//! Errors opening or reading the store.

use std::path::PathBuf;

/// Why the store could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data dir holds a layout this build does not understand. It is
    /// never overwritten.
    #[error(
        "{path}: on-disk format version {found}, but this weir understands version {expected}; refusing to open it (run a weir that matches, or point --data-dir at another directory)"
    )]
    UnknownFormat {
        /// The data file.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The data dir or file could not be created or opened.
    #[error("{path}: {reason}")]
    Open {
        /// The path involved.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// redb failed.
    #[error("storage: {0}")]
    Db(String),
    /// A stored value could not be decoded.
    #[error("storage: corrupt value under {key}: {reason}")]
    Corrupt {
        /// Which key.
        key: String,
        /// Decoder message.
        reason: String,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl StoreError {
    /// As openraft's storage error (reads).
    pub(crate) fn read(self) -> openraft::StorageError<u64> {
        openraft::StorageIOError::read(openraft::AnyError::error(self.to_string())).into()
    }

    /// As openraft's storage error (writes).
    pub(crate) fn write(self) -> openraft::StorageError<u64> {
        openraft::StorageIOError::write(openraft::AnyError::error(self.to_string())).into()
    }
}
