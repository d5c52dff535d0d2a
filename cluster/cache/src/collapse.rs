//! Request collapsing: of concurrent misses on one key, the first (the
//! leader) goes upstream; the others wait until it has stored the
//! response or given up, then look again.
//!
//! [`Collapse`] is the seam: the node-local [`Collapser`] collapses the
//! misses of one node; a cluster-wide one asks the key's owner node who
//! leads, so misses on every node become one upstream fetch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Who fetches a key. `join` may ask another node (the key's owner), so it
/// is async; a leader's release and a waiter's wake-up are local.
#[async_trait::async_trait]
pub trait Collapse: Send + Sync + 'static {
    /// Joins the fetch of `key`: leads it, or waits for its leader.
    async fn join(&self, key: &str) -> Flight;

    /// Leads the fetch of `key` only when nobody else does, without
    /// waiting (a background refresh that is skipped when one runs).
    fn try_lead(&self, key: &str) -> Option<Leader>;

    /// Waits until the leader is done, at most `timeout`; false on
    /// timeout.
    async fn wait(&self, rx: watch::Receiver<()>, timeout: Duration) -> bool;

    /// Keys being fetched by a leader of this node.
    fn in_flight(&self) -> usize;

    /// Requests of this node waiting for another one's fetch.
    fn waiting(&self) -> u64;
}

/// What a miss should do.
pub enum Flight {
    /// Go upstream; others wait until this is dropped.
    Lead(Leader),
    /// Another request is fetching it: wait for it.
    Wait(watch::Receiver<()>),
}

/// The right to fetch a key; dropping it (after storing, or on failure)
/// wakes the waiters, wherever they are.
pub struct Leader {
    key: Box<str>,
    _release: Box<dyn Send + Sync>,
}

impl Leader {
    /// A leader for `key` whose `release` guard, when dropped, tells the
    /// waiters the fetch is over (a remote [`Collapse`] sends that to the
    /// key's owner).
    pub fn new(key: &str, release: Box<dyn Send + Sync>) -> Leader {
        Leader {
            key: key.into(),
            _release: release,
        }
    }

    /// The key being fetched.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").field("key", &self.key).finish()
    }
}

#[derive(Default)]
struct Flights {
    keys: Mutex<HashMap<Box<str>, watch::Receiver<()>>>,
    waiting: AtomicU64,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, watch::Receiver<()>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends a local flight: removes the key, and dropping the sender wakes
/// the waiters.
struct LocalRelease {
    flights: Arc<Flights>,
    key: Box<str>,
    _done: watch::Sender<()>,
}

impl Drop for LocalRelease {
    fn drop(&mut self) {
        self.flights.lock().remove(&self.key);
    }
}

/// The node-local [`Collapse`]: the keys this node is fetching right now.
#[derive(Default)]
pub struct Collapser {
    flights: Arc<Flights>,
}

impl Collapser {
    /// Joins the fetch of `key` at once (the local answer needs no wait).
    pub fn join_now(&self, key: &str) -> Flight {
        let mut m = self.flights.lock();
        if let Some(rx) = m.get(key)
            && rx.has_changed().is_ok()
        {
            return Flight::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        m.insert(key.into(), rx);
        Flight::Lead(Leader::new(
            key,
            Box::new(LocalRelease {
                flights: self.flights.clone(),
                key: key.into(),
                _done: tx,
            }),
        ))
    }
}

#[async_trait::async_trait]
impl Collapse for Collapser {
    async fn join(&self, key: &str) -> Flight {
        self.join_now(key)
    }

    fn try_lead(&self, key: &str) -> Option<Leader> {
        match self.join_now(key) {
            Flight::Lead(l) => Some(l),
            Flight::Wait(_) => None,
        }
    }

    async fn wait(&self, mut rx: watch::Receiver<()>, timeout: Duration) -> bool {
        struct Count<'a>(&'a AtomicU64);
        impl Drop for Count<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.flights.waiting.fetch_add(1, Ordering::Relaxed);
        let _count = Count(&self.flights.waiting);
        // The sender never sends: `changed` returns when it is dropped.
        tokio::time::timeout(timeout, async move { while rx.changed().await.is_ok() {} })
            .await
            .is_ok()
    }

    fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }

    fn waiting(&self) -> u64 {
        self.flights.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_the_leader_is_done_or_time_out() {
        let c: Arc<dyn Collapse> = Arc::new(Collapser::default());
        let Flight::Lead(leader) = c.join("k").await else {
            panic!("first one leads")
        };
        assert_eq!(leader.key(), "k");
        let Flight::Wait(rx) = c.join("k").await else {
            panic!("second one waits")
        };
        assert!(c.try_lead("k").is_none());
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait(rx, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(leader);
        assert!(waiter.await.unwrap(), "woken, not timed out");
        assert_eq!(c.in_flight(), 0);

        let Flight::Lead(_leader) = c.join("k").await else {
            panic!("a new fetch leads")
        };
        let Flight::Wait(rx) = c.join("k").await else {
            panic!("waits")
        };
        assert!(!c.wait(rx, Duration::from_millis(50)).await, "times out");
        assert_eq!(c.waiting(), 0);
    }
}
