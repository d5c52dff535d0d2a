//! The built-in demo upstream: answers every request with a JSON
//! description of it. `weir echo` runs it alone; `settings.echo_listen`
//! runs it inside `weir serve`, so the quickstart needs no other software.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves the echo upstream on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: Arc<str>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| echo(name.clone(), peer, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn echo(
    name: Arc<str>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    // Count the body without keeping it: the demo must stay small.
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        headers.insert(
            k.as_str().to_string(),
            serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
        );
    }
    let doc = serde_json::json!({
        "served_by": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "peer": peer.to_string(),
        "headers": headers,
        "body_len": body_len,
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
