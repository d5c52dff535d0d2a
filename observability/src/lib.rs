//! Logging, metrics and the access log, shared by every weir crate.
//!
//! Owns how `tracing` events leave the process (a formatted log on stderr,
//! filtered by `WEIR_LOG` or `RUST_LOG`; other crates only ever call
//! [`init`]), the Prometheus metrics machinery ([`metrics`]: registry,
//! capped label-set families, exposition; process metrics from
//! [`process`]), the JSON access log ([`access_log`]), OTLP trace export
//! ([`trace`]) and OTLP metrics export ([`metrics_export`]), which share
//! one reading of the `OTEL_*` settings ([`otlp`]). It does not own what is
//! measured or logged: the gateway's metric catalogue (its series, names
//! and label vocabularies) is `weir_node::metrics`, installed into the
//! registry and recorded from the gateway's request path.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod config;
pub mod metrics;
pub mod metrics_export;
pub mod otlp;
pub mod process;
pub mod throttle;
pub mod trace;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Crates whose own events are debug detail: at a global level above
/// debug they are off, unless the filter names them (`openraft=info`).
/// weir reports what an operator needs from them in its own words (Raft:
/// one line per leadership change, membership change and snapshot).
const QUIET_DEPS: &[&str] = &["openraft"];

/// Crates that log once per misbehaving peer connection (h2 warns on every
/// connection it closes for too many resets): at a global level above
/// debug they are off unless named, and weir logs those connections
/// itself, rate-limited ([`throttle`]).
const PER_CONNECTION_DEPS: &[&str] = &["h2"];

/// `filter` with the [`QUIET_DEPS`] turned off when its global level is
/// above debug and it does not name them.
pub fn with_quiet_deps(filter: &str) -> String {
    quieted(filter, QUIET_DEPS)
}

/// `filter` with `deps` turned off when its global level is above debug
/// and it does not name them.
fn quieted(filter: &str, deps: &[&str]) -> String {
    let global = filter
        .split(',')
        .map(str::trim)
        .rfind(|d| !d.is_empty() && !d.contains('='))
        .unwrap_or("error")
        .to_ascii_lowercase();
    if matches!(global.as_str(), "debug" | "trace") {
        return filter.to_string();
    }
    let mut out = filter.to_string();
    for dep in deps {
        if !filter.split(',').any(|d| d.trim().starts_with(dep)) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(dep);
            out.push_str("=off");
        }
    }
    out
}

/// Installs the global subscriber. Calling it twice is harmless: the second
/// call keeps the first subscriber.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = std::env::var("WEIR_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_level.to_string());
    let quiet = |f: &str| quieted(&with_quiet_deps(f), PER_CONNECTION_DEPS);
    let filter =
        EnvFilter::try_new(quiet(&filter)).unwrap_or_else(|_| EnvFilter::new(quiet(default_level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::with_quiet_deps;

    #[test]
    fn openraft_is_debug_detail_unless_named() {
        assert_eq!(with_quiet_deps("info"), "info,openraft=off");
        assert_eq!(
            with_quiet_deps("warn,hyper=info"),
            "warn,hyper=info,openraft=off"
        );
        assert_eq!(with_quiet_deps("debug"), "debug");
        assert_eq!(
            with_quiet_deps("info,openraft=debug"),
            "info,openraft=debug"
        );
        assert_eq!(with_quiet_deps(""), "openraft=off");
    }

    #[test]
    fn per_connection_warnings_of_h2_are_off_unless_named() {
        use super::{PER_CONNECTION_DEPS, quieted};
        assert_eq!(quieted("info", PER_CONNECTION_DEPS), "info,h2=off");
        assert_eq!(quieted("info,h2=warn", PER_CONNECTION_DEPS), "info,h2=warn");
        assert_eq!(quieted("trace", PER_CONNECTION_DEPS), "trace");
    }
}
