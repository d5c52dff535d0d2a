//! Listeners and connection handling: accept, serve HTTP/1.1 and h2c on the
//! proxy port, answer the admin port, and drain on shutdown.
//!
//! Graceful shutdown: stop accepting, let every connection finish the
//! requests it has in flight (HTTP/1.1 connections close after their
//! current response, HTTP/2 ones get GOAWAY), and give up after the drain
//! timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn::ConnInfo;
use crate::proxy;
use crate::snapshot::State;

/// Addresses the server actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Binds a listener with a generous backlog and address reuse, so a
/// restarted node can bind again while old sockets sit in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// A running server.
pub struct Server {
    state: Arc<State>,
    proxy: TcpListener,
    admin: TcpListener,
    admin_router: Option<axum::Router>,
    /// Where the config came from, shown in status.
    pub config_path: Option<PathBuf>,
    /// Gossip membership, when clustering is on.
    pub cluster: crate::cluster::SharedCluster,
    /// Active health checks and the merged view.
    pub health: Arc<crate::health::HealthChecker>,
}

impl Server {
    /// Binds both listeners from the current snapshot's settings.
    pub fn bind(state: Arc<State>, config_path: Option<PathBuf>) -> std::io::Result<Server> {
        let settings = state.load().settings.clone();
        let proxy = bind(settings.listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {} (settings.listen): {e}",
                    settings.listen
                ),
            )
        })?;
        let admin = bind(settings.admin_listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {} (settings.admin_listen): {e}",
                    settings.admin_listen
                ),
            )
        })?;
        Ok(Server {
            state,
            proxy,
            admin,
            admin_router: None,
            config_path,
            cluster: None,
            health: Arc::default(),
        })
    }

    /// Serves `router` on the admin listener instead of the read-only
    /// default (health, readiness, status, metrics).
    pub fn set_admin_router(&mut self, router: axum::Router) {
        self.admin_router = Some(router);
    }

    /// The bound addresses.
    pub fn bound(&self) -> std::io::Result<Bound> {
        Ok(Bound {
            proxy: self.proxy.local_addr()?,
            admin: self.admin.local_addr()?,
        })
    }

    /// Serves until `shutdown` flips to true, then drains.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let settings = self.state.load().settings.clone();
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(settings.header_read_timeout)
            // Leave room above our own header limit so oversized heads reach
            // the handler and get a JSON 431 rather than a bare one.
            .max_buf_size((settings.max_header_bytes * 2).max(16 * 1024))
            // Same for the header count: hyper's own cap sits above ours.
            .max_headers((settings.max_header_count * 2).max(256));
        // No `pipeline_flush`: it lets hyper buffer response bodies without
        // bound when the client reads slower than the upstream sends.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(settings.max_header_bytes as u32)
            .max_concurrent_streams(1024);
        let builder = Arc::new(builder);

        let admin_router = self.admin_router.unwrap_or_else(|| {
            crate::admin::router(Arc::new(crate::admin::AdminCtx {
                state: self.state.clone(),
                store: None,
                keys: Vec::new(),
                applied_revision: Default::default(),
                cluster: self.cluster.clone(),
                health: self.health.clone(),
                stored_problems: Default::default(),
                hosts: crate::admin::Hosts::new(
                    self.admin.local_addr().unwrap_or(settings.admin_listen),
                    settings.admin_hosts.iter().map(String::as_str),
                ),
            }))
        });
        let admin_listener = self.admin;
        let (admin_stop_tx, mut admin_stop) = watch::channel(false);
        let admin_task = tokio::spawn(async move {
            let stop = async move {
                let _ = admin_stop.changed().await;
            };
            // Raft RPCs and admin answers are small writes: without
            // TCP_NODELAY, Nagle holds a response's second segment until the
            // peer's delayed ACK (about 40 ms on Linux).
            let admin_listener = admin_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(admin_listener, admin_router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "admin listener failed");
            }
        });

        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = self.proxy.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of fds or similar: back off briefly rather
                            // than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    serve_conn(&builder, &graceful, self.state.clone(), stream, peer);
                }
            }
        }
        drop(self.proxy);
        let in_flight = graceful.count();
        tracing::info!(connections = in_flight, drain_timeout = ?settings.drain_timeout, "shutting down: draining connections");
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections drained"),
            _ = tokio::time::sleep(settings.drain_timeout) => {
                tracing::warn!("drain timeout reached; closing remaining connections");
            }
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
    }
}

fn serve_conn(
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    state: Arc<State>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let conn_info = ConnInfo::new(peer, "http");
    let svc = service_fn(move |req| proxy::handle(state.clone(), conn_info, req));
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(error = %e, "connection ended with an error");
        }
    });
}
