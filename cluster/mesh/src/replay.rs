//! The replay window: which sequence numbers a connection has already
//! accepted on one channel. It owns that bookkeeping only; the frame and
//! its other checks are [`crate::frame`].
//!
//! Frames may arrive out of order (concurrent streams, reordered
//! datagrams), so the window remembers the highest number seen and which of
//! the [`WINDOW`] numbers below it arrived, as IPsec's anti-replay window
//! does. A number seen before, or more than [`WINDOW`] below the highest,
//! is refused. The window is per connection: a new connection starts
//! counting from 1 again, under new keys.

/// How far below the highest number a frame may arrive and still be
/// accepted. Far above the number of requests in flight on one connection
/// (see [`crate::MeshConfig::max_in_flight`]).
pub const WINDOW: u64 = 4096;

const WORDS: usize = (WINDOW / 64) as usize;

/// One channel's window.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    top: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Records `seq`; `false` when it was seen before, is too old, or is 0.
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            let ahead = seq - self.top;
            if ahead >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                // The slots between the old top and the new one held
                // numbers WINDOW older; forget them.
                for s in self.top + 1..=seq {
                    let (w, b) = Self::slot(s);
                    self.bits[w] &= !b;
                }
            }
            self.top = seq;
            let (w, b) = Self::slot(seq);
            self.bits[w] |= b;
            return true;
        }
        if self.top - seq >= WINDOW {
            return false;
        }
        let (w, b) = Self::slot(seq);
        if self.bits[w] & b != 0 {
            return false;
        }
        self.bits[w] |= b;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_number_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(w.accept(4));
        assert!(!w.accept(4));
        assert!(!w.accept(5));
        assert!(w.accept(1000));
        assert!(w.accept(6));
        assert!(!w.accept(6));
        // Far ahead: everything at or below the old window is too old.
        assert!(w.accept(1000 + WINDOW));
        assert!(!w.accept(1000));
        assert!(!w.accept(999));
        assert!(w.accept(1001));
        assert!(!w.accept(1001));
    }

    proptest::proptest! {
        /// The window agrees with a set of every number accepted so far,
        /// restricted to the last WINDOW below the highest.
        #[test]
        fn matches_a_set_model(
            steps in proptest::collection::vec((0u8..10, 0u64..3 * WINDOW, 0u64..4), 1..2000),
        ) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut top = 0u64;
            for (jump, d, nudge) in steps {
                let seq = if jump == 0 {
                    top + d + 1
                } else {
                    top.saturating_sub(d % (WINDOW + 10)) + nudge
                };
                let expect = seq != 0 && !seen.contains(&seq) && seq + WINDOW > top;
                proptest::prop_assert_eq!(w.accept(seq), expect, "seq {} top {}", seq, top);
                if expect {
                    seen.insert(seq);
                    top = top.max(seq);
                }
            }
        }
    }
}
