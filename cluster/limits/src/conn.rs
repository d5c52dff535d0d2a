//! Requests in flight per key, for `limit-conn`.
//!
//! A key exists only while it has requests in flight, so the table is
//! bounded by the number of open requests, whatever keys clients send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// In-flight counts by key.
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<HashMap<Box<str>, u64>>,
}

/// One admitted request; dropping it (when the response body ends or is
/// abandoned) frees its place.
pub struct Permit {
    table: Arc<InFlight>,
    key: Box<str>,
}

/// Result of [`InFlight::acquire`].
pub enum Acquire {
    /// Admitted; `in_flight` counts this request.
    Admitted {
        /// Keeps the place taken.
        permit: Permit,
        /// Requests in flight for the key, this one included.
        in_flight: u64,
    },
    /// The key already has `max` requests in flight.
    Full,
}

impl InFlight {
    /// Takes a place for `key` if it has fewer than `max` in flight.
    pub fn acquire(self: &Arc<Self>, key: &str, max: u64) -> Acquire {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.into()).or_insert(0);
        if *n >= max {
            return Acquire::Full;
        }
        *n += 1;
        let in_flight = *n;
        Acquire::Admitted {
            permit: Permit {
                table: self.clone(),
                key: key.into(),
            },
            in_flight,
        }
    }

    /// Keys with requests in flight.
    pub fn keys(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut m = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_free_on_drop_and_empty_keys_go() {
        let t = Arc::new(InFlight::default());
        let a = t.acquire("k", 2);
        let b = t.acquire("k", 2);
        assert!(matches!(t.acquire("k", 2), Acquire::Full));
        assert!(matches!(b, Acquire::Admitted { in_flight: 2, .. }));
        drop(b);
        let c = t.acquire("k", 2);
        assert!(matches!(c, Acquire::Admitted { .. }));
        drop((a, c));
        assert_eq!(t.keys(), 0);
    }
}
