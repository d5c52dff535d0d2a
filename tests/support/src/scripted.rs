//! An upstream whose answers the test writes: status, headers and body
//! parts per path, optionally stopping after some parts until the test
//! opens a [`Gate`]. For responses the echo [`crate::Upstream`] cannot
//! make (chosen `Content-Type`, `Content-Encoding`, `ETag`, a body that
//! stalls half way).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A signal a scripted body waits for; [`Gate::open`] lets it go on.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    /// Opens the gate for every body waiting on it (now or later).
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

#[derive(Clone)]
enum Part {
    Data(Bytes),
    Wait(Gate),
}

/// One scripted answer.
#[derive(Clone)]
pub struct Script {
    status: StatusCode,
    headers: Vec<(String, String)>,
    parts: Vec<Part>,
}

impl Script {
    /// A 200 with no headers and an empty body.
    pub fn ok() -> Script {
        Script::status(200)
    }

    /// An answer with this status.
    ///
    /// # Panics
    /// If `code` is not a valid status.
    pub fn status(code: u16) -> Script {
        Script {
            status: StatusCode::from_u16(code).expect("valid status"),
            headers: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// Adds a response header (repeat to send several lines).
    pub fn header(mut self, name: &str, value: &str) -> Script {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Appends a body part, sent as its own chunk.
    pub fn body(mut self, data: impl Into<Bytes>) -> Script {
        self.parts.push(Part::Data(data.into()));
        self
    }

    /// Sends nothing more until `gate` is open.
    pub fn wait(mut self, gate: &Gate) -> Script {
        self.parts.push(Part::Wait(gate.clone()));
        self
    }
}

struct Shared {
    scripts: Mutex<HashMap<String, Script>>,
    hits: Mutex<HashMap<String, u64>>,
}

/// A real HTTP/1.1 + h2c server on `127.0.0.1:0` answering from scripts.
/// Unknown paths get 404. Dropping it stops the server.
pub struct ScriptedUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl ScriptedUpstream {
    /// Starts the server.
    ///
    /// # Panics
    /// If no port can be bound, or outside a tokio runtime.
    pub async fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            scripts: Mutex::new(HashMap::new()),
            hits: Mutex::new(HashMap::new()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared.clone()));
        ScriptedUpstream {
            addr,
            shared,
            _tasks: tasks,
        }
    }

    /// `host:port` for a gateway config.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Answers requests for `path` (without query) with `script`.
    pub fn set(&self, path: &str, script: Script) {
        self.shared
            .scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), script);
    }

    /// Requests seen for `path`.
    pub fn hits(&self, path: &str) -> u64 {
        self.shared
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        conns.spawn(async move {
            let service = service_fn(move |req| answer(shared.clone(), req));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
    }
}

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    *shared
        .hits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(path.clone())
        .or_default() += 1;
    let script = shared
        .scripts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&path)
        .cloned();
    // Read the request body to its end so the connection stays usable.
    let _ = req.into_body().collect().await;
    let Some(script) = script else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"no script")).boxed_unsync());
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    };
    let body = match script.parts.as_slice() {
        [] => Full::new(Bytes::new()).boxed_unsync(),
        [Part::Data(d)] => Full::new(d.clone()).boxed_unsync(),
        parts => {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            let parts = parts.to_vec();
            tokio::spawn(async move {
                for p in parts {
                    match p {
                        Part::Data(d) => {
                            if tx.send(d).await.is_err() {
                                return;
                            }
                        }
                        Part::Wait(g) => g.wait().await,
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|d| (Ok::<_, Infallible>(Frame::data(d)), rx))
            });
            StreamBody::new(stream).boxed_unsync()
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = script.status;
    for (k, v) in &script.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    Ok(r)
}
