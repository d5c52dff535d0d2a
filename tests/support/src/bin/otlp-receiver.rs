//! A standalone OTLP trace receiver for benchmarks: listens on the given
//! loopback address, counts the spans it receives without keeping them, and
//! prints the count every second and when stopped (SIGTERM or SIGINT).
//!
//! ```text
//! otlp-receiver 127.0.0.1:4317            # OTLP/gRPC
//! otlp-receiver 127.0.0.1:4318 --http     # OTLP/HTTP protobuf
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use weir_testsupport::{OtlpReceiver, ReceiverKind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: otlp-receiver ADDR:PORT [--http]");
        return ExitCode::from(2);
    };
    let kind = match args.next().as_deref() {
        None => ReceiverKind::Grpc,
        Some("--http") => ReceiverKind::HttpProtobuf,
        Some(other) => {
            eprintln!("otlp-receiver: unknown argument {other:?}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("otlp-receiver: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let receiver = OtlpReceiver::counting(listener, kind);
    println!("listening on {} ({kind:?})", receiver.addr());
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("otlp-receiver: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => println!("spans {}", receiver.span_count()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    println!("spans {}", receiver.span_count());
    ExitCode::SUCCESS
}
