//! weir's gateway node: the data plane (listeners, routing, balancing,
//! upstream pools, retries, forwarding headers, JSON errors), the declarative
//! config and its hot reload, the admin API, and the `weir` command line.
//!
//! It does not own cluster state (that is `weir-cluster`) nor log export
//! (`weir-observability`). Config enters as plain data ([`config`]), is
//! checked as a whole ([`compile`]) and built into an immutable
//! [`snapshot::Snapshot`]; the data path ([`proxy`], [`server`]) only ever
//! reads snapshots. [`admin`] serves the admin API, one file per concern;
//! [`start`] starts a node in file mode or store mode and follows the
//! store; [`cli`] parses the command line and holds the admin client.
//! `docs/layout.md` lists where everything lives.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod body;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod cluster_limits;
pub mod cluster_mesh;
pub mod cluster_metrics;
pub mod compile;
pub mod config;
pub mod conn;
pub mod conn_guard;
pub mod consumer;
pub mod docs;
pub mod echo;
pub mod error;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod plugin;
pub mod proxy;
pub mod redis_limits;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod start;
pub mod stored;
pub mod stores;
pub mod telemetry;
pub mod upstream;
pub mod uri_path;
