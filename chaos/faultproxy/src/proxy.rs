//! What the TCP and UDP proxies share: their settings ([`ProxyConfig`]),
//! the live rules (toxics and partitions, swapped whole on each change so
//! the data path reads them without a lock), the counters, the seeded
//! randomness and the [`ProxyHandle`] through which tests and the control
//! API change a running proxy. Moving bytes is `tcp` and `udp`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::toxic::{FieldError, Partition, Protocol, Stream, Toxic, ToxicKind, check_rule_name};

/// Settings of one proxy. [`ProxyConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Unique name (in a [`crate::Registry`] and the control API).
    pub name: String,
    /// Where it listens; port 0 picks one.
    pub listen: SocketAddr,
    /// Where it forwards; `None` drops everything (counted as
    /// `no_upstream`) until [`ProxyHandle::set_upstream`].
    pub upstream: Option<SocketAddr>,
    /// Seed of every random choice (jitter, loss, slice sizes): each
    /// connection or session draws from its own generator, seeded from
    /// this and its number.
    pub seed: u64,
    /// UDP: a session idle this long (nothing either way) is closed.
    pub idle_timeout: Duration,
    /// UDP: datagrams waiting per session and direction; more are dropped
    /// (`queue_full`).
    pub queue_packets: usize,
    /// UDP: bytes waiting per session and direction; more are dropped.
    pub queue_bytes: usize,
    /// UDP: sessions at once; datagrams of further clients are dropped
    /// (`sessions_full`).
    pub max_sessions: usize,
    /// TCP: chunks (of up to 16 KiB) in flight per connection and
    /// direction before the proxy stops reading (back-pressure).
    pub tcp_chunks: usize,
}

impl ProxyConfig {
    /// A proxy named `name` on `listen` to `upstream`: seed 0, UDP
    /// sessions idle out after 60 s, 1024 datagrams or 4 MiB queued per
    /// session and direction, 1024 sessions, 64 TCP chunks in flight.
    pub fn new(
        name: impl Into<String>,
        listen: SocketAddr,
        upstream: Option<SocketAddr>,
    ) -> ProxyConfig {
        ProxyConfig {
            name: name.into(),
            listen,
            upstream,
            seed: 0,
            idle_timeout: Duration::from_secs(60),
            queue_packets: 1024,
            queue_bytes: 4 << 20,
            max_sessions: 1024,
            tcp_chunks: 64,
        }
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> ProxyConfig {
        self.seed = seed;
        self
    }

    /// Sets the UDP idle timeout.
    pub fn idle_timeout(mut self, d: Duration) -> ProxyConfig {
        self.idle_timeout = d;
        self
    }

    /// Sets the UDP queue bound in datagrams.
    pub fn queue_packets(mut self, n: usize) -> ProxyConfig {
        self.queue_packets = n;
        self
    }

    /// Sets the UDP session bound.
    pub fn max_sessions(mut self, n: usize) -> ProxyConfig {
        self.max_sessions = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        check_rule_name(&self.name)?;
        if self.idle_timeout.is_zero() {
            return Err(FieldError::new("idle_timeout", "must be above zero"));
        }
        for (f, n) in [
            ("queue_packets", self.queue_packets),
            ("queue_bytes", self.queue_bytes),
            ("max_sessions", self.max_sessions),
            ("tcp_chunks", self.tcp_chunks),
        ] {
            if n == 0 {
                return Err(FieldError::new(f, "must be 1 or more"));
            }
        }
        Ok(())
    }
}

/// Why a change to a proxy was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProxyError {
    /// A field is wrong.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No toxic or rule of that name.
    #[error("no {what} named `{name}`")]
    NotFound {
        /// `toxic`, `partition` or `proxy`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A toxic of that name exists.
    #[error("a toxic named `{0}` exists; update it instead")]
    Exists(String),
}

/// The rules in force, replaced whole on every change.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rules {
    pub toxics: Vec<Toxic>,
    pub partitions: BTreeMap<String, Partition>,
}

impl Rules {
    /// Whether a partition cuts `stream` of `client`.
    pub fn cut(&self, client: SocketAddr, stream: Stream) -> bool {
        self.partitions.values().any(|p| p.drops(client, stream))
    }

    pub fn of(&self, stream: Stream) -> impl Iterator<Item = &Toxic> {
        self.toxics.iter().filter(move |t| t.stream == stream)
    }

    pub fn blackhole(&self, stream: Stream) -> bool {
        self.of(stream)
            .any(|t| matches!(t.kind, ToxicKind::Blackhole))
    }

    /// The summed delay of the latency toxics of `stream`.
    pub fn delay(&self, stream: Stream, rng: &mut fastrand::Rng) -> Duration {
        self.of(stream).map(|t| t.delay(rng)).sum()
    }

    /// The tightest bandwidth cap of `stream`, bytes per second.
    pub fn bandwidth(&self, stream: Stream) -> Option<u64> {
        self.of(stream)
            .filter_map(|t| match t.kind {
                ToxicKind::Bandwidth { bytes_per_sec } => Some(bytes_per_sec),
                _ => None,
            })
            .min()
    }

    /// The combined loss probability of `stream`.
    pub fn loss(&self, stream: Stream) -> f64 {
        let keep: f64 = self
            .of(stream)
            .filter_map(|t| match t.kind {
                ToxicKind::Loss { probability } => Some(1.0 - probability),
                _ => None,
            })
            .product();
        1.0 - keep
    }

    /// The lowest reset threshold of `stream`.
    pub fn reset_after(&self, stream: Stream) -> Option<u64> {
        self.of(stream)
            .filter_map(|t| match t.kind {
                ToxicKind::Reset { after_bytes } => Some(after_bytes),
                _ => None,
            })
            .min()
    }

    /// The first slicer of `stream`: (average, variation, delay).
    pub fn slicer(&self, stream: Stream) -> Option<(usize, usize, Duration)> {
        self.of(stream).find_map(|t| match t.kind {
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay_us,
            } => Some((
                average_size,
                size_variation,
                Duration::from_micros(delay_us),
            )),
            _ => None,
        })
    }
}

/// Why traffic was dropped, as counted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Why {
    Loss,
    Blackhole,
    Partition,
    QueueFull,
    SessionsFull,
    NoUpstream,
    SendFailed,
}

/// A proxy's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub open: AtomicU64,
    pub expired: AtomicU64,
    pub packets: [AtomicU64; 2],
    pub bytes: [AtomicU64; 2],
    pub resets: AtomicU64,
    pub slices: AtomicU64,
    pub connect_failed: AtomicU64,
    drops: [AtomicU64; 7],
}

pub(crate) fn dir(s: Stream) -> usize {
    usize::from(s == Stream::Downstream)
}

impl Counters {
    pub fn drop(&self, why: Why) {
        self.drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn passed(&self, s: Stream, bytes: usize) {
        self.packets[dir(s)].fetch_add(1, Ordering::Relaxed);
        self.bytes[dir(s)].fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Traffic counts in one direction.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Flow {
    /// Datagrams (UDP) or writes (TCP) forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
}

/// What was dropped, by reason. For UDP each count is datagrams; for TCP
/// `blackhole` and `partition` count discarded reads.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Drops {
    /// A `loss` toxic (UDP).
    pub loss: u64,
    /// A `blackhole` toxic.
    pub blackhole: u64,
    /// A partition rule.
    pub partition: u64,
    /// A full session queue (UDP).
    pub queue_full: u64,
    /// No room for another session (UDP).
    pub sessions_full: u64,
    /// No upstream set.
    pub no_upstream: u64,
    /// The forwarding send failed.
    pub send_failed: u64,
}

/// A proxy's counters at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted or UDP sessions opened.
    pub connections: u64,
    /// Open now.
    pub open: u64,
    /// UDP sessions closed for idleness.
    pub expired: u64,
    /// Client to upstream.
    pub upstream: Flow,
    /// Upstream to client.
    pub downstream: Flow,
    /// TCP connections reset by a `reset` toxic.
    pub resets: u64,
    /// TCP slices written by a `slicer` toxic.
    pub slices: u64,
    /// TCP connections to the upstream that failed.
    pub connect_failed: u64,
    /// Drops by reason.
    pub dropped: Drops,
}

/// The state of one proxy, shared by its tasks and handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: ProxyConfig,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub upstream: ArcSwap<Option<SocketAddr>>,
    pub rules: ArcSwap<Rules>,
    edit: Mutex<()>,
    /// Bumped on every change (rules or upstream).
    pub changed: watch::Sender<u64>,
    pub counters: Counters,
    next_stream: AtomicU64,
}

impl Shared {
    pub fn new(cfg: ProxyConfig, protocol: Protocol, listen: SocketAddr) -> Arc<Shared> {
        Arc::new(Shared {
            upstream: ArcSwap::from_pointee(cfg.upstream),
            cfg,
            protocol,
            listen,
            rules: ArcSwap::from_pointee(Rules::default()),
            edit: Mutex::new(()),
            changed: watch::Sender::new(0),
            counters: Counters::default(),
            next_stream: AtomicU64::new(0),
        })
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Whether a partition or blackhole drops `stream` of `client` under
    /// `rules` (counted when it does).
    pub fn cut_or_blackholed(&self, rules: &Rules, client: SocketAddr, stream: Stream) -> bool {
        if rules.cut(client, stream) {
            self.counters.drop(Why::Partition);
            return true;
        }
        if rules.blackhole(stream) {
            self.counters.drop(Why::Blackhole);
            return true;
        }
        false
    }

    pub fn upstream(&self) -> Option<SocketAddr> {
        **self.upstream.load()
    }

    /// Two generators for a new connection or session (one per
    /// direction), seeded from the proxy's seed and its number.
    pub fn rngs(&self) -> [fastrand::Rng; 2] {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let base = mix(self.cfg.seed ^ mix(n));
        [
            fastrand::Rng::with_seed(base),
            fastrand::Rng::with_seed(mix(base ^ 0x5151_5151)),
        ]
    }

    fn edit(&self, f: impl FnOnce(&mut Rules) -> Result<(), ProxyError>) -> Result<(), ProxyError> {
        let _g = self
            .edit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut r = Rules::clone(&self.rules.load());
        f(&mut r)?;
        self.rules.store(Arc::new(r));
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }
}

/// SplitMix64's finaliser: spreads a counter over 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Changes and reads a running proxy. Cheap to clone; every change takes
/// effect for the next chunk or datagram.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ProxyHandle {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// TCP or UDP.
    pub fn protocol(&self) -> Protocol {
        self.shared.protocol
    }

    /// Where it listens (the address clients use).
    pub fn listen_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Where it forwards.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.shared.upstream()
    }

    /// Points it at another upstream. New TCP connections and UDP
    /// sessions use it; UDP sessions to the old one are closed.
    pub fn set_upstream(&self, addr: SocketAddr) {
        self.shared.upstream.store(Arc::new(Some(addr)));
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// The toxics in force, in the order they were added.
    pub fn toxics(&self) -> Vec<Toxic> {
        self.shared.rules().toxics.clone()
    }

    /// Adds a toxic.
    ///
    /// # Errors
    /// An invalid toxic (for this protocol) or a taken name.
    pub fn add_toxic(&self, t: Toxic) -> Result<(), ProxyError> {
        t.validate(self.shared.protocol)?;
        self.shared.edit(|r| {
            if r.toxics.iter().any(|x| x.name == t.name) {
                return Err(ProxyError::Exists(t.name.clone()));
            }
            r.toxics.push(t);
            Ok(())
        })
    }

    /// Replaces the toxic of the same name.
    ///
    /// # Errors
    /// An invalid toxic or no toxic of that name.
    pub fn update_toxic(&self, t: Toxic) -> Result<(), ProxyError> {
        t.validate(self.shared.protocol)?;
        self.shared.edit(|r| {
            let slot = r
                .toxics
                .iter_mut()
                .find(|x| x.name == t.name)
                .ok_or_else(|| ProxyError::NotFound {
                    what: "toxic",
                    name: t.name.clone(),
                })?;
            *slot = t;
            Ok(())
        })
    }

    /// Removes a toxic.
    ///
    /// # Errors
    /// No toxic of that name.
    pub fn remove_toxic(&self, name: &str) -> Result<(), ProxyError> {
        self.shared.edit(|r| {
            let before = r.toxics.len();
            r.toxics.retain(|t| t.name != name);
            if r.toxics.len() == before {
                return Err(ProxyError::NotFound {
                    what: "toxic",
                    name: name.to_string(),
                });
            }
            Ok(())
        })
    }

    /// Sets (adds or replaces) the partition rule `name`.
    ///
    /// # Errors
    /// A bad rule name.
    pub fn partition(&self, name: &str, p: Partition) -> Result<(), ProxyError> {
        check_rule_name(name)?;
        self.shared.edit(|r| {
            r.partitions.insert(name.to_string(), p);
            Ok(())
        })
    }

    /// Removes the partition rule `name` (heals it).
    ///
    /// # Errors
    /// No rule of that name.
    pub fn heal(&self, name: &str) -> Result<(), ProxyError> {
        self.shared.edit(|r| {
            r.partitions
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| ProxyError::NotFound {
                    what: "partition",
                    name: name.to_string(),
                })
        })
    }

    /// The partition rules in force.
    pub fn partitions(&self) -> BTreeMap<String, Partition> {
        self.shared.rules().partitions.clone()
    }

    /// Removes every toxic and partition rule.
    pub fn reset(&self) {
        let _ = self.shared.edit(|r| {
            *r = Rules::default();
            Ok(())
        });
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flow = |i: usize| Flow {
            packets: g(&c.packets[i]),
            bytes: g(&c.bytes[i]),
        };
        Stats {
            connections: g(&c.connections),
            open: g(&c.open),
            expired: g(&c.expired),
            upstream: flow(0),
            downstream: flow(1),
            resets: g(&c.resets),
            slices: g(&c.slices),
            connect_failed: g(&c.connect_failed),
            dropped: Drops {
                loss: g(&c.drops[Why::Loss as usize]),
                blackhole: g(&c.drops[Why::Blackhole as usize]),
                partition: g(&c.drops[Why::Partition as usize]),
                queue_full: g(&c.drops[Why::QueueFull as usize]),
                sessions_full: g(&c.drops[Why::SessionsFull as usize]),
                no_upstream: g(&c.drops[Why::NoUpstream as usize]),
                send_failed: g(&c.drops[Why::SendFailed as usize]),
            },
        }
    }

    /// The JSON form the control API shows.
    pub fn to_json(&self) -> serde_json::Value {
        let r = self.shared.rules();
        serde_json::json!({
            "name": self.name(),
            "protocol": self.protocol(),
            "listen": self.listen_addr().to_string(),
            "upstream": self.upstream().map(|a| a.to_string()),
            "seed": self.shared.cfg.seed,
            "toxics": r.toxics.iter().map(Toxic::to_json).collect::<Vec<_>>(),
            "partitions": r.partitions.iter().map(|(k, p)| (k.clone(), p.to_json())).collect::<serde_json::Map<_, _>>(),
            "stats": self.stats(),
        })
    }
}

/// A running proxy, TCP ([`Proxy::tcp`]) or UDP ([`Proxy::udp`]).
/// Dropping it stops it and closes every connection or session it carries.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) handle: ProxyHandle,
    pub(crate) task: AbortHandle,
}

impl Proxy {
    /// The handle that changes it.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// Where clients connect or send.
    pub fn listen_addr(&self) -> SocketAddr {
        self.handle.listen_addr()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
