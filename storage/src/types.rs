//! What is replicated: write batches, their outcome, documents and history.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

/// A Raft node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for weir's config store.
    pub TypeConfig:
        D = Batch,
        R = WriteOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A document's key: `(kind, id)`, e.g. `("routes", "users")`.
pub type DocKey = (String, String);

/// Every live document, ordered by key.
pub type Docs = BTreeMap<DocKey, Arc<Document>>;

/// One write: a list of operations applied atomically as one Raft entry
/// and one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The operations, in order.
    pub ops: Vec<Op>,
    /// Who asked (an admin key's name, `cli`, `file`).
    pub author: String,
    /// Free text shown in the history.
    #[serde(default)]
    pub message: String,
    /// Wall-clock time at the proposer, milliseconds since the epoch.
    pub at_ms: u64,
}

/// One operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create or replace a document.
    Put {
        /// Document kind.
        kind: String,
        /// Document id.
        id: String,
        /// The document.
        value: serde_json::Value,
        /// Precondition: the document's current revision (0 = must not
        /// exist). A mismatch rejects the whole batch.
        #[serde(default)]
        expect: Option<u64>,
    },
    /// Delete a document (deleting a missing one is not an error).
    Delete {
        /// Document kind.
        kind: String,
        /// Document id.
        id: String,
        /// Precondition as for `Put`.
        #[serde(default)]
        expect: Option<u64>,
    },
    /// Make every document what it was at `revision` (a new revision).
    RollbackTo {
        /// Target revision.
        revision: u64,
    },
}

/// A problem found by the validator, located in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Document kind (empty when it concerns the whole batch).
    pub kind: String,
    /// Document id.
    pub id: String,
    /// JSON pointer inside the document (`/upstream`, `""` = whole).
    pub pointer: String,
    /// Why.
    pub reason: String,
}

/// What applying a batch did. Every node computes the same outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WriteOutcome {
    /// Stored as a new revision.
    Applied {
        /// The new revision.
        revision: u64,
        /// How many documents changed.
        changed: usize,
    },
    /// Nothing differed from what is stored; no revision was used.
    Unchanged {
        /// The current revision.
        revision: u64,
    },
    /// The validator refused the result; nothing was stored.
    Rejected {
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// A precondition failed; nothing was stored.
    Conflict {
        /// Document kind.
        kind: String,
        /// Document id.
        id: String,
        /// Revision the writer expected.
        expected: u64,
        /// Revision stored (0 = absent).
        current: u64,
    },
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Kind.
    pub kind: String,
    /// Id.
    pub id: String,
    /// Revision of the last change.
    pub revision: u64,
    /// Revision that created it.
    pub created: u64,
    /// The JSON document.
    pub value: serde_json::Value,
    /// What a reader made of `value`, kept with it (never stored).
    #[serde(skip)]
    pub memo: Memo,
}

/// A slot where the reader of a [`Document`] keeps what it parsed the
/// value into, so that a document that does not change is read once per
/// process, not once per write (the validator and the route snapshot read
/// every document on every write). The store does not know the type: the
/// first reader sets it, and a reader asking for another type is told
/// `None`. Documents are immutable once stored, so the memo never goes
/// stale; it compares equal to any other memo.
#[derive(Clone, Default)]
pub struct Memo(OnceLock<Arc<dyn Any + Send + Sync>>);

impl Memo {
    /// What the first reader made of the document, made now by `make` if
    /// nobody has yet; `None` when the slot holds another type.
    pub fn get_or_init<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.0
            .get_or_init(|| Arc::new(make()))
            .as_ref()
            .downcast_ref::<T>()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Memo) -> bool {
        true
    }
}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Memo(set)"
        } else {
            "Memo(empty)"
        })
    }
}

/// What a revision did to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The document is new.
    Created,
    /// The document was replaced.
    Updated,
    /// The document was removed.
    Deleted,
}

/// One document change in a revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Kind.
    pub kind: String,
    /// Id.
    pub id: String,
    /// What happened.
    pub action: Action,
    /// The new value (absent for a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// One entry of the history: who, when, what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// The revision.
    pub revision: u64,
    /// Proposer's wall-clock time, ms since the epoch.
    pub at_ms: u64,
    /// Who.
    pub author: String,
    /// Message.
    pub message: String,
    /// What changed.
    pub changes: Vec<Change>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_is_made_once_and_only_read_back_as_its_own_type() {
        let m = Memo::default();
        let mut made = 0;
        assert_eq!(
            m.get_or_init(|| {
                made += 1;
                7u32
            }),
            Some(&7)
        );
        assert_eq!(
            m.get_or_init(|| {
                made += 1;
                8u32
            }),
            Some(&7)
        );
        assert_eq!(made, 1);
        assert_eq!(m.get_or_init(|| "other"), None);
        // A clone shares what was made; memos never make documents differ.
        assert_eq!(m.clone().get_or_init(|| 9u32), Some(&7));
        assert_eq!(m, Memo::default());
    }
}
