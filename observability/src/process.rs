//! Process metrics read from `/proc/self` at scrape time: memory, CPU,
//! file descriptors, threads and start time, under the names every
//! Prometheus client library uses (`process_*`), so stock dashboards work.
//!
//! Nothing is sampled in the background; a scrape costs a few small file
//! reads. On systems without `/proc` the series are simply absent.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc` reports CPU times and start time in USER_HZ, which Linux fixes
/// at 100 on every architecture.
const USER_HZ: f64 = 100.0;

/// The metric names [`ProcessCollector`] exposes (counters without
/// `_total`).
pub const PROCESS_METRICS: [&str; 7] = [
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
];

/// One reading of the process's resource use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`None` when unlimited).
    pub max_fds: Option<u64>,
    /// Start time since the Unix epoch, in seconds.
    pub start_time_seconds: f64,
    /// OS threads.
    pub threads: u64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no `/proc` or it cannot be
    /// parsed.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s));
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        let mut p = parse_stat(&stat, boot_time?)?;
        p.resident_memory_bytes = status_kb(&status, "VmRSS:").unwrap_or(0) * 1024;
        p.open_fds = open_fds;
        p.max_fds = limits.as_deref().and_then(parse_max_fds);
        Some(p)
    }
}

/// Parses `/proc/self/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str, boot_time: u64) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `f[0]` is field 3 (state); field n is `f[n - 3]`.
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        virtual_memory_bytes: vsize,
        threads,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / USER_HZ,
        ..ProcessStats::default()
    })
}

fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Encodes [`ProcessStats`] on every scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent, in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
                p.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes.",
                p.virtual_memory_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                p.open_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                p.start_time_seconds,
            ),
            (
                "process_threads",
                "OS threads in the process.",
                p.threads as f64,
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(max) = p.max_fds {
            ConstGauge::new(max as f64).encode(encoder.encode_descriptor(
                "process_max_fds",
                "Soft limit on open file descriptors.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_paren() {
        // A command name with spaces and parentheses, as a process may set.
        let stat = "1234 (we ir) (x)) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2000 18446744073709551615";
        let p = parse_stat(stat, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_memory_bytes, 104_857_600);
        assert_eq!(p.start_time_seconds, 1_700_000_000.0 + 123.45);
    }

    #[test]
    fn limits_and_status_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_max_fds(unlimited), None);
        assert_eq!(
            status_kb("Name:\tweir\nVmRSS:\t   20480 kB\n", "VmRSS:"),
            Some(20480)
        );
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_sanely() {
        let p = ProcessStats::read().expect("/proc is readable");
        assert!(p.resident_memory_bytes > 1024 * 1024);
        assert!(p.virtual_memory_bytes >= p.resident_memory_bytes);
        assert!(p.open_fds >= 3);
        assert!(p.threads >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 3600.0);
    }
}
