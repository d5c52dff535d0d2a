//! Network faults between gossip nodes, for tests and the chaos harness: a
//! [`DatagramTransport`] wrapper ([`FaultyTransport`]) that drops the
//! datagrams of links a shared [`Faults`] handle has cut, in either or
//! both directions, until they are healed.
//!
//! It works on the datagrams below the sealing (see [`crate::gossip`]), so
//! nodes behind it still authenticate each other; it only decides whether
//! a datagram arrives. A dropped datagram looks to the sender like one lost
//! on the wire: the send succeeds. Delay, reordering and duplication are
//! not modelled here; production never uses this module.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::gossip::{DatagramSocket, DatagramTransport};

/// The cut links of a set of nodes, shared by every socket that a
/// [`FaultyTransport`] built with it binds. Links are named by the
/// sockets' bound addresses (on loopback these are the gossip addresses).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// `(from, to)` pairs whose datagrams are dropped.
    blocked: HashSet<(SocketAddr, SocketAddr)>,
    dropped: u64,
}

impl Faults {
    fn state(&self) -> MutexGuard<'_, FaultState> {
        // The state is a set and a counter, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let mut s = self.state();
        s.blocked.insert((a, b));
        s.blocked.insert((b, a));
    }

    /// Drops what `from` sends to `to`, but not the way back.
    pub fn block(&self, from: SocketAddr, to: SocketAddr) {
        self.state().blocked.insert((from, to));
    }

    /// Restores the link between `a` and `b` in both directions.
    pub fn heal(&self, a: SocketAddr, b: SocketAddr) {
        let mut s = self.state();
        s.blocked.remove(&(a, b));
        s.blocked.remove(&(b, a));
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        self.state().blocked.clear();
    }

    /// Datagrams dropped so far, on either side of a cut link.
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }

    /// Whether a datagram from `from` to `to` is dropped; counts it if so.
    fn drops(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let mut s = self.state();
        let drop = s.blocked.contains(&(from, to));
        if drop {
            s.dropped += 1;
        }
        drop
    }
}

/// A transport whose sockets drop the datagrams of cut links. It checks
/// both when sending and when receiving, so a link is cut even when only
/// one of its ends runs behind a `FaultyTransport`.
#[derive(Debug, Clone)]
pub struct FaultyTransport<T> {
    inner: T,
    faults: Faults,
}

impl<T: DatagramTransport> FaultyTransport<T> {
    /// `inner` (e.g. [`crate::gossip::Udp`]) with the links `faults` cuts.
    pub fn new(inner: T, faults: Faults) -> FaultyTransport<T> {
        FaultyTransport { inner, faults }
    }
}

#[async_trait]
impl<T: DatagramTransport> DatagramTransport for FaultyTransport<T> {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn DatagramSocket>> {
        let inner = self.inner.bind(addr).await?;
        let local = inner.local_addr()?;
        Ok(Box::new(FaultySocket {
            inner,
            local,
            faults: self.faults.clone(),
        }))
    }
}

struct FaultySocket {
    inner: Box<dyn DatagramSocket>,
    local: SocketAddr,
    faults: Faults,
}

#[async_trait]
impl DatagramSocket for FaultySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        if self.faults.drops(self.local, to) {
            return Ok(datagram.len());
        }
        self.inner.send_to(datagram, to).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let (len, from) = self.inner.recv_from(buf).await?;
            if !self.faults.drops(from, self.local) {
                return Ok((len, from));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gossip::Udp;

    const WAIT: Duration = Duration::from_secs(5);

    async fn bind(faults: &Faults) -> Box<dyn DatagramSocket> {
        FaultyTransport::new(Udp, faults.clone())
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind")
    }

    async fn recv(s: &dyn DatagramSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(WAIT, s.recv_from(&mut buf))
            .await
            .ok()?
            .expect("recv");
        Some((buf[..n].to_vec(), from))
    }

    #[tokio::test]
    async fn cut_links_drop_both_ways_and_heal() {
        let faults = Faults::default();
        let (a, b, c) = (
            bind(&faults).await,
            bind(&faults).await,
            bind(&faults).await,
        );
        let (aa, ba, ca) = (
            a.local_addr().expect("a"),
            b.local_addr().expect("b"),
            c.local_addr().expect("c"),
        );
        faults.cut(aa, ba);
        a.send_to(b"cut", ba).await.expect("send");
        // Sent after the dropped one on the same path: its arrival shows the
        // first was dropped, not late.
        c.send_to(b"via c", ba).await.expect("send");
        assert_eq!(recv(&*b).await, Some((b"via c".to_vec(), ca)));
        b.send_to(b"cut back", aa).await.expect("send");
        c.send_to(b"to a", aa).await.expect("send");
        assert_eq!(recv(&*a).await, Some((b"to a".to_vec(), ca)));
        assert_eq!(faults.dropped(), 2);

        faults.heal(ba, aa);
        a.send_to(b"healed", ba).await.expect("send");
        assert_eq!(recv(&*b).await, Some((b"healed".to_vec(), aa)));
    }

    #[tokio::test]
    async fn one_way_blocks_and_plain_senders_are_cut_on_receipt() {
        let faults = Faults::default();
        let a = bind(&faults).await;
        let aa = a.local_addr().expect("a");
        // A sender outside the faulty transport: only a's side can drop.
        let plain = Udp
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let other = Udp
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let (pa, oa) = (
            plain.local_addr().expect("plain"),
            other.local_addr().expect("other"),
        );
        faults.block(pa, aa);
        plain.send_to(b"blocked", aa).await.expect("send");
        other.send_to(b"after it", aa).await.expect("send");
        assert_eq!(recv(&*a).await, Some((b"after it".to_vec(), oa)));
        assert_eq!(faults.dropped(), 1);
        a.send_to(b"still open", pa).await.expect("send");
        assert_eq!(recv(&*plain).await, Some((b"still open".to_vec(), aa)));
        faults.heal_all();
        plain.send_to(b"open", aa).await.expect("send");
        assert_eq!(recv(&*a).await, Some((b"open".to_vec(), pa)));
        assert_eq!(faults.dropped(), 1);
    }
}
