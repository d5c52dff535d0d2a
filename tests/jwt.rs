//! `jwt-auth` through a real gateway: tokens signed here with
//! `jsonwebtoken` (HS, RS, ES, EdDSA), claim checks with leeway, and a real
//! JWKS served over HTTP and HTTPS (a CA made at test time) whose keys
//! rotate.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{error_of, gateway, gateway_debug, rejected};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_testsupport::{
    Consumer, Gateway, GatewayConfig, HttpsDocServer, Route, TestCa, Upstream, http_client,
    wait_until,
};

const HS_SECRET: &str = "hs-secret-that-is-long-enough-0123456789";

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn enc(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = fixture(file);
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

/// A token signed with the key in fixture `file`, under `kid`.
fn token(alg: Algorithm, kid: &str, file: &str, claims: &serde_json::Value) -> String {
    sign(alg, Some(kid), &enc(alg, file), claims.clone())
}

fn hs(claims: serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        claims,
    )
}

/// A JWKS endpoint: a real HTTP server whose document can be swapped.
struct JwksServer {
    addr: std::net::SocketAddr,
    doc: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(doc: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let shared = doc.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let doc = shared.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = doc.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        JwksServer { addr, doc, task }
    }

    fn set(&self, doc: String) {
        *self.doc.lock().unwrap() = doc;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(kid, alg, file)| {
                let mut j = Jwk::from_encoding_key(&enc(*alg, file), *alg).unwrap();
                j.common.key_id = Some(kid.to_string());
                j
            })
            .collect(),
    };
    serde_json::to_string(&set).unwrap()
}

/// A route `id` on `/{id}` whose tokens are checked against `jwks_url`,
/// trusting `ca_file` for it if given.
fn jwks_route(id: &str, jwks_url: &str, ca_file: Option<&std::path::Path>) -> Route {
    let mut jwt = json!({
        "jwks_url": jwks_url,
        "jwks_refresh": "1s",
        "jwks_refetch_gap": "100ms",
        "require_consumer": false,
    });
    if let Some(ca) = ca_file {
        jwt["jwks_ca_file"] = json!(ca.display().to_string());
    }
    Route::new(id, &format!("/{id}"))
        .upstream("u")
        .plugin("jwt-auth", jwt)
}

fn config(target: &str, jwks_url: &str) -> String {
    let key = |kid: &str, algorithm: &str, file: &str| json!({"kid": kid, "algorithm": algorithm, "public_key": fixture(file)});
    GatewayConfig::new()
        .upstream("u", target)
        .consumer(
            Consumer::new("alice")
                .groups(&["gold"])
                .credentials("jwt-auth", "[{subject: alice-sub}]"),
        )
        .consumer(Consumer::new("bob").credentials("jwt-auth", "[{subject: bob-sub}]"))
        .route(Route::new("hs", "/hs").upstream("u").plugin(
            "jwt-auth",
            json!({
                "algorithms": ["HS256"],
                "keys": [{"algorithm": "HS256", "secret": HS_SECRET}],
                "issuer": ["https://issuer.test"],
                "audience": ["weir-api"],
                "leeway": "60s",
            }),
        ))
        .route(Route::new("asym", "/asym").upstream("u").plugin(
            "jwt-auth",
            json!({"keys": [
                key("rs", "RS256", "rsa1.pub.pem"),
                key("es256", "ES256", "ec256.pub.pem"),
                key("es384", "ES384", "ec384.pub.pem"),
                key("ed", "EdDSA", "ed25519.pub.pem"),
            ]}),
        ))
        .route(jwks_route("jwks", jwks_url, None))
        .to_yaml()
}

async fn start(up: &Upstream, jwks_url: &str) -> Gateway {
    gateway_debug(&config(&up.target(), jwks_url)).await
}

async fn status(gw: &Gateway, path: &str, token: &str) -> u16 {
    let r = http_client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    if s == 401 {
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"weir\"");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error_of(&body)["message"], "missing or invalid credentials");
    }
    s
}

/// Waits until `path` accepts `new` (signed with a key just published)
/// and then refuses `old` (signed with the key withdrawn).
async fn follows_rotation(gw: &Gateway, path: &str, new: &str, old: &str) {
    wait_until(
        &format!("{path}: the new kid is picked up"),
        Duration::from_secs(10),
        || async { status(gw, path, new).await == 200 },
    )
    .await;
    wait_until(
        &format!("{path}: the old kid is dropped"),
        Duration::from_secs(10),
        || async { status(gw, path, old).await == 401 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_claims_and_leeway() {
    let up = Upstream::start("a").await;
    let jwks = JwksServer::start(jwks(&[])).await;
    let gw = start(&up, &format!("http://{}/jwks.json", jwks.addr)).await;
    let t = now();
    let good = json!({"sub": "alice-sub", "iss": "https://issuer.test", "aud": "weir-api", "exp": t + 300});

    let r = http_client()
        .get(gw.url("/hs"))
        .bearer_auth(hs(good.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-consumer-name"], "alice");
    assert_eq!(body["headers"]["x-consumer-groups"], "gold");
    assert!(body["headers"].get("authorization").is_none(), "{body}");

    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        hs(c)
    };
    // Inside the 60 s leeway: accepted.
    assert_eq!(status(&gw, "/hs", &with("exp", json!(t - 30))).await, 200);
    assert_eq!(status(&gw, "/hs", &with("nbf", json!(t + 30))).await, 200);
    // Outside it: refused.
    assert_eq!(status(&gw, "/hs", &with("exp", json!(t - 120))).await, 401);
    assert_eq!(status(&gw, "/hs", &with("nbf", json!(t + 120))).await, 401);
    assert_eq!(
        status(&gw, "/hs", &with("iss", json!("https://evil.test"))).await,
        401
    );
    assert_eq!(status(&gw, "/hs", &with("aud", json!("other"))).await, 401);
    assert_eq!(status(&gw, "/hs", &with("sub", json!("nobody"))).await, 401);
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(status(&gw, "/hs", &hs(no_exp)).await, 401);
    // Wrong secret, another algorithm, unsigned, garbage.
    let wrong = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-another-secret-0000"),
        good.clone(),
    );
    assert_eq!(status(&gw, "/hs", &wrong).await, 401);
    let hs384 = sign(
        Algorithm::HS384,
        None,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        good.clone(),
    );
    assert_eq!(status(&gw, "/hs", &hs384).await, 401);
    let valid = hs(good.clone());
    let parts: Vec<&str> = valid.split('.').collect();
    let none_header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(
        status(&gw, "/hs", &format!("{none_header}.{}.", parts[1])).await,
        401
    );
    assert_eq!(status(&gw, "/hs", "not.a.jwt").await, 401);
    let r = http_client().get(gw.url("/hs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.hits(), 3, "refused tokens never reach the upstream");

    // Neither the secret nor a token ever reaches the log.
    let log = gw.log();
    assert!(log.contains("authentication failed"), "{log}");
    for secret in [HS_SECRET, &valid, parts[2], &wrong] {
        assert!(!log.contains(secret), "secret in log: {secret}\n{log}");
    }
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asymmetric_algorithms_with_inline_keys() {
    let up = Upstream::start("a").await;
    let jwks = JwksServer::start(jwks(&[])).await;
    let gw = start(&up, &format!("http://{}/jwks.json", jwks.addr)).await;
    let claims = json!({"sub": "bob-sub", "exp": now() + 300});
    for (alg, kid, file) in [
        (Algorithm::RS256, "rs", "rsa1.pem"),
        (Algorithm::ES256, "es256", "ec256.pem"),
        (Algorithm::ES384, "es384", "ec384.pem"),
        (Algorithm::EdDSA, "ed", "ed25519.pem"),
    ] {
        let t = token(alg, kid, file, &claims);
        let r = http_client()
            .get(gw.url("/asym"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{alg:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["headers"]["x-consumer-name"], "bob");
        // The same token under another key's kid fails.
        let other = if kid == "rs" { "ed" } else { "rs" };
        let t = token(alg, other, file, &claims);
        assert_eq!(status(&gw, "/asym", &t).await, 401, "{alg:?} under {other}");
    }
    // A key the gateway does not know (rsa2) with a known kid.
    let t = token(Algorithm::RS256, "rs", "rsa2.pem", &claims);
    assert_eq!(status(&gw, "/asym", &t).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_fetched_and_rotated() {
    let up = Upstream::start("a").await;
    let server = JwksServer::start(jwks(&[("k1", Algorithm::RS256, "rsa1.pem")])).await;
    let gw = start(&up, &format!("http://{}/jwks.json", server.addr)).await;
    let claims = json!({"sub": "alice-sub", "exp": now() + 600});
    let t1 = token(Algorithm::RS256, "k1", "rsa1.pem", &claims);
    let t2 = token(Algorithm::ES256, "k2", "ec256.pem", &claims);
    let t3 = token(Algorithm::RS256, "k1", "rsa2.pem", &claims);
    assert_eq!(status(&gw, "/jwks", &t1).await, 200);
    assert_eq!(status(&gw, "/jwks", &t2).await, 401);
    assert_eq!(status(&gw, "/jwks", &t3).await, 401);

    // Rotation: k2 is published, k1 withdrawn. A token with the new kid is
    // accepted once the unknown kid triggers a fetch; the old one is
    // refused once the periodic refresh drops it.
    server.set(jwks(&[("k2", Algorithm::ES256, "ec256.pem")]));
    follows_rotation(&gw, "/jwks", &t2, &t1).await;
}

#[test]
fn jwt_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let yaml = "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]
routes:
  - id: r
    paths: [/]
    upstream: u
    plugins:
      jwt-auth:
        algorithms: [HS256, none]
        keys:
          - {algorithm: HS256, secret: short}
          - {algorithm: RS256, public_key: 'not a pem'}
          - {algorithm: ES256, secret: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'}
        jwks_url: 'ftp://keys.example/jwks.json'
        jwks_ca_file: /no/such/ca.pem
  - id: r2
    paths: [/2]
    upstream: u
    plugins:
      jwt-auth:
        jwks_url: 'https://keys.example/jwks.json'
        jwks_ca_file: /no/such/ca.pem
  - id: r3
    paths: [/3]
    upstream: u
    plugins:
      jwt-auth:
        jwks_url: 'https://keys.example/jwks.json'
        jwks_ca_file: NOT_PEM
";
    let yaml = yaml.replace("NOT_PEM", &not_pem.display().to_string());
    let err = rejected(
        &yaml,
        &[
            "routes[0].plugins.jwt-auth.algorithms[1]: `none` is not one of",
            "routes[0].plugins.jwt-auth.keys[0].secret: must be at least 32 bytes",
            "routes[0].plugins.jwt-auth.keys[1].public_key: not a PEM public key for RS256",
            "routes[0].plugins.jwt-auth.keys[1].algorithm: RS256 is not in `algorithms`",
            "routes[0].plugins.jwt-auth.keys[2]: ES256 needs `public_key`",
            "routes[0].plugins.jwt-auth.jwks_url: `ftp://keys.example/jwks.json` is not an https:// or http:// URL",
            "routes[1].plugins.jwt-auth.jwks_ca_file: cannot read `/no/such/ca.pem`",
            "routes[2].plugins.jwt-auth.jwks_ca_file: ",
            "holds no PEM certificate",
        ],
    );
    assert!(
        !err.contains("short\n") && !err.contains("xxxxxxxx"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_https_trusts_only_what_it_should() {
    let up = Upstream::start("a").await;
    let doc = jwks(&[("k1", Algorithm::RS256, "rsa1.pem")]);
    let ca = TestCa::new("weir test CA").unwrap();
    let trusted = HttpsDocServer::start(&ca.leaf(&["127.0.0.1"]).unwrap(), doc.clone())
        .await
        .unwrap();
    // Signed by the configured CA, but for another host name.
    let wrong_name = HttpsDocServer::start(&ca.leaf(&["jwks.example"]).unwrap(), doc.clone())
        .await
        .unwrap();
    // Signed by a CA nobody trusts; the route has no `jwks_ca_file`, so
    // only the public roots count.
    let other_ca = TestCa::new("unknown CA").unwrap();
    let untrusted = HttpsDocServer::start(&other_ca.leaf(&["127.0.0.1"]).unwrap(), doc.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path(), "ca.pem").unwrap();
    let yaml = GatewayConfig::new()
        .upstream("u", up.target())
        .route(jwks_route(
            "trusted",
            &trusted.url("/jwks.json"),
            Some(&ca_file),
        ))
        .route(jwks_route(
            "wrong-name",
            &wrong_name.url("/jwks.json"),
            Some(&ca_file),
        ))
        .route(jwks_route("untrusted", &untrusted.url("/jwks.json"), None))
        .to_yaml();
    let gw = gateway(&yaml).await;
    let claims = json!({"sub": "alice-sub", "exp": now() + 600});
    let t1 = token(Algorithm::RS256, "k1", "rsa1.pem", &claims);
    let t2 = token(Algorithm::ES256, "k2", "ec256.pem", &claims);

    assert_eq!(status(&gw, "/trusted", &t1).await, 200);
    assert!(trusted.hits() >= 1);
    assert_eq!(status(&gw, "/trusted", &t2).await, 401);

    // Rotation over https: the unknown kid triggers a fetch, the periodic
    // refresh drops the withdrawn key.
    trusted.set(jwks(&[("k2", Algorithm::ES256, "ec256.pem")]));
    follows_rotation(&gw, "/trusted", &t2, &t1).await;

    // Untrusted certificates: the fetch fails, the token is refused, the
    // server never sees a request, and the log says why.
    let hits = up.hits();
    assert_eq!(status(&gw, "/untrusted", &t1).await, 401);
    assert_eq!(status(&gw, "/wrong-name", &t1).await, 401);
    wait_until(
        "both failures are logged",
        Duration::from_secs(10),
        || async {
            let log = gw.log();
            log.contains("UnknownIssuer") && log.contains("certificate not valid for name")
        },
    )
    .await;
    let log = gw.log();
    for (server, why) in [
        (&untrusted, "UnknownIssuer"),
        (&wrong_name, "certificate not valid for name"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&server.url("/jwks.json")) && l.contains(why))
            .unwrap_or_else(|| panic!("no log line for {why}:\n{log}"));
        assert!(line.contains("jwks fetch failed"), "{line}");
        assert_eq!(server.hits(), 0, "{why}: no request may pass the handshake");
    }
    assert_eq!(up.hits(), hits, "refused tokens never reach the upstream");
}
