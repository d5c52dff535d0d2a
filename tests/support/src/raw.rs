//! Raw HTTP/1.x over a TCP stream, for requests no client library would
//! send (malformed heads, smuggling attempts) and for pipelining.
//!
//! The writer sends bytes exactly as given; the reader parses responses one
//! at a time (`Content-Length`, chunked, or until close) and keeps whatever
//! follows for the next call. Every read is bounded by a timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Default bound on each read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A response head larger than this is treated as an error.
const MAX_HEAD: usize = 1024 * 1024;

/// A raw HTTP/1.x connection.
#[derive(Debug)]
pub struct RawHttp {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

/// One response as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase, possibly empty.
    pub reason: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }
}

impl RawHttp {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<RawHttp> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawHttp {
            stream,
            buf: Vec::new(),
            timeout: READ_TIMEOUT,
        })
    }

    /// Speaks over `stream`, connected by the caller (from a chosen source
    /// address, say).
    pub fn from_stream(stream: TcpStream) -> RawHttp {
        let _ = stream.set_nodelay(true);
        RawHttp {
            stream,
            buf: Vec::new(),
            timeout: READ_TIMEOUT,
        }
    }

    /// Connects, sends `request` and reads one response.
    pub async fn exchange(addr: SocketAddr, request: impl AsRef<[u8]>) -> io::Result<RawResponse> {
        let mut conn = RawHttp::connect(addr).await?;
        conn.send(request).await?;
        conn.read_response().await
    }

    /// Bounds each read by `timeout` instead of 10 s.
    pub fn with_timeout(mut self, timeout: Duration) -> RawHttp {
        self.timeout = timeout;
        self
    }

    /// Writes `bytes` exactly as given.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.stream.write_all(bytes.as_ref()).await?;
        self.stream.flush().await
    }

    /// Closes the writing half, as a client that has sent everything.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Reads one response, body included. A `1xx` response is returned on
    /// its own; call again for the final one.
    pub async fn read_response(&mut self) -> io::Result<RawResponse> {
        self.read(true).await
    }

    /// Reads one response to a `HEAD` request: the head, never a body.
    pub async fn read_head_response(&mut self) -> io::Result<RawResponse> {
        self.read(false).await
    }

    /// Reads everything until the peer closes (a reset counts as closing),
    /// including bytes left over from earlier reads.
    ///
    /// # Errors
    /// `TimedOut` if the connection stays open past the read timeout.
    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// The underlying stream, for anything else. Bytes already read but not
    /// consumed are lost.
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }

    async fn read(&mut self, with_body: bool) -> io::Result<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head larger than 1 MiB"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a full response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end + 4).collect();
        let head = String::from_utf8_lossy(&head[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid(&format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let headers = lines
            .map(|line| match line.split_once(':') {
                Some((name, value)) => Ok((name.to_string(), value.trim().to_string())),
                None => Err(invalid(&format!("bad header line {line:?}"))),
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut response = RawResponse {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        let bodiless = !with_body || (100..200).contains(&status) || status == 204 || status == 304;
        if bodiless {
            return Ok(response);
        }
        let chunked = response
            .header_all("transfer-encoding")
            .last()
            .is_some_and(|te| te.to_ascii_lowercase().trim_end().ends_with("chunked"));
        response.body = if chunked {
            self.read_chunked().await?
        } else if let Some(len) = response.header("content-length") {
            let len = len
                .parse::<usize>()
                .map_err(|_| invalid(&format!("bad content-length {len:?}")))?;
            self.read_exact(len).await?
        } else {
            self.read_to_end().await?
        };
        Ok(response)
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(&format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn read_exact(&mut self, len: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body ended after {} of {len} bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Reads what is available into the buffer; 0 means the peer closed.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data from the peer within {:?}", self.timeout),
                )
            })??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}
