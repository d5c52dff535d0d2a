//! Helpers shared by the fault proxy tests.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Where test sockets bind.
pub const LOCAL: &str = "127.0.0.1:0";

/// A TCP upstream that echoes everything back.
pub async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind(LOCAL).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}
