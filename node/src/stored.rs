//! Stored documents that are not valid any more: a store written by an
//! older version can hold documents of a kind that has since become typed
//! (ADR 0025: consumers, credentials, subscriptions, global plugins). The
//! store's validator checks the whole state on every write, so while such
//! a document is there every write is refused. This module finds them,
//! logs each once at `error`, and keeps the list for `/v1/status` and for
//! the message of a refused write (ADR 0027).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use weir_storage::{Docs, Problem};

/// The problems of the stored documents at one revision.
#[derive(Debug, Default, Clone)]
pub struct StoredProblems(Arc<Mutex<Held>>);

#[derive(Debug, Default)]
struct Held {
    problems: Arc<Vec<Problem>>,
    /// Every problem logged so far, so each is logged once.
    logged: Logged,
}

impl StoredProblems {
    /// The problems as of the last check (empty: the store is valid).
    pub fn get(&self) -> Arc<Vec<Problem>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .clone()
    }

    /// Records what the documents at `revision` are found to be: valid
    /// (`problems` empty) or not. Each problem not seen before is logged
    /// once at `error`, and the return to a valid store once at `info`.
    pub fn record(&self, revision: u64, problems: Vec<Problem>) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if problems.is_empty() && !held.logged.is_empty() {
            tracing::info!(
                revision,
                "the stored documents are valid again; writes are accepted"
            );
            held.logged.clear();
        }
        log_new(&problems, &mut held.logged);
        held.problems = Arc::new(problems);
    }
}

/// What the store's validator says about `docs` as they are.
pub fn check(docs: &Docs) -> Vec<Problem> {
    crate::docs::problems(docs)
}

/// The documents named by `problems`.
pub fn documents(problems: &[Problem]) -> BTreeSet<(String, String)> {
    problems
        .iter()
        .filter(|p| !p.kind.is_empty())
        .map(|p| (p.kind.clone(), p.id.clone()))
        .collect()
}

/// How to get writes going again, naming the documents.
pub fn fix_hint(problems: &[Problem]) -> String {
    let docs = documents(problems);
    let names: Vec<String> = docs.iter().map(|(k, i)| format!("{k}/{i}")).collect();
    let one = docs
        .iter()
        .next()
        .map_or_else(|| "KIND ID".to_string(), |(k, i)| format!("{k} {i}"));
    format!(
        "the store holds {} document(s) that are not valid ({}); every write is refused until they are fixed: delete them (`weir delete {one}`) or replace them with a valid body (PUT), all of them in one write when there are several (`weir apply -f FILE` with those kinds, or POST /v1/apply)",
        docs.len(),
        names.join(", ")
    )
}

/// A problem as a set key: `(kind, id, pointer, reason)`.
type Logged = BTreeSet<(String, String, String, String)>;

/// Logs every problem not logged before, once, at `error`.
fn log_new(problems: &[Problem], logged: &mut Logged) {
    for p in problems {
        let key = (
            p.kind.clone(),
            p.id.clone(),
            p.pointer.clone(),
            p.reason.clone(),
        );
        if logged.insert(key) {
            tracing::error!(
                kind = %p.kind,
                id = %p.id,
                pointer = %p.pointer,
                reason = %p.reason,
                "a stored document is not valid; writes are refused until it is fixed (docs/raft.md, \"Upgrading\")"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: &str, id: &str) -> Problem {
        Problem {
            kind: kind.into(),
            id: id.into(),
            pointer: "/email".into(),
            reason: "unknown field `email`".into(),
        }
    }

    #[test]
    fn the_hint_names_every_blocking_document_and_the_fix() {
        let h = fix_hint(&[
            p("consumers", "alice"),
            p("consumers", "alice"),
            p("plugins", "cors"),
        ]);
        assert!(h.contains("2 document(s)"), "{h}");
        assert!(h.contains("consumers/alice, plugins/cors"), "{h}");
        assert!(h.contains("weir delete consumers alice"), "{h}");
        assert!(h.contains("in one write"), "{h}");
    }

    #[test]
    fn each_problem_is_logged_once() {
        let mut logged = Logged::new();
        log_new(&[p("consumers", "a")], &mut logged);
        log_new(&[p("consumers", "a"), p("consumers", "b")], &mut logged);
        assert_eq!(logged.len(), 2);
    }
}
