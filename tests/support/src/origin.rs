//! A scripted origin for cache tests: each path answers with the status,
//! headers and body chunks the test set, can hold its answer (or the rest
//! of its body) until the test releases it, answers `304` to a matching
//! `If-None-Match`, and counts the requests it gets per path.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::StreamBody;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a path answers.
#[derive(Debug, Clone)]
pub struct Script {
    /// Status of a full answer.
    pub status: u16,
    /// Response headers, e.g. `("cache-control", "max-age=60")`.
    pub headers: Vec<(String, String)>,
    /// Body chunks; the first is sent at once, the rest after the gate
    /// opens when [`Script::hold_body`] is set.
    pub chunks: Vec<Bytes>,
    /// Wait for the gate before answering at all.
    pub hold: bool,
    /// Wait for the gate after the first body chunk.
    pub hold_body: bool,
    /// Answer `304` (with the script's headers, no body) when the request's
    /// `If-None-Match` equals the script's `etag` header.
    pub conditional: bool,
}

impl Script {
    /// `200` with `body` and `headers`.
    pub fn ok(body: &str, headers: &[(&str, &str)]) -> Script {
        Script {
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            chunks: vec![Bytes::from(body.to_string())],
            hold: false,
            hold_body: false,
            conditional: true,
        }
    }

    /// The same script answering with `status`.
    pub fn status(mut self, status: u16) -> Script {
        self.status = status;
        self
    }
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<HashMap<String, Script>>,
    hits: Mutex<HashMap<String, u64>>,
    requests: Mutex<Vec<(String, HeaderMap)>>,
}

/// The scripted origin on `127.0.0.1:0`; stops when dropped.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    gate: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Origin {
    /// Starts an origin with no scripts (every path answers 404).
    ///
    /// # Panics
    /// If no port can be bound.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared::default());
        let (gate, _) = watch::channel(false);
        let s = shared.clone();
        let g = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                let g = g.subscribe();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(s.clone(), g.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            shared,
            gate,
            task,
        }
    }

    /// `host:port`, as a gateway target.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Sets how `path` answers from now on.
    pub fn script(&self, path: &str, script: Script) {
        lock(&self.shared.scripts).insert(path.to_string(), script);
    }

    /// Requests received on `path` (counted on arrival).
    pub fn hits(&self, path: &str) -> u64 {
        lock(&self.shared.hits).get(path).copied().unwrap_or(0)
    }

    /// Headers of the last request on `path`.
    pub fn last_headers(&self, path: &str) -> Option<HeaderMap> {
        lock(&self.shared.requests)
            .iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
    }

    /// Opens the gate: held answers and held bodies go on.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// Closes the gate again for later requests.
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    shared: Arc<Shared>,
    mut gate: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<UnsyncBoxBody<Bytes, BoxError>>, Infallible> {
    let path = req.uri().path().to_string();
    *lock(&shared.hits).entry(path.clone()).or_default() += 1;
    lock(&shared.requests).push((path.clone(), req.headers().clone()));
    let script = lock(&shared.scripts).get(&path).cloned();
    let Some(script) = script else {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    };
    if script.hold {
        let _ = gate.wait_for(|open| *open).await;
    }
    let mut headers = HeaderMap::new();
    for (n, v) in &script.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(n, v);
        }
    }
    let etag = headers.get(http::header::ETAG).cloned();
    let inm = req.headers().get(http::header::IF_NONE_MATCH);
    if script.conditional && etag.is_some() && inm == etag.as_ref() {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return Ok(r);
    }
    let status = StatusCode::from_u16(script.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let chunks = script.chunks.clone();
    let hold_body = script.hold_body;
    tokio::spawn(async move {
        for (i, c) in chunks.into_iter().enumerate() {
            if i == 1 && hold_body {
                let _ = gate.wait_for(|open| *open).await;
            }
            if tx.send(Ok(Frame::data(c))).await.is_err() {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

fn empty() -> UnsyncBoxBody<Bytes, BoxError> {
    http_body_util::Empty::new()
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}
