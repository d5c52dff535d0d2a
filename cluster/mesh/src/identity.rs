//! A node's mesh identity: a key pair made at start, a self-signed
//! certificate naming the node id, and the fingerprint (SHA-256 of the
//! certificate's SubjectPublicKeyInfo) that peers pin. It also reads the
//! same two facts back out of a peer's certificate. How the pins reach the
//! peers (sealed gossip) is the caller's business; see ADR 0032.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The URI subject alternative name that carries the node id.
const URI_PREFIX: &str = "urn:weir:mesh:node:";

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a fingerprint string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mesh identity: {0}")]
pub struct FingerprintError(&'static str);

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// 64 lowercase or uppercase hex digits.
    fn from_str(s: &str) -> Result<Fingerprint, FingerprintError> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(FingerprintError("must be 64 hex digits"));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(FingerprintError("must be 64 hex digits")),
        };
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Ok(Fingerprint(out))
    }
}

/// Errors making an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The node id cannot go into a certificate.
    #[error("mesh identity: node id `{0}` must be 1-255 ASCII letters, digits, `-`, `_` or `.`")]
    NodeId(String),
    /// Key or certificate generation failed.
    #[error("mesh identity: cannot make the certificate: {0}")]
    Generate(String),
}

/// This node's key, certificate and fingerprint.
pub struct Identity {
    node_id: String,
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            node_id: self.node_id.clone(),
            cert: self.cert.clone(),
            key_pkcs8: self.key_pkcs8.clone(),
            fingerprint: self.fingerprint,
        }
    }
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= crate::frame::MAX_SENDER
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Identity {
    /// A fresh ECDSA P-256 key and a self-signed certificate naming
    /// `node_id` (a URI subject alternative name). Made at every start;
    /// never written to disk.
    ///
    /// # Errors
    /// An unusable node id, or a failure of the key generator.
    pub fn generate(node_id: &str) -> Result<Identity, IdentityError> {
        if !valid_node_id(node_id) {
            return Err(IdentityError::NodeId(node_id.to_string()));
        }
        let gen_err = |e: rcgen::Error| IdentityError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id);
        let uri = rcgen::string::Ia5String::try_from(format!("{URI_PREFIX}{node_id}"))
            .map_err(gen_err)?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let cert = cert.der().clone();
        let (_, fingerprint) = read_certificate(&cert)
            .map_err(|e| IdentityError::Generate(format!("own certificate: {e}")))?;
        Ok(Identity {
            node_id: node_id.to_string(),
            cert,
            key_pkcs8: key.serialize_der(),
            fingerprint,
        })
    }

    /// The node id in the certificate.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// What peers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key (PKCS#8).
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// The node id and fingerprint a certificate presents. Parses only; the
/// caller compares them with the pins.
///
/// # Errors
/// A certificate that does not parse or names no node.
pub fn read_certificate(cert: &CertificateDer<'_>) -> Result<(String, Fingerprint), &'static str> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| "certificate does not parse")?;
    let mut ids = parsed
        .valid_uri_names()
        .filter_map(|u| u.strip_prefix(URI_PREFIX));
    let id = ids.next().ok_or("certificate names no mesh node")?;
    if ids.next().is_some() {
        return Err("certificate names more than one mesh node");
    }
    if !valid_node_id(id) {
        return Err("certificate names an invalid node id");
    }
    let spki = parsed.subject_public_key_info();
    let digest: [u8; 32] = Sha256::digest(spki.as_ref()).into();
    Ok((id.to_string(), Fingerprint(digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_the_node_and_fingerprints_differ() {
        let a = Identity::generate("node-a").expect("a");
        let b = Identity::generate("node-a").expect("b");
        assert_eq!(
            read_certificate(a.certificate()),
            Ok(("node-a".to_string(), a.fingerprint()))
        );
        assert_ne!(a.fingerprint(), b.fingerprint(), "a fresh key each time");
        let text = a.fingerprint().to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Fingerprint>(), Ok(a.fingerprint()));
        assert!("zz".parse::<Fingerprint>().is_err());
        assert!("g".repeat(64).parse::<Fingerprint>().is_err());
        assert!(Identity::generate("bad id").is_err());
        assert!(Identity::generate("").is_err());
        assert!(read_certificate(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}
