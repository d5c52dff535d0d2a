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
        }
    }
}

/// Upper bound of `settings.max_header_count`.
pub const MAX_HEADER_COUNT: usize = 10_000;

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
        for (name, d) in [
            ("drain_timeout", self.drain_timeout),
            ("header_read_timeout", self.header_read_timeout),
        ] {
            super::duration::check_max(
                p,
                format!("settings.{name}"),
                d,
                super::duration::MAX_TIMEOUT,
            );
        }
        if self.header_read_timeout.is_zero() {
            p.push("settings.header_read_timeout", "must be greater than zero");
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
