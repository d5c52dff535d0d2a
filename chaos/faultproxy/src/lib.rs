//! weir's fault proxies: user-space TCP and UDP proxies that sit between
//! two endpoints on loopback and make the link between them bad on
//! purpose, while it runs. The kernel here has no netem, and toxiproxy is
//! TCP-only, so this crate does both protocols itself (ADR 0036).
//!
//! - [`Proxy::tcp`]: latency with jitter, bandwidth cap, reset (RST after N
//!   bytes), blackhole (accepts, never forwards), slicing, each per
//!   direction ([`Stream::Upstream`]: client to upstream;
//!   [`Stream::Downstream`]: back).
//! - [`Proxy::udp`]: latency with jitter, loss, bandwidth, blackhole, one
//!   session socket per client source (replies find their client), idle
//!   session expiry, bounded queues whose drops are counted.
//! - [`Partition`] rules on either: drop the traffic of some client
//!   sources, or of every client (the whole proxy), both ways or one way.
//! - A [`ProxyHandle`] changes a running proxy; [`ControlServer`] serves a
//!   [`Registry`] of them over HTTP/JSON like toxiproxy's API.
//! - Every random choice comes from [`ProxyConfig::seed`].
//! - The `weir-faultproxy` binary runs the proxies of a [`file`] (for
//!   `deploy/compose`, where it stands in for the WAN between regions).
//!
//! It owns the proxies and their control API; it knows nothing of weir
//! (which links of a cluster go through a proxy is `weir-chaos`'s), and it
//! does not simulate what needs the kernel: MTU, reordering inside a TCP
//! stream, SYN loss or ICMP errors.
#![forbid(unsafe_code)]

pub mod control;
pub mod file;
pub mod proxy;
pub mod tcp;
pub mod toxic;
pub mod udp;

pub use control::{ControlServer, Registry, router};
pub use proxy::{Drops, Flow, Proxy, ProxyConfig, ProxyError, ProxyHandle, Stats};
pub use toxic::{Direction, FieldError, Partition, Protocol, Source, Stream, Toxic, ToxicKind};
