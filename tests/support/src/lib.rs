//! Test support for whole-gateway tests: real upstream servers, a launcher
//! for a real `weir` process, and the client helpers those tests share.
//!
//! It owns:
//! - [`Upstream`]: an HTTP/1.1 + h2c server on `127.0.0.1:0` with echo,
//!   status, delay, large-body, sink and WebSocket endpoints, counters for
//!   hits, connections and concurrency, and kill/restart to simulate a
//!   target dying and recovering; [`unused_addr`] for a refusing address.
//! - [`Gateway`]: runs the `weir` binary in a temp dir with a given config,
//!   waits for its ready file, signals it, and kills it on drop.
//! - Clients: [`http_client`], [`h2c_client`], streamed uploads
//!   ([`upload_body`]) and counting downloads ([`drain_response`]) over a
//!   deterministic byte pattern ([`PatternBody`], [`PatternCheck`]), and
//!   [`RawHttp`] for bytes no client library would send.
//! - [`OtlpReceiver`]: a real OTLP trace collector (gRPC or HTTP/protobuf)
//!   that keeps every span it gets, and can stall or stop to play a hung or
//!   dead collector.
//! - [`TestCa`] and [`HttpsDocServer`]: a CA made at test time with
//!   `rcgen` and a real rustls HTTPS server of one swappable document.
//! - [`ScriptedUpstream`]: answers the test writes per path (status,
//!   headers, body parts), with [`Gate`]s that hold a body half way.
//! - [`RedisServer`]: a real `redis-server` on a free loopback port that
//!   can be stalled (SIGSTOP), killed and restarted on the same port.
//! - [`wait_until`] / [`wait_for`]: deadlines instead of sleeps.
//! - [`GatewayConfig`]: builds the config YAML of a test (upstreams,
//!   [`Route`]s, [`Service`]s, [`Consumer`]s, plugins) instead of each
//!   test file pasting its own.
//! - Request loops: [`statuses`], [`statuses_during`], [`concurrently`],
//!   [`until_status`], and [`assert_rejected`] for `weir validate`.
//!
//! It does not own the gateway's behaviour or its config schema: the
//! builder writes whatever keys the test names, unchecked, and this crate
//! only forces the listeners onto loopback ports ([`Gateway::config`]).
//!
//! Everything async runs on the caller's tokio runtime; a plain
//! `#[tokio::test]` (current-thread) is enough.

#![forbid(unsafe_code)]

mod client;
mod config;
mod gateway;
mod origin;
mod otlp;
mod pattern;
pub mod raftnode;
mod raw;
mod redis;
mod requests;
mod scripted;
mod tls;
mod upstream;
mod wait;

pub use client::{
    Drained, drain_response, h2c_client, http_client, upload_body, upload_body_chunked,
};
pub use config::{Consumer, GatewayConfig, Route, Service, ToYaml};
pub use gateway::{DEFAULT_READY_TIMEOUT, Gateway, GatewayBuilder, Ready, Signal};
pub use origin::{Origin, Script as OriginScript};
pub use otlp::{
    AttrValue, HistogramPoint, MetricData, NumberPoint, OtlpReceiver, ReceivedMetric,
    ReceivedMetrics, ReceivedSpan, ReceiverKind, SpanKind, SpanStatus,
};
pub use pattern::{CHUNK_SIZE, PatternBody, PatternCheck, pattern_byte};
pub use raw::{RawHttp, RawResponse};
pub use redis::{RedisOptions, RedisServer};
pub use requests::{assert_rejected, concurrently, count, statuses, statuses_during, until_status};
pub use scripted::{Gate, Script, ScriptedUpstream};
pub use tls::{HttpsDocServer, TestCa, TestCert};
pub use upstream::{Behaviour, RecordedRequest, Upstream, unused_addr};
pub use wait::{DEFAULT_WAIT, wait_for, wait_until};
