//! TLS for the mesh: rustls configurations with the aws-lc-rs provider,
//! TLS 1.3 only, and the two certificate verifiers that replace the Web
//! PKI with pins (ADR 0032). A client accepts a server only when its
//! certificate names the node it dialled and its key hashes to that node's
//! pin; a server accepts a client only when the node its certificate names
//! is pinned and the key matches. Each refusal is counted by reason.
//!
//! Signatures are still checked (the peer proves it holds the pinned key);
//! chains, names and validity dates are not, since a pin is a stronger
//! statement than any of them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::{Fingerprint, Identity, read_certificate};
use crate::stats::{HandshakeRefusal, MeshCounters};

/// ALPN protocol of the mesh; a client speaking anything else is refused.
pub const ALPN: &[u8] = b"weir-mesh/1";
/// The server name a dialler sends (the verifier ignores it; the expected
/// node id travels with the verifier instead).
pub const SERVER_NAME: &str = "weir-mesh";

/// Node id → pinned fingerprint, as the caller last set it.
pub type Pins = Arc<RwLock<HashMap<String, Fingerprint>>>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn refuse(counters: &MeshCounters, why: HandshakeRefusal, detail: String) -> Error {
    counters.refuse_handshake(why, &detail);
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        std::io::Error::other(detail),
    ))))
}

/// The pin check both verifiers share, and the TLS 1.3 signature check.
#[derive(Debug)]
struct Pinned {
    /// The dialled node and its pin (client side); `None` on the server
    /// side, which looks the presented node up in `pins`.
    dialled: Option<(String, Fingerprint)>,
    pins: Pins,
    algs: WebPkiSupportedAlgorithms,
    counters: Arc<MeshCounters>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>, role: &str) -> Result<(), Error> {
        let (id, fp) = read_certificate(cert).map_err(|e| {
            refuse(
                &self.counters,
                HandshakeRefusal::BadCertificate,
                format!("{role} certificate: {e}"),
            )
        })?;
        let pinned = match &self.dialled {
            Some((expect_id, _)) if *expect_id != id => {
                return Err(refuse(
                    &self.counters,
                    HandshakeRefusal::IdentityMismatch,
                    format!("dialled `{expect_id}` but the certificate names `{id}`"),
                ));
            }
            Some((_, expect)) => Some(*expect),
            None => self
                .pins
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
                .copied(),
        };
        match pinned {
            None => Err(refuse(
                &self.counters,
                HandshakeRefusal::UnknownNode,
                format!("`{id}` is not a live member with a mesh identity in gossip"),
            )),
            Some(p) if p != fp => Err(refuse(
                &self.counters,
                HandshakeRefusal::IdentityMismatch,
                format!("`{id}` presents a key other than the one gossip pins"),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The signature methods, the same for both verifiers: TLS 1.3 only, with
/// the provider's algorithms.
macro_rules! tls13_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::General("the mesh speaks TLS 1.3 only".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity, "server")
            .map(|()| ServerCertVerified::assertion())
    }

    tls13_signatures!();
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity, "client")
            .map(|()| ClientCertVerified::assertion())
    }

    tls13_signatures!();
}

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[error("mesh TLS: {0}")]
pub struct TlsError(String);

/// The client side for a dial of `expect_id`, whose pin is `expect`,
/// presenting `identity`.
///
/// # Errors
/// If rustls or quinn refuse the configuration (a bug, not input).
pub fn client_config(
    identity: &Identity,
    expect_id: &str,
    expect: Fingerprint,
    counters: Arc<MeshCounters>,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        dialled: Some((expect_id.to_string(), expect)),
        pins: Pins::default(),
        algs: provider.signature_verification_algorithms,
        counters,
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(|e| TlsError(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(|e| TlsError(e.to_string()))
}

/// The server side: `identity` as the certificate, clients checked
/// against `pins`.
///
/// # Errors
/// If rustls or quinn refuse the configuration (a bug, not input).
pub fn server_config(
    identity: &Identity,
    pins: Pins,
    counters: Arc<MeshCounters>,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        dialled: None,
        pins,
        algs: provider.signature_verification_algorithms,
        counters,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(|e| TlsError(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(|e| TlsError(e.to_string()))
}
