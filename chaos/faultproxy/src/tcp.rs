//! The TCP fault proxy: accepts clients, opens one upstream connection per
//! client and pumps bytes both ways through the toxics of each direction.
//! Per direction a reader stamps each chunk (up to 16 KiB) with its due
//! time (latency and jitter, drawn at read time so order is kept) and a
//! writer sends it when due, paced by the bandwidth cap and cut by the
//! slicer; the channel between them is bounded, so a slow direction stops
//! reading and the sender feels TCP back-pressure instead of the proxy
//! buffering without bound. A blackhole or partition discards what is read
//! (the connection stays open and silent); a reset closes both sockets
//! with SO_LINGER 0 (an RST each way). A client whose upstream direction
//! is cut when it connects is accepted but not connected upstream until
//! the cut heals. Rules are read per chunk, so changes apply at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::proxy::{Proxy, ProxyConfig, ProxyHandle, Shared, Why};
use crate::toxic::{FieldError, Protocol, Stream};

const CHUNK: usize = 16 * 1024;

impl Proxy {
    /// Starts a TCP proxy: binds `cfg.listen` and accepts.
    ///
    /// # Errors
    /// Bad settings (the field is named) or a socket that cannot be bound.
    pub async fn tcp(cfg: ProxyConfig) -> std::io::Result<Proxy> {
        cfg.validate().map_err(invalid)?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let listen = listener.local_addr()?;
        let shared = Shared::new(cfg, Protocol::Tcp, listen);
        let task = tokio::spawn(accept_loop(shared.clone(), listener)).abort_handle();
        Ok(Proxy {
            handle: ProxyHandle { shared },
            task,
        })
    }
}

pub(crate) fn invalid(e: FieldError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    // Connections live in the set: aborting this task drops it, which
    // aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((client, peer)) => {
                    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(connection(shared.clone(), client, peer));
                }
                Err(e) => {
                    tracing::debug!(proxy = %shared.cfg.name, error = %e, "faultproxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next() => {}
        }
    }
}

/// How a direction ended.
enum End {
    /// The source closed; the write side was shut down.
    Done,
    /// A reset toxic fired.
    Reset,
    /// A socket failed.
    Failed,
}

struct Open<'a>(&'a Shared);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(&shared);
    // A client cut off upstream is held, unconnected, until the cut heals
    // (its connection attempt "does not get through").
    let mut changes = shared.changed.subscribe();
    while shared.rules().cut(peer, Stream::Upstream) {
        if changes.changed().await.is_err() {
            return;
        }
    }
    let Some(up_addr) = shared.upstream() else {
        shared.counters.drop(Why::NoUpstream);
        return;
    };
    let upstream = match TcpStream::connect(up_addr).await {
        Ok(s) => s,
        Err(e) => {
            shared
                .counters
                .connect_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(proxy = %shared.cfg.name, upstream = %up_addr, error = %e, "faultproxy: upstream connect failed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let [mut rng_up, mut rng_down] = shared.rngs();
    let [mut rng_up2, mut rng_down2] = shared.rngs();
    let reset = {
        let up = direction(
            &shared,
            peer,
            Stream::Upstream,
            &mut cr,
            &mut uw,
            (&mut rng_up, &mut rng_up2),
        );
        let down = direction(
            &shared,
            peer,
            Stream::Downstream,
            &mut ur,
            &mut cw,
            (&mut rng_down, &mut rng_down2),
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let end = tokio::select! {
                e = &mut up, if !up_done => { up_done = true; e }
                e = &mut down, if !down_done => { down_done = true; e }
            };
            match end {
                End::Done if up_done && down_done => break false,
                End::Done => {}
                End::Reset => break true,
                End::Failed => break false,
            }
        }
    };
    if reset {
        shared.counters.resets.fetch_add(1, Ordering::Relaxed);
        for r in [&cr, &ur] {
            let _ = socket2::SockRef::from(r.as_ref()).set_linger(Some(Duration::ZERO));
        }
        // No FIN first: the halves close together, with an RST.
        cw.forget();
        uw.forget();
    }
}

/// Pumps one direction until its source closes, a reset fires or a socket
/// fails.
async fn direction(
    shared: &Shared,
    peer: SocketAddr,
    stream: Stream,
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    (read_rng, write_rng): (&mut fastrand::Rng, &mut fastrand::Rng),
) -> End {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(shared.cfg.tcp_chunks);
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let rules = shared.rules();
            if shared.cut_or_blackholed(&rules, peer, stream) {
                continue;
            }
            let due = Instant::now() + rules.delay(stream, read_rng);
            if tx
                .send((due, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        std::future::pending::<End>().await
    };
    let write = async move {
        let mut passed = 0u64;
        let mut next_free = Instant::now();
        while let Some((due, mut chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let rules = shared.rules();
            // A cut or blackhole that began while the chunk was on its way
            // loses it too.
            if shared.cut_or_blackholed(&rules, peer, stream) {
                continue;
            }
            let mut fire = false;
            if let Some(after) = rules.reset_after(stream) {
                let room = after.saturating_sub(passed);
                if (chunk.len() as u64) >= room {
                    chunk.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                    fire = true;
                }
            }
            let slicer = rules.slicer(stream);
            let rate = rules.bandwidth(stream);
            let mut first = true;
            while !chunk.is_empty() {
                let n = match slicer {
                    Some((avg, var, delay)) => {
                        if !first && !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        shared.counters.slices.fetch_add(1, Ordering::Relaxed);
                        let size = if var == 0 {
                            avg
                        } else {
                            write_rng.usize(avg - var..=avg + var)
                        };
                        size.min(chunk.len())
                    }
                    None => chunk.len(),
                };
                first = false;
                let piece = chunk.split_to(n);
                if let Err(e) = paced_write(to, &piece, rate, &mut next_free).await {
                    tracing::debug!(error = %e, "faultproxy: write failed");
                    return End::Failed;
                }
                shared.counters.passed(stream, piece.len());
                passed += piece.len() as u64;
            }
            if fire {
                return End::Reset;
            }
        }
        let _ = to.shutdown().await;
        End::Done
    };
    tokio::select! {
        e = write => e,
        e = read => e,
    }
}

/// Writes `data`, at most `rate` bytes per second when capped: in pieces
/// of a twentieth of a second's worth, each sent no earlier than the
/// previous ones allow.
async fn paced_write(
    to: &mut OwnedWriteHalf,
    data: &[u8],
    rate: Option<u64>,
    next_free: &mut Instant,
) -> std::io::Result<()> {
    let Some(rate) = rate else {
        return to.write_all(data).await;
    };
    let quantum = usize::try_from((rate / 20).max(1)).unwrap_or(usize::MAX);
    for piece in data.chunks(quantum) {
        tokio::time::sleep_until(*next_free).await;
        to.write_all(piece).await?;
        let cost = Duration::from_secs_f64(piece.len() as f64 / rate as f64);
        *next_free = (*next_free).max(Instant::now()) + cost;
    }
    Ok(())
}
