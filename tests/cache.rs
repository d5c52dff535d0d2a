//! The `proxy-cache` plugin through a real gateway and a scripted origin
//! that counts what reaches it: hits and misses, streaming while storing,
//! `Vary`, bypass rules, request collapsing, revalidation,
//! stale-while-revalidate, stale-if-error, the object size limit and the
//! admin purge.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::gateway;
use weir_testsupport::{Gateway, Origin, OriginScript as Script, http_client, wait_until};

fn config(target: &str, plugin: &str) -> String {
    format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{target}\"}}]}}]
routes:
  - id: cached
    paths: [\"/*\"]
    upstream: u
    plugins:
      proxy-cache: {plugin}
"
    )
}

fn status(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn get(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, reqwest::header::HeaderMap) {
    let mut rb = http_client().get(gw.url(path));
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let r = rb.send().await.unwrap();
    let st = status(&r);
    let code = r.status().as_u16();
    let h = r.headers().clone();
    let body = r.text().await.unwrap();
    (code, st, body, h)
}

#[tokio::test]
async fn a_miss_streams_while_stored_then_hits_carry_age() {
    let origin = Origin::start().await;
    let mut s = Script::ok(
        "",
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
    );
    s.chunks = vec![Bytes::from_static(b"first-"), Bytes::from_static(b"rest")];
    s.hold_body = true;
    origin.script("/a", s);
    let gw = gateway(&config(&origin.target(), "{}")).await;

    let mut r = http_client().get(gw.url("/a")).send().await.unwrap();
    assert_eq!(status(&r), "MISS");
    // The first chunk reaches the client while the origin still holds the
    // rest: nothing is buffered before the client sees bytes.
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first-");
    origin.release();
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(&rest[..], b"rest");

    let (code, st, body, h) = get(&gw, "/a", &[]).await;
    assert_eq!(
        (code, st.as_str(), body.as_str()),
        (200, "HIT", "first-rest")
    );
    let age: u64 = h["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 60, "age {age}");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["content-length"], "10");
    // HEAD is answered from the GET entry.
    let r = http_client().head(gw.url("/a")).send().await.unwrap();
    assert_eq!(status(&r), "HIT");
    assert_eq!(origin.hits("/a"), 1);
    // Counted by route and cache status (when each exchange is logged).
    let url = gw.admin_url("/metrics");
    wait_until("two hits counted", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let m = http_client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            m.lines().any(|l| {
                l.starts_with("weir_cache_requests")
                    && l.contains("weir_route=\"cached\"")
                    && l.contains("cache_status=\"hit\"")
                    && l.ends_with(" 2")
            })
        }
    })
    .await;
}

#[tokio::test]
async fn a_body_with_content_length_is_stored() {
    let origin = Origin::start().await;
    // With Content-Length the server stops at the last byte without
    // polling the body's end: the entry must be committed anyway.
    origin.script(
        "/len",
        Script::ok(
            "hello",
            &[("cache-control", "max-age=60"), ("content-length", "5")],
        ),
    );
    let gw = gateway(&config(&origin.target(), "{}")).await;
    assert_eq!(get(&gw, "/len", &[]).await.1, "MISS");
    // Stored before the last byte reached the client.
    let (_, st, body, _) = get(&gw, "/len", &[]).await;
    assert_eq!((st.as_str(), body.as_str()), ("HIT", "hello"));
    assert_eq!(origin.hits("/len"), 1);
}

#[tokio::test]
async fn vary_keeps_one_entry_per_variant() {
    let origin = Origin::start().await;
    origin.script(
        "/v",
        Script::ok(
            "hello",
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
        ),
    );
    let gw = gateway(&config(&origin.target(), "{}")).await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(get(&gw, "/v", &en).await.1, "MISS");
    assert_eq!(get(&gw, "/v", &fr).await.1, "MISS");
    assert_eq!(get(&gw, "/v", &en).await.1, "HIT");
    assert_eq!(get(&gw, "/v", &fr).await.1, "HIT");
    assert_eq!(get(&gw, "/v", &[]).await.1, "MISS");
    assert_eq!(origin.hits("/v"), 3);

    origin.script(
        "/star",
        Script::ok("x", &[("cache-control", "max-age=60"), ("vary", "*")]),
    );
    assert_eq!(get(&gw, "/star", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/star", &[]).await.1, "MISS");
    assert_eq!(origin.hits("/star"), 2);
}

#[tokio::test]
async fn what_is_not_cached() {
    let origin = Origin::start().await;
    origin.script(
        "/nostore",
        Script::ok("x", &[("cache-control", "no-store")]),
    );
    origin.script(
        "/private",
        Script::ok("x", &[("cache-control", "private, max-age=60")]),
    );
    origin.script("/plain", Script::ok("x", &[]));
    origin.script("/ok", Script::ok("x", &[("cache-control", "max-age=60")]));
    origin.script("/auth", Script::ok("x", &[("cache-control", "max-age=60")]));
    let gw = gateway(&config(&origin.target(), "{}")).await;
    for path in ["/nostore", "/private", "/plain"] {
        assert_eq!(get(&gw, path, &[]).await.1, "MISS", "{path}");
        assert_eq!(get(&gw, path, &[]).await.1, "MISS", "{path}");
        assert_eq!(origin.hits(path), 2, "{path}");
    }
    // Other methods and a client's no-store pass by the cache.
    let r = http_client().post(gw.url("/ok")).send().await.unwrap();
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(
        get(&gw, "/ok", &[("cache-control", "no-store")]).await.1,
        "BYPASS"
    );
    assert_eq!(get(&gw, "/ok", &[("range", "bytes=0-1")]).await.1, "BYPASS");
    // An authorized request is not stored without the upstream's consent.
    assert_eq!(
        get(&gw, "/auth", &[("authorization", "Bearer t")]).await.1,
        "MISS"
    );
    assert_eq!(get(&gw, "/auth", &[]).await.1, "MISS");
    assert_eq!(origin.hits("/auth"), 2);
}

#[tokio::test]
async fn route_ttl_applies_when_the_upstream_gives_none() {
    let origin = Origin::start().await;
    origin.script("/plain", Script::ok("x", &[]));
    origin.script("/short", Script::ok("x", &[("cache-control", "max-age=0")]));
    let gw = gateway(&config(&origin.target(), "{ttl: 60s, force_ttl: 120s}")).await;
    assert_eq!(get(&gw, "/plain", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/plain", &[]).await.1, "HIT");
    // force_ttl wins over the upstream's max-age=0.
    assert_eq!(get(&gw, "/short", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/short", &[]).await.1, "HIT");
    assert_eq!(origin.hits("/plain") + origin.hits("/short"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_send_one_request_upstream() {
    const N: u64 = 20;
    let origin = Origin::start().await;
    let mut s = Script::ok("collapsed", &[("cache-control", "max-age=60")]);
    s.hold = true;
    origin.script("/c", s);
    let gw = gateway(&config(&origin.target(), "{collapse_timeout: 60s}")).await;
    let mut tasks = Vec::new();
    for _ in 0..N {
        let url = gw.url("/c");
        tasks.push(tokio::spawn(async move {
            let r = http_client().get(url).send().await.unwrap();
            (status(&r), r.text().await.unwrap())
        }));
    }
    // The origin holds its answer until every other request waits on the
    // one fetch (which may still be on its way to the origin).
    let stats = gw.admin_url("/v1/cache");
    wait_until("all but one waiting", Duration::from_secs(30), || {
        let stats = stats.clone();
        let origin = &origin;
        async move {
            let v: serde_json::Value = http_client()
                .get(stats)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["waiting"] == N - 1 && origin.hits("/c") >= 1
        }
    })
    .await;
    assert_eq!(origin.hits("/c"), 1);
    origin.release();
    let mut statuses = Vec::new();
    for t in tasks {
        let (st, body) = t.await.unwrap();
        assert_eq!(body, "collapsed");
        statuses.push(st);
    }
    assert_eq!(
        origin.hits("/c"),
        1,
        "exactly one request reached the origin"
    );
    assert_eq!(statuses.iter().filter(|s| *s == "MISS").count(), 1);
    assert_eq!(
        statuses.iter().filter(|s| *s == "HIT").count() as u64,
        N - 1
    );
}

#[tokio::test]
async fn revalidation_with_etag_and_client_conditionals() {
    let origin = Origin::start().await;
    // max-age=0: stored, but every use is revalidated.
    origin.script(
        "/r",
        Script::ok(
            "body-v1",
            &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
        ),
    );
    let gw = gateway(&config(&origin.target(), "{}")).await;
    assert_eq!(get(&gw, "/r", &[]).await.1, "MISS");
    let (code, st, body, _) = get(&gw, "/r", &[]).await;
    assert_eq!(
        (code, st.as_str(), body.as_str()),
        (200, "REVALIDATED", "body-v1")
    );
    let sent = origin.last_headers("/r").unwrap();
    assert_eq!(sent["if-none-match"], "\"v1\"");
    assert_eq!(origin.hits("/r"), 2);
    // A changed resource replaces the entry.
    origin.script(
        "/r",
        Script::ok(
            "body-v2",
            &[("cache-control", "max-age=0"), ("etag", "\"v2\"")],
        ),
    );
    let (_, st, body, _) = get(&gw, "/r", &[]).await;
    assert_eq!((st.as_str(), body.as_str()), ("EXPIRED", "body-v2"));

    // A client's own conditional request on a fresh entry: 304 from the
    // gateway, the origin is not asked.
    origin.script(
        "/f",
        Script::ok(
            "fresh",
            &[("cache-control", "max-age=60"), ("etag", "\"f1\"")],
        ),
    );
    assert_eq!(get(&gw, "/f", &[]).await.1, "MISS");
    let (code, st, body, h) = get(&gw, "/f", &[("if-none-match", "\"f1\"")]).await;
    assert_eq!((code, st.as_str(), body.as_str()), (304, "HIT", ""));
    assert_eq!(h["etag"], "\"f1\"");
    let (code, st, _, _) = get(&gw, "/f", &[("if-none-match", "\"other\"")]).await;
    assert_eq!((code, st.as_str()), (200, "HIT"));
    assert_eq!(origin.hits("/f"), 1);
    // A client asking for revalidation gets it.
    assert_eq!(
        get(&gw, "/f", &[("cache-control", "no-cache")]).await.1,
        "REVALIDATED"
    );
    assert_eq!(origin.hits("/f"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let origin = Origin::start().await;
    origin.script(
        "/s",
        Script::ok(
            "old",
            &[("cache-control", "max-age=0, stale-while-revalidate=300")],
        ),
    );
    let gw = gateway(&config(&origin.target(), "{}")).await;
    assert_eq!(get(&gw, "/s", &[]).await.1, "MISS");
    // The refresh is held at the origin: every request meanwhile is
    // answered stale at once, and only one refresh is sent.
    let mut s = Script::ok(
        "new",
        &[("cache-control", "max-age=0, stale-while-revalidate=300")],
    );
    s.hold = true;
    origin.script("/s", s);
    for _ in 0..5 {
        let (code, st, body, _) = get(&gw, "/s", &[]).await;
        assert_eq!((code, st.as_str(), body.as_str()), (200, "STALE", "old"));
    }
    wait_until(
        "the background refresh reached the origin",
        Duration::from_secs(10),
        || async { origin.hits("/s") == 2 },
    )
    .await;
    assert_eq!(origin.hits("/s"), 2, "one background refresh");
    origin.release();
    wait_until(
        "the refreshed body is served",
        Duration::from_secs(10),
        || async { get(&gw, "/s", &[]).await.2 == "new" },
    )
    .await;
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_answer_when_the_upstream_fails() {
    let origin = Origin::start().await;
    origin.script(
        "/e",
        Script::ok(
            "good",
            &[("cache-control", "max-age=0, stale-if-error=300")],
        ),
    );
    origin.script(
        "/strict",
        Script::ok(
            "good",
            &[
                (
                    "cache-control",
                    "max-age=0, must-revalidate, stale-if-error=300",
                ),
                ("etag", "\"s\""),
            ],
        ),
    );
    let gw = gateway(&config(&origin.target(), "{}")).await;
    assert_eq!(get(&gw, "/e", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/strict", &[]).await.1, "MISS");
    origin.script("/e", Script::ok("broken", &[]).status(503));
    origin.script("/strict", Script::ok("broken", &[]).status(503));
    let (code, st, body, _) = get(&gw, "/e", &[]).await;
    assert_eq!((code, st.as_str(), body.as_str()), (200, "STALE", "good"));
    // must-revalidate forbids it: the error goes through.
    let (code, st, _, _) = get(&gw, "/strict", &[]).await;
    assert_eq!((code, st.as_str()), (503, "EXPIRED"));
}

#[tokio::test]
async fn bodies_over_the_object_limit_stream_uncached() {
    let origin = Origin::start().await;
    let mut s = Script::ok("", &[("cache-control", "max-age=60")]);
    s.chunks = vec![Bytes::from(vec![b'a'; 1500]), Bytes::from(vec![b'b'; 1500])];
    origin.script("/big", s);
    origin.script(
        "/small",
        Script::ok("small", &[("cache-control", "max-age=60")]),
    );
    let gw = gateway(&config(&origin.target(), "{max_object_bytes: 2000}")).await;
    for _ in 0..2 {
        let (code, st, body, _) = get(&gw, "/big", &[]).await;
        assert_eq!((code, st.as_str(), body.len()), (200, "MISS", 3000));
        assert!(body.starts_with('a') && body.ends_with('b'));
    }
    assert_eq!(origin.hits("/big"), 2);
    assert_eq!(get(&gw, "/small", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/small", &[]).await.1, "HIT");
}

#[tokio::test]
async fn admin_purge_by_key_and_prefix() {
    let origin = Origin::start().await;
    for p in ["/p/1", "/p/2", "/q"] {
        origin.script(p, Script::ok(p, &[("cache-control", "max-age=60")]));
    }
    let gw = gateway(&config(&origin.target(), "{}")).await;
    for p in ["/p/1", "/p/2", "/q"] {
        assert_eq!(get(&gw, p, &[]).await.1, "MISS");
        assert_eq!(get(&gw, p, &[]).await.1, "HIT");
    }
    let host = gw.proxy_addr().to_string();
    let c = http_client();
    let purge = |body: serde_json::Value| {
        let c = c.clone();
        let url = gw.admin_url("/v1/cache/purge");
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (code, v) = purge(serde_json::json!({"key": format!("GET {host}/p/1")})).await;
    assert_eq!((code, v["purged"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(get(&gw, "/p/1", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/p/2", &[]).await.1, "HIT");
    let (code, v) = purge(serde_json::json!({"prefix": format!("GET {host}/p/")})).await;
    assert_eq!((code, v["purged"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(get(&gw, "/p/1", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/p/2", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/q", &[]).await.1, "HIT");

    // Bad bodies: 400 naming the field.
    for (body, pointer) in [
        (serde_json::json!({}), ""),
        (serde_json::json!({"key": ""}), "/key"),
        (serde_json::json!({"prefix": 3}), "/prefix"),
        (serde_json::json!({"key": "a", "prefix": "b"}), "/prefix"),
        (serde_json::json!({"keys": "a"}), "/keys"),
    ] {
        let (code, v) = purge(body.clone()).await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(v["error"]["problems"][0]["pointer"], pointer, "{body}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_purge_needs_an_admin_key() {
    let root = tempfile::tempdir().unwrap();
    let node = weir_testsupport::raftnode::Node::start(
        common::weir_bin(),
        &root.path().join("n"),
        &[
            "--admin-key",
            "ops:admin:aaaaaaaaaaaaaaaaaaaa",
            "--admin-key",
            "dash:viewer:vvvvvvvvvvvvvvvvvvvv",
        ],
    )
    .await
    .unwrap();
    let c = http_client();
    let url = node.url("/v1/cache/purge");
    let body = serde_json::json!({"prefix": "GET "});
    assert_eq!(c.post(&url).json(&body).send().await.unwrap().status(), 401);
    let r = c
        .post(&url)
        .bearer_auth("vvvvvvvvvvvvvvvvvvvv")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(&url)
        .bearer_auth("aaaaaaaaaaaaaaaaaaaa")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(node.url("/v1/cache"))
        .bearer_auth("vvvvvvvvvvvvvvvvvvvv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn hits_are_compressed_like_misses() {
    let origin = Origin::start().await;
    let body = format!("{{\"k\":\"{}\"}}", "v".repeat(2000));
    origin.script(
        "/j",
        Script::ok(
            &body,
            &[
                ("content-type", "application/json"),
                ("cache-control", "max-age=60"),
            ],
        ),
    );
    let yaml = config(&origin.target(), "{}")
        + "      compression: {algorithms: [gzip], min_length: 16}\n";
    let gw = gateway(&yaml).await;
    for want in ["MISS", "HIT"] {
        let r = http_client()
            .get(gw.url("/j"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(status(&r), want);
        assert_eq!(r.headers()["content-encoding"], "gzip", "{want}");
        let raw = r.bytes().await.unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
            .unwrap();
        assert_eq!(out, body, "{want}");
    }
    // Stored uncompressed: a client without Accept-Encoding gets the plain
    // body from the same entry.
    let (code, st, plain, h) = get(&gw, "/j", &[]).await;
    assert_eq!((code, st.as_str()), (200, "HIT"));
    assert!(h.get("content-encoding").is_none());
    assert_eq!(plain, body);
    assert_eq!(origin.hits("/j"), 1);
}

// Header values too large for any duration, from the client and from the
// upstream, are capped (RFC 9111 §1.2.2) instead of overflowing: a
// `min-fresh` or an `Age` as long as a u64 once panicked the request (and
// would abort a release build, which is built with `panic = "abort"`).
#[tokio::test]
async fn huge_ages_and_lifetimes_from_either_side_are_served() {
    let origin = Origin::start().await;
    origin.script(
        "/huge",
        Script::ok(
            "body",
            &[
                ("cache-control", "max-age=18446744073709551615"),
                ("age", "18446744073709551615"),
            ],
        ),
    );
    let gw = gateway(&config(&origin.target(), "{}")).await;
    let (code, st, body, _) = get(&gw, "/huge", &[]).await;
    assert_eq!((code, st.as_str(), body.as_str()), (200, "MISS", "body"));
    for cc in [
        "min-fresh=18446744073709551615",
        "max-age=99999999999999999999999999",
        "max-stale=18446744073709551615",
    ] {
        let (code, _, body, _) = get(&gw, "/huge", &[("cache-control", cc)]).await;
        assert_eq!((code, body.as_str()), (200, "body"), "{cc}");
    }
    // Still serving. (An `Age` past the capped lifetime makes the entry
    // stale from the start, so this is a fetch again, not a hit.)
    let (code, _, body, _) = get(&gw, "/huge", &[]).await;
    assert_eq!((code, body.as_str()), (200, "body"));
}
