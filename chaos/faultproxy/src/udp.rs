//! The UDP fault proxy: one listening socket for clients and, per client
//! source address, a session with its own socket connected to the
//! upstream, so the upstream sees one peer per client and its replies go
//! back to the client they answer. Each datagram meets the rules of its
//! direction as it arrives (partition, blackhole, loss: dropped and
//! counted) and waits in its session's queue for that direction until due
//! (latency and jitter; jitter may reorder, as on a real network); a
//! sender per queue paces it to the bandwidth cap. Queues are bounded in
//! datagrams and bytes: what does not fit is dropped and counted
//! (`queue_full`), so a slow or blackholed link never grows memory without
//! bound. Sessions are bounded in number and close after `idle_timeout`
//! with nothing either way. A partition or blackhole that begins while a
//! datagram waits drops it at send time too.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::proxy::{Proxy, ProxyConfig, ProxyHandle, Shared, Why};
use crate::tcp::invalid;
use crate::toxic::{Protocol, Stream};

/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

impl Proxy {
    /// Starts a UDP proxy: binds `cfg.listen` and forwards.
    ///
    /// # Errors
    /// Bad settings (the field is named) or a socket that cannot be bound.
    pub async fn udp(cfg: ProxyConfig) -> std::io::Result<Proxy> {
        cfg.validate().map_err(invalid)?;
        let socket = Arc::new(UdpSocket::bind(cfg.listen).await?);
        let listen = socket.local_addr()?;
        let shared = Shared::new(cfg, Protocol::Udp, listen);
        let task = tokio::spawn(run(shared.clone(), socket)).abort_handle();
        Ok(Proxy {
            handle: ProxyHandle { shared },
            task,
        })
    }
}

/// Datagrams waiting for their due time, earliest first, bounded.
struct DelayQueue {
    inner: Mutex<QueueInner>,
    notify: Notify,
    max_packets: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct QueueInner {
    heap: BinaryHeap<Reverse<(Instant, u64, Bytes)>>,
    bytes: usize,
    seq: u64,
}

impl DelayQueue {
    fn new(cfg: &ProxyConfig) -> DelayQueue {
        DelayQueue {
            inner: Mutex::default(),
            notify: Notify::new(),
            max_packets: cfg.queue_packets,
            max_bytes: cfg.queue_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `d` for `due`; false when full.
    fn push(&self, due: Instant, d: Bytes) -> bool {
        let mut q = self.lock();
        if q.heap.len() >= self.max_packets || q.bytes + d.len() > self.max_bytes {
            return false;
        }
        q.seq += 1;
        q.bytes += d.len();
        let seq = q.seq;
        q.heap.push(Reverse((due, seq, d)));
        drop(q);
        // One consumer: a stored permit is never lost.
        self.notify.notify_one();
        true
    }

    /// The next datagram, once due.
    async fn pop(&self) -> Bytes {
        loop {
            let next = self.lock().heap.peek().map(|Reverse((due, _, _))| *due);
            match next {
                Some(due) if due <= Instant::now() => {
                    let mut q = self.lock();
                    if let Some(Reverse((_, _, d))) = q.heap.pop() {
                        q.bytes -= d.len();
                        return d;
                    }
                }
                Some(due) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = self.notify.notified() => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }
}

/// One client's session.
struct Session {
    /// Queue towards the upstream.
    up: Arc<DelayQueue>,
    /// Milliseconds since the proxy started, at the last datagram either
    /// way.
    last: Arc<AtomicU64>,
    rng: Mutex<fastrand::Rng>,
    /// Its tasks, aborted when the session is dropped.
    _tasks: JoinSet<()>,
}

type Sessions = HashMap<SocketAddr, Session>;

async fn run(shared: Arc<Shared>, listen: Arc<UdpSocket>) {
    let epoch = Instant::now();
    let mut sessions: Sessions = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut changes = shared.changed.subscribe();
    let mut upstream = shared.upstream();
    let sweep_every = (shared.cfg.idle_timeout / 4).max(Duration::from_millis(10));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = listen.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                let d = Bytes::copy_from_slice(&buf[..n]);
                from_client(&shared, &listen, &mut sessions, epoch, client, d).await;
            }
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                let now = shared.upstream();
                if now != upstream {
                    upstream = now;
                    let n = sessions.len() as u64;
                    sessions.clear();
                    shared.counters.open.fetch_sub(n, Ordering::Relaxed);
                }
            }
            _ = sweep.tick() => {
                let now = ms_since(epoch);
                let idle = u64::try_from(shared.cfg.idle_timeout.as_millis()).unwrap_or(u64::MAX);
                let before = sessions.len();
                sessions.retain(|_, s| now.saturating_sub(s.last.load(Ordering::Relaxed)) < idle);
                let gone = (before - sessions.len()) as u64;
                if gone > 0 {
                    shared.counters.expired.fetch_add(gone, Ordering::Relaxed);
                    shared.counters.open.fetch_sub(gone, Ordering::Relaxed);
                }
            }
        }
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn from_client(
    shared: &Arc<Shared>,
    listen: &Arc<UdpSocket>,
    sessions: &mut Sessions,
    epoch: Instant,
    client: SocketAddr,
    d: Bytes,
) {
    let rules = shared.rules();
    if rules.cut(client, Stream::Upstream) {
        shared.counters.drop(Why::Partition);
        return;
    }
    if !sessions.contains_key(&client) {
        let Some(upstream) = shared.upstream() else {
            shared.counters.drop(Why::NoUpstream);
            return;
        };
        if sessions.len() >= shared.cfg.max_sessions {
            shared.counters.drop(Why::SessionsFull);
            return;
        }
        match open_session(shared, listen, epoch, client, upstream).await {
            Ok(s) => {
                sessions.insert(client, s);
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                shared.counters.open.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(proxy = %shared.cfg.name, error = %e, "faultproxy: cannot open a session");
                shared.counters.drop(Why::SendFailed);
                return;
            }
        }
    }
    let Some(s) = sessions.get(&client) else {
        return;
    };
    s.last.store(ms_since(epoch), Ordering::Relaxed);
    let mut rng = s
        .rng
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    enqueue(shared, &rules, Stream::Upstream, &s.up, &mut rng, d);
}

/// Applies blackhole, loss and latency, then queues.
fn enqueue(
    shared: &Shared,
    rules: &crate::proxy::Rules,
    stream: Stream,
    q: &DelayQueue,
    rng: &mut fastrand::Rng,
    d: Bytes,
) {
    if rules.blackhole(stream) {
        shared.counters.drop(Why::Blackhole);
        return;
    }
    let loss = rules.loss(stream);
    if loss > 0.0 && rng.f64() < loss {
        shared.counters.drop(Why::Loss);
        return;
    }
    let due = Instant::now() + rules.delay(stream, rng);
    if !q.push(due, d) {
        shared.counters.drop(Why::QueueFull);
    }
}

async fn open_session(
    shared: &Arc<Shared>,
    listen: &Arc<UdpSocket>,
    epoch: Instant,
    client: SocketAddr,
    upstream: SocketAddr,
) -> std::io::Result<Session> {
    // Same IP as the listening socket when it has one (loopback stays
    // loopback), else any of the upstream's family.
    let ip = match shared.listen.ip() {
        ip if !ip.is_unspecified() && ip.is_ipv4() == upstream.is_ipv4() => ip,
        _ if upstream.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
    socket.connect(upstream).await?;
    let [rng_up, rng_down] = shared.rngs();
    let up = Arc::new(DelayQueue::new(&shared.cfg));
    let down = Arc::new(DelayQueue::new(&shared.cfg));
    let last = Arc::new(AtomicU64::new(ms_since(epoch)));
    let mut tasks = JoinSet::new();
    // To the upstream.
    {
        let (shared, socket, up) = (shared.clone(), socket.clone(), up.clone());
        tasks.spawn(async move {
            send_loop(&shared, client, Stream::Upstream, &up, |d| {
                let socket = socket.clone();
                async move { socket.send(&d).await.map(|_| ()) }
            })
            .await;
        });
    }
    // From the upstream.
    {
        let (shared, socket, down, last) =
            (shared.clone(), socket.clone(), down.clone(), last.clone());
        tasks.spawn(async move {
            let mut rng = rng_down;
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok(n) = socket.recv(&mut buf).await {
                last.store(ms_since(epoch), Ordering::Relaxed);
                let rules = shared.rules();
                if rules.cut(client, Stream::Downstream) {
                    shared.counters.drop(Why::Partition);
                    continue;
                }
                let d = Bytes::copy_from_slice(&buf[..n]);
                enqueue(&shared, &rules, Stream::Downstream, &down, &mut rng, d);
            }
        });
    }
    // Back to the client.
    {
        let (shared, listen) = (shared.clone(), listen.clone());
        tasks.spawn(async move {
            send_loop(&shared, client, Stream::Downstream, &down, |d| {
                let listen = listen.clone();
                async move { listen.send_to(&d, client).await.map(|_| ()) }
            })
            .await;
        });
    }
    Ok(Session {
        up,
        last,
        rng: Mutex::new(rng_up),
        _tasks: tasks,
    })
}

/// Sends each datagram of `q` once due, paced to the bandwidth cap.
async fn send_loop<F, Fut>(
    shared: &Shared,
    client: SocketAddr,
    stream: Stream,
    q: &DelayQueue,
    send: F,
) where
    F: Fn(Bytes) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    let mut next_free = Instant::now();
    loop {
        let d = q.pop().await;
        let rules = shared.rules();
        if shared.cut_or_blackholed(&rules, client, stream) {
            continue;
        }
        if let Some(rate) = rules.bandwidth(stream) {
            tokio::time::sleep_until(next_free).await;
            let cost = Duration::from_secs_f64(d.len() as f64 / rate as f64);
            next_free = next_free.max(Instant::now()) + cost;
        }
        let len = d.len();
        match send(d).await {
            Ok(()) => shared.counters.passed(stream, len),
            Err(_) => shared.counters.drop(Why::SendFailed),
        }
    }
}
