//! Request collapsing: of concurrent misses on one key, the first (the
//! leader) goes upstream; the others wait until it has stored the
//! response or given up, then look again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// The keys being fetched right now.
#[derive(Default)]
pub struct Collapser {
    flights: Mutex<HashMap<Box<str>, watch::Receiver<()>>>,
    waiting: std::sync::atomic::AtomicU64,
}

/// What a miss should do.
pub enum Flight {
    /// Go upstream; others wait until this is dropped.
    Lead(Leader),
    /// Another request is fetching it: wait for it.
    Wait(watch::Receiver<()>),
}

/// The right to fetch a key; dropping it (after storing, or on failure)
/// wakes the waiters.
pub struct Leader {
    collapser: Arc<Collapser>,
    key: Box<str>,
    _done: watch::Sender<()>,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").field("key", &self.key).finish()
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut m = self
            .collapser
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.remove(&self.key);
    }
}

impl Collapser {
    /// Joins the fetch of `key`: leads it, or waits for its leader.
    pub fn join(self: &Arc<Self>, key: &str) -> Flight {
        let mut m = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = m.get(key)
            && rx.has_changed().is_ok()
        {
            return Flight::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        m.insert(key.into(), rx);
        Flight::Lead(Leader {
            collapser: self.clone(),
            key: key.into(),
            _done: tx,
        })
    }

    /// Leads the fetch of `key` only when nobody else does.
    pub fn try_lead(self: &Arc<Self>, key: &str) -> Option<Leader> {
        match self.join(key) {
            Flight::Lead(l) => Some(l),
            Flight::Wait(_) => None,
        }
    }

    /// Keys being fetched.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Requests waiting for another one's fetch.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits until the leader is done, at most `timeout`; false on
    /// timeout.
    pub async fn wait(&self, mut rx: watch::Receiver<()>, timeout: Duration) -> bool {
        struct Count<'a>(&'a AtomicU64);
        impl Drop for Count<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _count = Count(&self.waiting);
        // The sender never sends: `changed` returns when it is dropped.
        tokio::time::timeout(timeout, async move { while rx.changed().await.is_ok() {} })
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_the_leader_is_done_or_time_out() {
        let c = Arc::new(Collapser::default());
        let Flight::Lead(leader) = c.join("k") else {
            panic!("first one leads")
        };
        let Flight::Wait(rx) = c.join("k") else {
            panic!("second one waits")
        };
        assert!(c.try_lead("k").is_none());
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait(rx, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(leader);
        assert!(waiter.await.unwrap(), "woken, not timed out");
        assert_eq!(c.in_flight(), 0);

        let Flight::Lead(_leader) = c.join("k") else {
            panic!("a new fetch leads")
        };
        let Flight::Wait(rx) = c.join("k") else {
            panic!("waits")
        };
        assert!(!c.wait(rx, Duration::from_millis(50)).await, "times out");
        assert_eq!(c.waiting(), 0);
    }
}
