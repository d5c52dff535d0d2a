//! A throwaway certificate authority and an HTTPS document server, for
//! tests of the gateway's outbound TLS (e.g. a JWKS over `https://`).
//!
//! The CA and its leaf certificates are made at test time with `rcgen`; the
//! server is real rustls (aws-lc-rs provider) over real sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

/// A self-signed CA made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A leaf certificate and its key, signed by a [`TestCa`].
pub struct TestCert {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write_pem(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> anyhow::Result<TestCert> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "weir test server");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TestCert {
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        })
    }
}

/// An HTTPS server answering every GET with one JSON document, which a
/// test can swap. Stops when dropped.
pub struct HttpsDocServer {
    addr: SocketAddr,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsDocServer {
    /// Serves `doc` on `127.0.0.1:0` with `cert`.
    pub async fn start(cert: &TestCert, doc: String) -> anyhow::Result<HttpsDocServer> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicU64::new(0));
        let (shared, counter) = (doc.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, doc, hits) = (acceptor.clone(), shared.clone(), counter.clone());
                tokio::spawn(async move {
                    // A refused handshake (untrusted certificate) just ends
                    // the connection, as a real server's would.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let body = doc.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        async move {
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(HttpsDocServer {
            addr,
            doc,
            hits,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Replaces the document served from now on.
    pub fn set(&self, doc: String) {
        *self.doc.lock().unwrap_or_else(|e| e.into_inner()) = doc;
    }

    /// Requests answered (after a completed TLS handshake).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for HttpsDocServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
