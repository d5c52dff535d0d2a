//! Consumers and the auth plugins through a real gateway: key-auth,
//! basic-auth (argon2 and bcrypt) and consumer-restriction, the consumer headers upstream,
//! uniform 401s, failed attempts counted, and no secret in any log line.

mod common;

use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine;
use common::{error_of, gateway_debug, rejected, sha_hex};
use serde_json::json;
use sha2::Digest;
use weir_testsupport::{Consumer, Gateway, GatewayConfig, Route, Upstream, http_client};

const KEY_ALICE: &str = "alice-secret-key-0001";
const KEY_ALICE_NEW: &str = "alice-secret-key-0002";
const KEY_BOB: &str = "bob-secret-key-0003";
const PASSWORD_CAROL: &str = "carol-pa55word-zz";
const PASSWORD_ERIN: &str = "erin-bcrypt-pa55";
const HMAC_SECRET: &str = "dave-hmac-shared-secret-0123456789abcdef";

fn argon(password: &str) -> String {
    let salt = SaltString::encode_b64(b"test-salt-bytes!").unwrap();
    // Small parameters keep the test fast; the PHC string carries them.
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A bcrypt hash of `password` in the given version (`$2a$`, `$2b$`,
/// `$2y$`), made by the `bcrypt` crate with a small cost.
fn bcrypt_hash(password: &str, version: bcrypt::Version) -> String {
    bcrypt::hash_with_result(password, 4)
        .unwrap()
        .format_for_version(version)
}

fn config(target: &str) -> String {
    let route = |id: &str, path: &str| Route::new(id, path).upstream("u");
    let erin = |username: &str, version| json!({"username": username, "password_hash": bcrypt_hash(PASSWORD_ERIN, version)});
    GatewayConfig::new()
        .upstream("u", target)
        .consumer(
            Consumer::new("alice")
                .groups(&["gold", "staff"])
                .key_auth(&[&sha_hex(KEY_ALICE), &sha_hex(KEY_ALICE_NEW)]),
        )
        .consumer(
            Consumer::new("bob")
                .groups(&["free"])
                .key_auth(&[&sha_hex(KEY_BOB)]),
        )
        .consumer(Consumer::new("carol").groups(&["gold"]).credentials(
            "basic-auth",
            json!([{"username": "carol", "password_hash": argon(PASSWORD_CAROL)}]),
        ))
        .consumer(Consumer::new("dave").credentials(
            "hmac-auth",
            json!([{"key_id": "dave-key", "secret": HMAC_SECRET}]),
        ))
        .consumer(Consumer::new("erin").credentials(
            "basic-auth",
            json!([
                erin("erin-2a", bcrypt::Version::TwoA),
                erin("erin-2b", bcrypt::Version::TwoB),
                erin("erin-2y", bcrypt::Version::TwoY),
            ]),
        ))
        .route(route("signed", "/signed").plugin(
            "hmac-auth",
            "{clock_skew: 60s, signed_headers: ['@request-target', x-body-sha]}",
        ))
        .route(route("signed-body", "/signed-body").plugin(
            "hmac-auth",
            "{validate_request_body: true, max_body_bytes: 1024}",
        ))
        .route(
            route("signed-small", "/signed-small")
                .plugin("request-size-limit", "{max_body_bytes: 16}")
                .plugin("hmac-auth", "{validate_request_body: true}"),
        )
        .route(route("keyed", "/keyed/*").plugin("key-auth", "{}"))
        .route(route("keyed-visible", "/visible").plugin(
            "key-auth",
            "{header: x-api-key, query: '', hide_credentials: false}",
        ))
        .route(route("basic", "/basic").plugin("basic-auth", "{}"))
        .route(
            route("gold-only", "/gold")
                .plugin("key-auth", "{}")
                .plugin("consumer-restriction", "{allow: {groups: [gold]}}"),
        )
        .route(
            route("not-bob", "/not-bob")
                .plugin("basic-auth", "{}")
                .plugin("key-auth", "{}")
                .plugin("consumer-restriction", "{deny: {consumers: [bob]}}"),
        )
        .route(
            route("acl-no-auth", "/acl-only")
                .plugin("consumer-restriction", "{allow: {consumers: [alice]}}"),
        )
        .to_yaml()
}

async fn start(up: &Upstream) -> Gateway {
    gateway_debug(&config(&up.target())).await
}

/// Asserts a uniform 401 and returns its body's `error` object.
async fn assert_401(r: reqwest::Response, scheme: &str) -> serde_json::Value {
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with(scheme), "{challenge}");
    let body: serde_json::Value = r.json().await.unwrap();
    let e = error_of(&body).clone();
    assert_eq!(e["code"], "unauthorized");
    // Missing, unknown and wrong credentials all read the same.
    assert_eq!(e["message"], "missing or invalid credentials");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_identifies_consumers_and_hides_the_key() {
    let up = Upstream::start("a").await;
    let gw = start(&up).await;
    let c = http_client();

    assert_401(c.get(gw.url("/keyed/x")).send().await.unwrap(), "ApiKey").await;
    assert_401(
        c.get(gw.url("/keyed/x"))
            .header("apikey", "not-a-key")
            .send()
            .await
            .unwrap(),
        "ApiKey",
    )
    .await;
    assert_eq!(up.hits(), 0, "refused requests never reach the upstream");

    // Both of alice's keys work (rotation), in the header or the query.
    for key in [KEY_ALICE, KEY_ALICE_NEW] {
        let r = c
            .get(gw.url("/keyed/x?a=1&b=%20"))
            .header("apikey", key)
            .header("x-consumer-name", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["headers"]["x-consumer-name"], "alice");
        assert_eq!(body["headers"]["x-consumer-groups"], "gold,staff");
        assert!(body["headers"].get("apikey").is_none(), "{body}");
        assert_eq!(body["query"], "a=1&b=%20");
    }
    let r = c
        .get(gw.url(&format!("/keyed/x?a=1&apikey={KEY_BOB}&z=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-consumer-name"], "bob");
    assert_eq!(body["headers"]["x-consumer-groups"], "free");
    assert_eq!(body["query"], "a=1&z=2");

    // Configured header, query keys off, key kept.
    let r = c
        .get(gw.url(&format!("/visible?apikey={KEY_ALICE}")))
        .send()
        .await
        .unwrap();
    assert_401(r, "ApiKey").await;
    let r = c
        .get(gw.url("/visible"))
        .header("x-api-key", KEY_BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-api-key"], KEY_BOB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_argon2_hashes() {
    let up = Upstream::start("a").await;
    let gw = start(&up).await;
    let c = http_client();

    assert_401(c.get(gw.url("/basic")).send().await.unwrap(), "Basic").await;
    let basic =
        |user: &str, pass: &str| c.get(gw.url("/basic")).basic_auth(user, Some(pass)).send();
    for (user, pass) in [
        ("carol", "wrong"),
        ("nobody", PASSWORD_CAROL),
        ("carol", ""),
    ] {
        assert_401(basic(user, pass).await.unwrap(), "Basic").await;
    }
    let r = c
        .get(gw.url("/basic"))
        .header("authorization", "Basic !!notbase64")
        .send()
        .await
        .unwrap();
    assert_401(r, "Basic").await;
    assert_eq!(up.hits(), 0);

    let r = basic("carol", PASSWORD_CAROL).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-consumer-name"], "carol");
    assert!(body["headers"].get("authorization").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_bcrypt_hashes() {
    let up = Upstream::start("a").await;
    let gw = start(&up).await;
    let c = http_client();
    let basic =
        |user: &str, pass: &str| c.get(gw.url("/basic")).basic_auth(user, Some(pass)).send();
    for user in ["erin-2a", "erin-2b", "erin-2y"] {
        let r = basic(user, PASSWORD_ERIN).await.unwrap();
        assert_eq!(r.status(), 200, "{user}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["headers"]["x-consumer-name"], "erin", "{user}");
        for wrong in ["erin-bcrypt-pa56", "", PASSWORD_CAROL] {
            assert_401(basic(user, wrong).await.unwrap(), "Basic").await;
        }
    }
    // argon2 and bcrypt credentials live side by side.
    let r = basic("carol", PASSWORD_CAROL).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 4, "refused passwords never reach the upstream");
    assert!(!gw.log().contains(PASSWORD_ERIN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_restriction_allows_and_denies() {
    let up = Upstream::start("a").await;
    let gw = start(&up).await;
    let c = http_client();
    let get = |path: &str, key: &str| c.get(gw.url(path)).header("apikey", key).send();

    assert_eq!(get("/gold", KEY_ALICE).await.unwrap().status(), 200);
    let r = get("/gold", KEY_BOB).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "consumer_not_allowed");

    // Several auth plugins on one route: each one must pass, in priority
    // order (basic-auth runs before key-auth).
    let r = c
        .get(gw.url("/not-bob"))
        .header("apikey", KEY_ALICE)
        .send()
        .await
        .unwrap();
    assert_401(r, "Basic").await;
    let r = c
        .get(gw.url("/not-bob"))
        .basic_auth("carol", Some(PASSWORD_CAROL))
        .header("apikey", KEY_BOB)
        .send()
        .await
        .unwrap();
    // The later key-auth sets bob as the consumer, who is denied.
    assert_eq!(r.status(), 403);

    // An ACL without any auth plugin has no consumer to check.
    assert_401(c.get(gw.url("/acl-only")).send().await.unwrap(), "ApiKey").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_and_secrets_never_logged() {
    let up = Upstream::start("a").await;
    let gw = start(&up).await;
    let c = http_client();
    let wrong_password = "carol-wrong-pa55-yy";
    let basic =
        |user: &str, pass: &str| c.get(gw.url("/basic")).basic_auth(user, Some(pass)).send();
    for _ in 0..3 {
        let r = c
            .get(gw.url("/keyed/x"))
            .header("apikey", "leaked-guess-key-9")
            .send()
            .await
            .unwrap();
        let e = assert_401(r, "ApiKey").await;
        assert!(!e.to_string().contains("leaked-guess-key-9"));
    }
    assert_401(basic("carol", wrong_password).await.unwrap(), "Basic").await;
    for (path, key) in [("/keyed/x", KEY_ALICE), ("/visible", KEY_BOB)] {
        let h = if path == "/visible" {
            "x-api-key"
        } else {
            "apikey"
        };
        let r = c.get(gw.url(path)).header(h, key).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = basic("carol", PASSWORD_CAROL).await.unwrap();
    assert_eq!(r.status(), 200);

    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |route: &str| -> f64 {
        let prefix =
            format!("weir_auth_failures_total{{weir_route=\"{route}\",reason=\"invalid\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no auth failure series for {route}:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(count("keyed"), 3.0);
    assert_eq!(count("basic"), 1.0);

    let log = gw.log();
    assert!(log.contains("authentication failed"), "{log}");
    let basic = base64::engine::general_purpose::STANDARD;
    for secret in [
        KEY_ALICE.to_string(),
        KEY_BOB.to_string(),
        PASSWORD_CAROL.to_string(),
        wrong_password.to_string(),
        "leaked-guess-key-9".to_string(),
        basic.encode(format!("carol:{PASSWORD_CAROL}")),
        basic.encode(format!("carol:{wrong_password}")),
    ] {
        assert!(
            !log.contains(&secret),
            "the log holds a secret: {secret}\n{log}"
        );
    }
}

#[test]
fn credential_errors_name_the_field_without_the_secret() {
    let digest = sha_hex("dup");
    let err = rejected(
        &format!(
            "upstreams: [{{id: u, targets: [{{addr: '127.0.0.1:1'}}]}}]
consumers:
  - name: a
    credentials:
      key-auth: [{{key_sha256: plain-secret-value}}, {{key_sha256: {digest}}}]
      basic-auth:
        - {{username: a, password_hash: 'hunter2'}}
        - {{username: a2, password_hash: '$2x$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie'}}
        - {{username: a3, password_hash: '$2b$04$tooShort'}}
  - name: b
    credentials:
      key-auth: [{{key_sha256: {digest}}}]
  - name: 'bad name'
routes:
  - id: r
    paths: [/]
    upstream: u
    plugins:
      key-auth: {{header: 'bad header'}}
      consumer-restriction: {{allow: {{consumers: [nobody]}}}}
"
        ),
        &[
        "consumers[0].credentials.key-auth[0].key_sha256: must be the SHA-256 of the key as 64 hex digits",
        "consumers[0].credentials.basic-auth[0].password_hash: must be an argon2 PHC string (`$argon2id$v=19$m=...`) or a bcrypt hash",
        "consumers[0].credentials.basic-auth[1].password_hash: must be an argon2 PHC string",
        "consumers[0].credentials.basic-auth[2].password_hash: must be an argon2 PHC string",
        "consumers[1].credentials.key-auth[0].key_sha256: the same key is given to another credential",
        "consumers[2].name: `bad name` is not a valid consumer name",
        "routes[0].plugins.key-auth.header: `bad header` is not a valid header name",
        "routes[0].plugins.consumer-restriction.allow.consumers[0]: no consumer named `nobody`",
        ],
    );
    for secret in ["plain-secret-value", "hunter2", "EGdrhbKUv8", "tooShort"] {
        assert!(!err.contains(secret), "{err}");
    }
}

fn signature(method: &str, pq: &str, date: &str, body_sha: &str, secret: &str) -> String {
    use hmac::Mac;
    let data = format!("@request-target: {method} {pq}\ndate: {date}\nx-body-sha: {body_sha}");
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_auth_checks_signature_and_clock_skew() {
    let up = Upstream::start("a").await;
    let gw = start(&up).await;
    let c = http_client();
    let send = |pq: &str, date: String, auth: String| {
        c.get(gw.url(pq))
            .header("date", date)
            .header("x-body-sha", "abc")
            .header("authorization", auth)
            .send()
    };
    let auth = |key: &str, headers: &str, sig: &str| {
        format!(
            r#"Signature keyId="{key}",algorithm="hmac-sha256",headers="{headers}",signature="{sig}""#
        )
    };
    let all = "@request-target date x-body-sha";
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let good = signature("get", "/signed?x=1", &now, "abc", HMAC_SECRET);

    let r = send("/signed?x=1", now.clone(), auth("dave-key", all, &good))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-consumer-name"], "dave");
    assert!(body["headers"].get("authorization").is_none(), "{body}");

    // Another path, a wrong secret, an unknown key id, a header left out
    // of the signature, a date outside the window: all the same 401.
    let old =
        httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(600));
    let old_sig = signature("get", "/signed?x=1", &old, "abc", HMAC_SECRET);
    let wrong = signature(
        "get",
        "/signed?x=1",
        &now,
        "abc",
        "another-secret-another-secret-000000",
    );
    for (pq, date, a) in [
        ("/signed?x=2", now.clone(), auth("dave-key", all, &good)),
        ("/signed?x=1", now.clone(), auth("dave-key", all, &wrong)),
        ("/signed?x=1", now.clone(), auth("nobody", all, &good)),
        (
            "/signed?x=1",
            now.clone(),
            auth("dave-key", "@request-target date", &good),
        ),
        ("/signed?x=1", old.clone(), auth("dave-key", all, &old_sig)),
        ("/signed?x=1", now.clone(), "Signature garbage".to_string()),
    ] {
        let r = send(pq, date, a.clone()).await.unwrap();
        assert_401(r, "Signature").await;
    }
    assert!(!gw.log().contains(HMAC_SECRET));
    assert!(!gw.log().contains(&good));
}

/// `Digest: SHA-256=<base64>` of a body.
fn digest_of(body: &[u8]) -> String {
    format!(
        "SHA-256={}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body))
    )
}

/// An `Authorization: Signature …` over `@request-target`, `date` and
/// (when given) `digest`.
fn signed_auth(pq: &str, date: &str, digest: Option<&str>) -> String {
    use hmac::Mac;
    let mut data = format!("@request-target: post {pq}\ndate: {date}");
    let mut headers = String::from("@request-target date");
    if let Some(d) = digest {
        data.push_str(&format!("\ndigest: {d}"));
        headers.push_str(" digest");
    }
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).unwrap();
    m.update(data.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    format!(
        r#"Signature keyId="dave-key",algorithm="hmac-sha256",headers="{headers}",signature="{sig}""#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_body_digest_is_checked_before_proxying() {
    let up = Upstream::start("a").await;
    let gw = start(&up).await;
    let c = http_client();
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let body = br#"{"order":42}"#.to_vec();
    let digest = digest_of(&body);
    let post = |path: &str, digest: Option<&str>, signed: Option<&str>, body: reqwest::Body| {
        let mut r = c
            .post(gw.url(path))
            .header("date", &now)
            .header("authorization", signed_auth(path, &now, signed))
            .body(body);
        if let Some(d) = digest {
            r = r.header("digest", d);
        }
        r.send()
    };

    // The body matches its signed digest: proxied whole.
    let r = post(
        "/signed-body",
        Some(&digest),
        Some(&digest),
        body.clone().into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["headers"]["x-consumer-name"], "dave");
    assert_eq!(echo["headers"]["digest"], digest.as_str());
    // A chunked body (no Content-Length) is read the same way.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(body[..5].to_vec()), Ok(body[5..].to_vec())];
    let r = post(
        "/signed-body",
        Some(&digest),
        Some(&digest),
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(up.hits(), 2);

    // Another body under the signed digest, a digest of another body, a
    // digest left out of the signature, no digest at all: one 401 each,
    // and the upstream never sees them.
    let other = digest_of(b"{\"order\":43}");
    for (label, d, signed, b) in [
        (
            "tampered body",
            Some(&digest),
            Some(&digest),
            br#"{"order":43}"#.to_vec(),
        ),
        ("wrong digest", Some(&other), Some(&other), body.clone()),
        ("unsigned digest", Some(&digest), None, body.clone()),
        ("no digest", None, None, body.clone()),
        (
            "unusable digest",
            Some(&"MD5=abc".to_string()),
            Some(&"MD5=abc".to_string()),
            body.clone(),
        ),
    ] {
        let r = post(
            "/signed-body",
            d.map(|s| s.as_str()),
            signed.map(|s| s.as_str()),
            b.into(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 401, "{label}");
        assert_401(r, "Signature").await;
    }
    assert_eq!(up.hits(), 2, "refused requests never reach the upstream");

    // The body is read within the route's limits: request-size-limit's
    // 16 bytes, and the plugin's own 1024.
    let r = post(
        "/signed-small",
        Some(&digest),
        Some(&digest),
        body.clone().into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let big = vec![b'x'; 40];
    let d = digest_of(&big);
    let r = post("/signed-small", Some(&d), Some(&d), big.into())
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_of(&e)["code"], "payload_too_large");
    let huge = vec![b'y'; 2000];
    let d = digest_of(&huge);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        huge.chunks(500).map(|c| Ok(c.to_vec())).collect();
    let r = post(
        "/signed-body",
        Some(&d),
        Some(&d),
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(up.hits(), 3);
}
