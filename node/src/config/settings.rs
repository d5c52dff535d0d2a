//! `settings:`, the process-wide part of the config (listeners, workers,
//! header and body limits, timeouts, consumer headers, cache size), with
//! its defaults and checks. Plain data: nothing here runs anything.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problems;

/// Process-wide settings. Changing `listen` or `workers` needs a restart;
/// everything else is picked up by a reload.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener (health, status).
    pub admin_listen: SocketAddr,
    /// Further names the admin API may be addressed by (`Host` and
    /// `Origin`), `name` (any port) or `name:port`: its own address,
    /// `localhost` on loopback and the Raft advertise address are always
    /// taken, every other name is refused (ADR 0040).
    pub admin_hosts: Vec<String>,
    /// Runtime worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// How long a graceful shutdown waits for requests in flight.
    #[serde(with = "crate::config::duration")]
    pub drain_timeout: Duration,
    /// How long a client may take to send the request head.
    #[serde(with = "crate::config::duration")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes; larger
    /// heads get 431.
    pub max_header_bytes: usize,
    /// Most header fields a request may carry (each value of a repeated
    /// header counts); more get 431.
    pub max_header_count: usize,
    /// Largest request body in bytes; 0 means unlimited. Larger bodies get
    /// 413.
    pub max_body_bytes: u64,
    /// Value of the `Via` header the gateway adds; empty disables it.
    pub via: String,
    /// Also run the built-in echo upstream on this address (demos, tests).
    pub echo_listen: Option<SocketAddr>,
    /// Headers that tell the upstream which consumer was authenticated.
    /// The client's own copies of these headers are always removed.
    pub consumer_headers: ConsumerHeaders,
    /// Bytes the node's response cache may hold (bodies and headers),
    /// shared by every route with `proxy-cache`.
    pub cache_max_bytes: u64,
    /// Most client connections the proxy listener holds open at once;
    /// past it new ones are closed as soon as they are accepted. Lowered
    /// at start to what the file descriptor limit allows.
    pub max_connections: usize,
    /// Most connections one client IP may hold open on the proxy
    /// listener; 0 means no per-IP cap (the right choice behind a load
    /// balancer or NAT, where many clients share an address).
    pub max_connections_per_ip: usize,
    /// How long a new proxy connection may stay silent before its first
    /// byte.
    #[serde(with = "crate::config::duration")]
    pub first_byte_timeout: Duration,
    /// How long a proxy connection may sit idle between requests
    /// (HTTP/1.1 keep-alive; HTTP/2 with no stream open, however many
    /// PING or SETTINGS frames it sends).
    #[serde(with = "crate::config::duration")]
    pub idle_timeout: Duration,
    /// Requests one proxy connection may carry; then HTTP/1.1 closes it
    /// after the response and HTTP/2 sends GOAWAY. 0 means no limit.
    pub max_requests_per_connection: u64,
    /// Most connections the admin listener holds open at once, kept apart
    /// from the proxy's so proxy traffic never starves it.
    pub admin_max_connections: usize,
    /// How long an admin connection may take to send its first byte and
    /// then its request head.
    #[serde(with = "crate::config::duration")]
    pub admin_header_read_timeout: Duration,
    /// How long an admin connection may sit idle between requests; above
    /// the Raft client's own pool idle time (30 s), so the client always
    /// closes first and a Raft RPC never lands on a closing connection.
    #[serde(with = "crate::config::duration")]
    pub admin_idle_timeout: Duration,
}

/// Names of the headers carrying the authenticated consumer upstream; an
/// empty name disables that header.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerHeaders {
    /// The consumer's name.
    pub name: String,
    /// The consumer's groups, comma-separated.
    pub groups: String,
}

impl Default for ConsumerHeaders {
    fn default() -> Self {
        ConsumerHeaders {
            name: "x-consumer-name".to_string(),
            groups: "x-consumer-groups".to_string(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "0.0.0.0:9080".parse().expect("static address"),
            admin_listen: "127.0.0.1:9180".parse().expect("static address"),
            admin_hosts: Vec::new(),
            workers: 0,
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            max_body_bytes: 0,
            via: "1.1 weir".to_string(),
            echo_listen: None,
            consumer_headers: ConsumerHeaders::default(),
            cache_max_bytes: 256 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_requests_per_connection: 0,
            admin_max_connections: 256,
            admin_header_read_timeout: Duration::from_secs(10),
            admin_idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Upper bound of `settings.max_header_count`.
pub const MAX_HEADER_COUNT: usize = 10_000;

/// Upper bound of the connection caps (`settings.max_connections` and
/// the like): far beyond what one process can hold open.
pub const MAX_CONNECTIONS: usize = 10_000_000;

/// Upper bound of the connection timeouts: a connection held longer than
/// this by one state is not a client being slow.
pub const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);

impl Settings {
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.workers > 1024 {
            p.push(
                "settings.workers",
                "must be at most 1024 (0 means one per core)",
            );
        }
        if self.max_header_bytes < 1024 {
            p.push("settings.max_header_bytes", "must be at least 1024");
        }
        if !(1..=MAX_HEADER_COUNT).contains(&self.max_header_count) {
            p.push(
                "settings.max_header_count",
                format!("must be between 1 and {MAX_HEADER_COUNT}"),
            );
        }
        for (i, h) in self.admin_hosts.iter().enumerate() {
            let ok = h.parse::<http::uri::Authority>().is_ok_and(|a| {
                !a.host().is_empty() && !a.as_str().contains('@') && a.as_str() == h.as_str()
            });
            if !ok {
                p.push(
                    format!("settings.admin_hosts[{i}]"),
                    format!("`{h}` is not a host name or host:port"),
                );
            }
        }
        super::duration::check_max(
            p,
            "settings.drain_timeout".into(),
            self.drain_timeout,
            super::duration::MAX_TIMEOUT,
        );
        for (field, t) in [
            ("settings.header_read_timeout", self.header_read_timeout),
            ("settings.first_byte_timeout", self.first_byte_timeout),
            ("settings.idle_timeout", self.idle_timeout),
            (
                "settings.admin_header_read_timeout",
                self.admin_header_read_timeout,
            ),
            ("settings.admin_idle_timeout", self.admin_idle_timeout),
        ] {
            if t.is_zero() {
                p.push(field, "must be greater than zero");
            } else if t > MAX_CONNECTION_TIMEOUT {
                p.push(field, "must be at most 1h");
            }
        }
        for (field, n, min) in [
            ("settings.max_connections", self.max_connections, 1),
            (
                "settings.max_connections_per_ip",
                self.max_connections_per_ip,
                0,
            ),
            (
                "settings.admin_max_connections",
                self.admin_max_connections,
                1,
            ),
        ] {
            if !(min..=MAX_CONNECTIONS).contains(&n) {
                p.push(
                    field,
                    format!("must be between {min} and {MAX_CONNECTIONS}"),
                );
            }
        }
        if !self.via.is_empty() && http::HeaderValue::from_str(&self.via).is_err() {
            p.push("settings.via", "is not a valid header value");
        }
        for (key, name) in [
            ("name", &self.consumer_headers.name),
            ("groups", &self.consumer_headers.groups),
        ] {
            if !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(
                    format!("settings.consumer_headers.{key}"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }
}
