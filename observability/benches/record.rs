//! What access logging costs on the request path. The gateway's own
//! series are measured in `node/benches/record.rs`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_observability::access_log::{AccessLog, AccessRecord};
use weir_observability::config::AccessLogConfig;

fn record(c: &mut Criterion) {
    let cfg = AccessLogConfig {
        enabled: true,
        buffer: 1 << 16,
        ..AccessLogConfig::default()
    };
    let log = AccessLog::with_writer(&cfg, std::io::sink(), None).unwrap();
    let req = http::Request::get("http://api.example.com/users/42")
        .header("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e")
        .body(())
        .unwrap();
    c.bench_function("access_log_record_and_log", |b| {
        b.iter(|| {
            let mut r = AccessRecord::from_request(&req, IpAddr::V4(Ipv4Addr::LOCALHOST));
            r.status = 200;
            log.log(black_box(r));
        })
    });
    log.shutdown(Duration::from_secs(5));
}

criterion_group!(benches, record);
criterion_main!(benches);
