//! `jwt-auth`: a signed JWT (`Authorization: Bearer …`) identifies the
//! consumer by one of its claims. Keys are inline (HMAC secrets, PEM public
//! keys) or come from a JWKS URL, fetched in the background, cached, and
//! fetched again when a token names an unknown `kid` (at most once per
//! `jwks_refetch_gap`, so random `kid`s cannot hammer the key server).
//!
//! Signatures and claims are checked by the `jsonwebtoken` crate; the
//! token's own `jku`/`jwk`/`x5u` headers are never followed.
//!
//! An `https://` JWKS is fetched with rustls (the aws-lc-rs provider that
//! `jsonwebtoken` already links), trusting Mozilla's root set compiled in
//! from `webpki-roots`, or only the CAs of `jwks_ca_file` when it is set
//! (ADR 0021). The host name is always verified.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::time::Instant;

use super::key_auth::strip_query_arg;
use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, UpstreamRequest,
    auth_failure, parse_config,
};
use crate::consumer::Consumers;

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "jwt-auth",
    priority: 2510,
    build,
};

/// The algorithms `jwt-auth` accepts.
const SUPPORTED: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Longest a JWKS fetch (connect, TLS handshake, whole body) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Config of `jwt-auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Inline keys.
    #[serde(default)]
    keys: Vec<RawKey>,
    /// A JWKS document, `https://` (or `http://`, e.g. a local sidecar).
    #[serde(default)]
    jwks_url: Option<String>,
    /// PEM file of the CAs trusted for an `https://` `jwks_url`, instead
    /// of the built-in public roots (for a private CA).
    #[serde(default)]
    jwks_ca_file: Option<std::path::PathBuf>,
    /// How often the JWKS is fetched again in the background.
    #[serde(default = "default_refresh", with = "crate::config::duration")]
    jwks_refresh: Duration,
    /// Least time between two fetches triggered by unknown `kid`s.
    #[serde(default = "default_gap", with = "crate::config::duration")]
    jwks_refetch_gap: Duration,
    /// Algorithms accepted; empty means every supported one.
    #[serde(default)]
    algorithms: Vec<String>,
    /// Accepted `iss` values; empty means `iss` is not checked.
    #[serde(default)]
    issuer: Vec<String>,
    /// Accepted `aud` values; empty means `aud` is not checked.
    #[serde(default)]
    audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default, with = "crate::config::duration")]
    leeway: Duration,
    /// Refuse tokens without `exp`.
    #[serde(default = "default_true")]
    require_exp: bool,
    /// The claim naming the consumer (matched against the consumers'
    /// `credentials.jwt-auth[].subject`).
    #[serde(default = "default_claim")]
    consumer_claim: String,
    /// Refuse valid tokens that name no known consumer.
    #[serde(default = "default_true")]
    require_consumer: bool,
    /// Remove the token before proxying.
    #[serde(default = "default_true")]
    hide_credentials: bool,
    /// Query argument read when there is no `Authorization` header; empty
    /// (the default) disables it.
    #[serde(default)]
    query: String,
}

/// One inline key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    /// Key id; tokens naming it use only this key.
    #[serde(default)]
    kid: Option<String>,
    /// The algorithm this key verifies.
    algorithm: String,
    /// HMAC secret (HS256/384/512).
    #[serde(default)]
    secret: Option<String>,
    /// PEM public key (RS*, ES*, EdDSA).
    #[serde(default)]
    public_key: Option<String>,
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_gap() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}

fn default_claim() -> String {
    "sub".to_string()
}

struct InlineKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct JwtAuth {
    inline: Vec<InlineKey>,
    jwks: Option<Arc<Jwks>>,
    validations: HashMap<Algorithm, Validation>,
    consumer_claim: String,
    require_consumer: bool,
    hide: bool,
    query: Option<String>,
    consumers: Arc<Consumers>,
}

static CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"weir\"");

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn build(v: &serde_yaml_ng::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs: ConfigErrorList = Vec::new();

    let mut allowed = Vec::new();
    for (i, a) in raw.algorithms.iter().enumerate() {
        match Algorithm::from_str(a) {
            Ok(a) if SUPPORTED.contains(&a) => allowed.push(a),
            _ => errs.push((
                format!("algorithms[{i}]"),
                format!("`{a}` is not one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA"),
            )),
        }
    }
    if raw.algorithms.is_empty() {
        allowed = SUPPORTED.to_vec();
    }

    let mut inline = Vec::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        let alg = match Algorithm::from_str(&k.algorithm) {
            Ok(a) if SUPPORTED.contains(&a) => a,
            _ => {
                errs.push((
                    format!("{at}.algorithm"),
                    format!("`{}` is not a supported algorithm", k.algorithm),
                ));
                continue;
            }
        };
        if !allowed.contains(&alg) {
            errs.push((
                format!("{at}.algorithm"),
                format!("{alg:?} is not in `algorithms`"),
            ));
        }
        let key = match (is_hmac(alg), &k.secret, &k.public_key) {
            (true, Some(s), None) if s.len() >= 32 => Ok(DecodingKey::from_secret(s.as_bytes())),
            (true, Some(_), None) => Err((
                format!("{at}.secret"),
                "must be at least 32 bytes".to_string(),
            )),
            (true, _, _) => Err((
                at.clone(),
                format!("{alg:?} needs `secret` (and no `public_key`)"),
            )),
            (false, None, Some(pem)) => {
                let pem = pem.as_bytes();
                let parsed = match alg {
                    Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                        DecodingKey::from_rsa_pem(pem)
                    }
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                    _ => DecodingKey::from_ed_pem(pem),
                };
                parsed.map_err(|e| {
                    (
                        format!("{at}.public_key"),
                        format!("not a PEM public key for {alg:?}: {e}"),
                    )
                })
            }
            (false, _, _) => Err((
                at.clone(),
                format!("{alg:?} needs `public_key` (and no `secret`)"),
            )),
        };
        match key {
            Ok(key) => inline.push(InlineKey {
                kid: k.kid.clone(),
                alg,
                key,
            }),
            Err(e) => errs.push(e),
        }
    }

    let jwks = match &raw.jwks_url {
        None => {
            if raw.jwks_ca_file.is_some() {
                errs.push((
                    "jwks_ca_file".into(),
                    "is only used with an https:// `jwks_url`".into(),
                ));
            }
            None
        }
        Some(u) => match http::Uri::try_from(u.as_str()) {
            Ok(url)
                if matches!(url.scheme_str(), Some("http" | "https"))
                    && url.host().is_some_and(|h| !h.is_empty()) =>
            {
                let https = url.scheme_str() == Some("https");
                let tls = match (&raw.jwks_ca_file, https) {
                    (Some(_), false) => {
                        errs.push((
                            "jwks_ca_file".into(),
                            "is only used with an https:// `jwks_url`".into(),
                        ));
                        None
                    }
                    (Some(path), true) => match tls_with_ca_file(path) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            errs.push(("jwks_ca_file".into(), e));
                            None
                        }
                    },
                    (None, _) => match public_roots_tls() {
                        Ok(c) => Some(c),
                        Err(e) => {
                            errs.push(("jwks_url".into(), e));
                            None
                        }
                    },
                };
                tls.map(|tls| {
                    Arc::new(Jwks {
                        url,
                        tls,
                        client: std::sync::OnceLock::new(),
                        keys: ArcSwap::from_pointee(HashMap::new()),
                        last_fetch: tokio::sync::Mutex::new(None),
                        refresh: raw.jwks_refresh,
                        gap: raw.jwks_refetch_gap,
                        started: AtomicBool::new(false),
                    })
                })
            }
            _ => {
                errs.push((
                    "jwks_url".into(),
                    format!("`{u}` is not an https:// or http:// URL with a host"),
                ));
                None
            }
        },
    };
    if inline.is_empty() && raw.jwks_url.is_none() && raw.keys.is_empty() {
        errs.push((String::new(), "set `keys`, `jwks_url` or both".into()));
    }
    if raw.jwks_refresh < Duration::from_secs(1) {
        errs.push(("jwks_refresh".into(), "must be at least 1s".into()));
    }
    if raw.leeway > Duration::from_secs(600) {
        errs.push(("leeway".into(), "must be at most 10m".into()));
    }
    if raw.consumer_claim.is_empty() {
        errs.push(("consumer_claim".into(), "must not be empty".into()));
    }
    if raw.query.contains(['&', '=', '#']) {
        errs.push(("query".into(), "must not contain `&`, `=` or `#`".into()));
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    let validations = allowed
        .iter()
        .map(|&alg| {
            let mut v = Validation::new(alg);
            v.leeway = raw.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            v.required_spec_claims.clear();
            if raw.require_exp {
                v.required_spec_claims.insert("exp".into());
            }
            if !raw.issuer.is_empty() {
                v.set_issuer(&raw.issuer);
                v.required_spec_claims.insert("iss".into());
            }
            if raw.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&raw.audience);
                v.required_spec_claims.insert("aud".into());
            }
            (alg, v)
        })
        .collect();

    Ok(Arc::new(JwtAuth {
        inline,
        jwks,
        validations,
        consumer_claim: raw.consumer_claim,
        require_consumer: raw.require_consumer,
        hide: raw.hide_credentials,
        query: (!raw.query.is_empty()).then_some(raw.query),
        consumers: env.consumers().clone(),
    }))
}

/// Why a token was refused (a metric label; never sent to the client).
fn reason_of(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::MissingRequiredClaim(_) => "claims",
        _ => "invalid",
    }
}

type Claims = serde_json::Map<String, serde_json::Value>;

impl JwtAuth {
    fn token<'r>(&self, req: &'r RequestHead<'_>) -> Option<std::borrow::Cow<'r, str>> {
        if let Some(v) = req.headers.get(header::AUTHORIZATION) {
            let v = v.to_str().ok()?;
            let (scheme, t) = v.split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| std::borrow::Cow::Borrowed(t.trim()));
        }
        let name = self.query.as_deref()?;
        form_urlencoded::parse(req.uri.query()?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Verifies `token` against the candidate keys.
    async fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        let head = jsonwebtoken::decode_header(token).map_err(|_| "malformed")?;
        let validation = self.validations.get(&head.alg).ok_or("algorithm")?;
        let mut last: &'static str = "invalid";
        let mut tried = false;
        for k in &self.inline {
            let kid_ok = match (&head.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            };
            if k.alg != head.alg || !kid_ok {
                continue;
            }
            tried = true;
            match jsonwebtoken::decode::<Claims>(token, &k.key, validation) {
                Ok(d) => return Ok(d.claims),
                Err(e) => last = reason_of(&e),
            }
        }
        let Some(jwks) = &self.jwks else {
            return Err(if tried { last } else { "unknown_key" });
        };
        jwks.start();
        let keys = match &head.kid {
            Some(kid) => match jwks.key(kid) {
                Some(k) => vec![k],
                None => {
                    jwks.refetch_for_unknown_kid().await;
                    jwks.key(kid).into_iter().collect()
                }
            },
            None => {
                if jwks.keys.load().is_empty() {
                    jwks.refetch_for_unknown_kid().await;
                }
                jwks.keys.load().values().take(16).cloned().collect()
            }
        };
        for k in keys {
            if k.alg.is_some_and(|a| a != head.alg) {
                continue;
            }
            tried = true;
            match jsonwebtoken::decode::<Claims>(token, &k.key, validation) {
                Ok(d) => return Ok(d.claims),
                Err(e) => last = reason_of(&e),
            }
        }
        Err(if tried { last } else { "unknown_key" })
    }
}

#[async_trait::async_trait]
impl Plugin for JwtAuth {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let Some(token) = self.token(req).map(|t| t.into_owned()) else {
            return Err(auth_failure(ctx, DEF.name, "missing", &CHALLENGE));
        };
        let claims = match self.verify(&token).await {
            Ok(c) => c,
            Err(reason) => return Err(auth_failure(ctx, DEF.name, reason, &CHALLENGE)),
        };
        let subject = claims.get(&self.consumer_claim).and_then(|v| v.as_str());
        match subject.and_then(|s| self.consumers.by_jwt_subject(s)) {
            Some(c) => ctx.consumer = Some(c.clone()),
            None if self.require_consumer => {
                return Err(auth_failure(ctx, DEF.name, "unknown_consumer", &CHALLENGE));
            }
            None => {}
        }
        if self.hide {
            req.headers.remove(header::AUTHORIZATION);
        }
        Ok(())
    }

    fn upstream_request(&self, req: &mut UpstreamRequest<'_>, _ctx: &mut RequestCtx) {
        let (true, Some(name)) = (self.hide, &self.query) else {
            return;
        };
        let Some(rest) = req
            .path_and_query
            .query()
            .and_then(|q| strip_query_arg(q, name))
        else {
            return;
        };
        let path = req.path_and_query.path();
        let pq = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{rest}")
        };
        if let Ok(pq) = pq.parse() {
            *req.path_and_query = pq;
        }
    }
}

// === JWKS ===

struct JwksKey {
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// A JWKS document's keys by `kid`, fetched in the background.
struct Jwks {
    url: http::Uri,
    /// Trust for an `https://` URL.
    tls: Arc<rustls::ClientConfig>,
    /// Made on the first fetch (building a plugin must not need a runtime).
    client: std::sync::OnceLock<JwksClient>,
    keys: ArcSwap<HashMap<String, Arc<JwksKey>>>,
    /// When the last fetch started; also serialises fetches so concurrent
    /// requests with the same unknown `kid` cause one fetch.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refresh: Duration,
    gap: Duration,
    started: AtomicBool,
}

impl Jwks {
    fn key(&self, kid: &str) -> Option<Arc<JwksKey>> {
        self.keys.load().get(kid).cloned()
    }

    /// Starts the periodic refresh on first use (building a plugin must not
    /// start tasks). The task ends once the snapshot owning it is gone.
    fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Jwks> = Arc::downgrade(self);
        let every = self.refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(jwks) = weak.upgrade() else { break };
                let mut last = jwks.last_fetch.lock().await;
                *last = Some(Instant::now());
                jwks.fetch().await;
            }
        });
    }

    async fn refetch_for_unknown_kid(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.gap) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch().await;
    }

    /// Fetches the document and replaces the key set; on failure the old
    /// keys stay.
    async fn fetch(&self) {
        match self.download().await {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "jwks fetched");
                self.keys.store(Arc::new(keys));
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "jwks fetch failed; keeping the previous keys")
            }
        }
    }

    async fn download(&self) -> Result<HashMap<String, Arc<JwksKey>>, String> {
        use http_body_util::BodyExt;
        let client = self.client.get_or_init(|| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*self.tls).clone())
                .https_or_http()
                .enable_http1()
                .build();
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https)
        });
        let req = http::Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "weir")
            .body(http_body_util::Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let fetch = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {}", crate::error::error_chain(&e)))?;
            if !resp.status().is_success() {
                // Redirects are not followed: the configured URL is the one
                // trusted.
                return Err(format!("status {}", resp.status()));
            }
            http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("document larger than {MAX_JWKS_BYTES} bytes")
                    } else {
                        format!("reading body: {}", crate::error::error_chain(&*e))
                    }
                })
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
            // Symmetric keys are never taken from a JWKS URL.
            if matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid.clone(), Arc::new(JwksKey { alg, key }));
                }
                Err(e) => tracing::debug!(kid = %kid, error = %e, "jwks key skipped"),
            }
        }
        Ok(keys)
    }
}

// === TLS trust for the JWKS fetch ===

type JwksClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    .map_err(|e| format!("tls setup failed: {e}"))
}

/// Trust in Mozilla's public roots (compiled in, so it works the same in a
/// container without a system certificate store). Built once per process.
fn public_roots_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            tls_config(roots).map(Arc::new)
        })
        .clone()
}

/// Trust in the CA certificates of a PEM file, and in nothing else.
fn tls_with_ca_file(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| format!("`{}`: certificate {i}: {e}", path.display()))?;
        roots.add(cert).map_err(|e| {
            format!(
                "`{}`: certificate {i} is not usable as a CA: {e}",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "`{}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        ));
    }
    tls_config(roots).map(Arc::new)
}
