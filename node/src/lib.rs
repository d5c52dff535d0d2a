//! weir's gateway node: the data plane (listeners, routing, balancing,
//! upstream pools, retries, forwarding headers, JSON errors), the declarative
//! config and its hot reload, and the `weir` command line.
//!
//! It does not own cluster state (that is `weir-cluster`) nor log export
//! (`weir-observability`). Config enters through [`config`], is compiled once
//! into an immutable [`snapshot::Snapshot`], and the data path only ever
//! reads snapshots.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod cache;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cluster_metrics;
pub mod config;
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
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod store_mode;
pub mod stored;
pub mod telemetry;
pub mod traffic;
pub mod upstream;
