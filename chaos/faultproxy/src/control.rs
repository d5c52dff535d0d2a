//! The HTTP control API, shaped like toxiproxy's: list the proxies of a
//! [`Registry`], add, update and remove toxics, set and heal partition
//! rules, reset everything. Bodies are JSON; a bad one is answered 400
//! with `{"error", "field"}` naming the field, an unknown proxy, toxic or
//! rule 404, a taken toxic name 409. It changes proxies only: creating
//! proxies is the library's ([`crate::Proxy::tcp`], [`crate::Proxy::udp`]).
//! The routes are documented in `docs/chaos.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use tokio::task::AbortHandle;

use crate::proxy::{ProxyError, ProxyHandle};
use crate::toxic::{FieldError, Partition, Toxic};

/// The proxies a control API serves, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    proxies: Arc<RwLock<BTreeMap<String, ProxyHandle>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds (or replaces) a proxy under its name.
    pub fn add(&self, h: ProxyHandle) {
        self.write().insert(h.name().to_string(), h);
    }

    /// Removes a proxy; the proxy itself runs on while its owner keeps it.
    pub fn remove(&self, name: &str) -> Option<ProxyHandle> {
        self.write().remove(name)
    }

    /// The proxy named `name`.
    pub fn get(&self, name: &str) -> Option<ProxyHandle> {
        self.read().get(name).cloned()
    }

    /// Every proxy, by name.
    pub fn all(&self) -> Vec<ProxyHandle> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ProxyHandle>> {
        self.proxies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ProxyHandle>> {
        self.proxies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running control API. Dropping it stops it.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    task: AbortHandle,
}

impl ControlServer {
    /// Serves `registry` on `listen` (port 0 picks one).
    ///
    /// # Errors
    /// A socket that cannot be bound.
    pub async fn start(registry: Registry, listen: SocketAddr) -> std::io::Result<ControlServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let app = router(registry);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "faultproxy: control API stopped");
            }
        })
        .abort_handle();
        Ok(ControlServer { addr, task })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The control API's routes, to mount in another server.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/proxies", get(list))
        .route("/proxies/{proxy}", get(show))
        .route("/proxies/{proxy}/toxics", get(list_toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(show_toxic).post(update_toxic).delete(remove_toxic),
        )
        .route(
            "/proxies/{proxy}/partitions",
            get(list_partitions).delete(heal_all),
        )
        .route(
            "/proxies/{proxy}/partitions/{rule}",
            put(set_partition).delete(heal),
        )
        .route("/reset", axum::routing::post(reset))
        .with_state(registry)
}

/// An error answer.
struct ApiError {
    status: StatusCode,
    field: Option<String>,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> ApiError {
        match e {
            ProxyError::Invalid(f) => f.into(),
            ProxyError::NotFound { .. } => ApiError {
                status: StatusCode::NOT_FOUND,
                field: None,
                message: e.to_string(),
            },
            ProxyError::Exists(_) => ApiError {
                status: StatusCode::CONFLICT,
                field: Some("name".into()),
                message: e.to_string(),
            },
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn proxy(reg: &Registry, name: &str) -> Result<ProxyHandle, ApiError> {
    reg.get(name).ok_or_else(|| {
        ProxyError::NotFound {
            what: "proxy",
            name: name.to_string(),
        }
        .into()
    })
}

fn body(b: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(b).map_err(|e| FieldError::new("body", format!("not JSON: {e}")).into())
}

fn ok(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

async fn list(State(reg): State<Registry>) -> ApiResult {
    ok(Value::Array(
        reg.all().iter().map(ProxyHandle::to_json).collect(),
    ))
}

async fn show(State(reg): State<Registry>, Path(p): Path<String>) -> ApiResult {
    ok(proxy(&reg, &p)?.to_json())
}

async fn list_toxics(State(reg): State<Registry>, Path(p): Path<String>) -> ApiResult {
    let h = proxy(&reg, &p)?;
    ok(Value::Array(
        h.toxics().iter().map(Toxic::to_json).collect(),
    ))
}

async fn add_toxic(State(reg): State<Registry>, Path(p): Path<String>, b: Bytes) -> ApiResult {
    let h = proxy(&reg, &p)?;
    let t = Toxic::from_json(&body(&b)?, h.protocol(), None)?;
    let doc = t.to_json();
    h.add_toxic(t)?;
    Ok((StatusCode::CREATED, axum::Json(doc)).into_response())
}

async fn show_toxic(
    State(reg): State<Registry>,
    Path((p, name)): Path<(String, String)>,
) -> ApiResult {
    let h = proxy(&reg, &p)?;
    let t = h
        .toxics()
        .into_iter()
        .find(|t| t.name == name)
        .ok_or(ProxyError::NotFound {
            what: "toxic",
            name,
        })?;
    ok(t.to_json())
}

async fn update_toxic(
    State(reg): State<Registry>,
    Path((p, name)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let h = proxy(&reg, &p)?;
    let t = Toxic::from_json(&body(&b)?, h.protocol(), Some(&name))?;
    let doc = t.to_json();
    h.update_toxic(t)?;
    ok(doc)
}

async fn remove_toxic(
    State(reg): State<Registry>,
    Path((p, name)): Path<(String, String)>,
) -> ApiResult {
    proxy(&reg, &p)?.remove_toxic(&name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_partitions(State(reg): State<Registry>, Path(p): Path<String>) -> ApiResult {
    let h = proxy(&reg, &p)?;
    ok(Value::Object(
        h.partitions()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
    ))
}

async fn set_partition(
    State(reg): State<Registry>,
    Path((p, rule)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let h = proxy(&reg, &p)?;
    let part = Partition::from_json(&body(&b)?)?;
    let doc = part.to_json();
    h.partition(&rule, part)?;
    ok(doc)
}

async fn heal(State(reg): State<Registry>, Path((p, rule)): Path<(String, String)>) -> ApiResult {
    proxy(&reg, &p)?.heal(&rule)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn heal_all(State(reg): State<Registry>, Path(p): Path<String>) -> ApiResult {
    let h = proxy(&reg, &p)?;
    for name in h.partitions().keys() {
        // A rule removed meanwhile is healed already.
        let _ = h.heal(name);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset(State(reg): State<Registry>) -> ApiResult {
    for h in reg.all() {
        h.reset();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
