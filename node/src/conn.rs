//! What the gateway knows about one client connection, fixed when the
//! connection is accepted and read by every request on it.
//!
//! It sits at the bottom of the data path: the listener fills it in, and the
//! proxy, plugins and telemetry read it; it imports nothing of theirs. It
//! does not own the connection itself (that is the listener's, in
//! `server`), nor anything learned per request.
//!
//! TLS will add what the handshake tells: the SNI server name and the
//! negotiated ALPN protocol go here, next to `proto`, as fields filled in
//! by the TLS acceptor (`None` on plain connections). Those are owned
//! values; once they exist, the listener shares one `ConnInfo` per
//! connection behind an `Arc` instead of copying it into each request.

use std::net::SocketAddr;

use crate::headers;

/// What the gateway knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer address.
    pub client: SocketAddr,
    /// The peer's IP as forwarding headers write it, formatted once per
    /// connection rather than per request.
    pub client_ip: headers::ClientIp,
    /// `http` or `https`, for forwarding headers.
    pub proto: &'static str,
}

impl ConnInfo {
    /// The connection from `client` over `proto`.
    pub fn new(client: SocketAddr, proto: &'static str) -> Self {
        ConnInfo {
            client,
            client_ip: headers::ClientIp::new(client.ip()),
            proto,
        }
    }
}
