//! The `compression` plugin through a real gateway and a scripted
//! upstream: `Accept-Encoding` negotiation, each coding decoding back to
//! the upstream's bytes (decoded here with the same codec crates), the
//! cases left alone (already encoded, short, other media types, 204, 206,
//! HEAD, `no-transform`), `Vary` and `ETag`, and streaming.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::gateway;
use weir_testsupport::{Gate, Script, ScriptedUpstream, http_client};

/// About 24 kB of JSON that compresses well but not trivially.
fn json_body() -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    for i in 0..400 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i}\",\"price\":{}.{:02},\"tags\":[\"a{}\",\"b{}\"]}}",
            i * 7 % 1000,
            i % 100,
            i % 13,
            i % 17
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        Some("zstd") => out = zstd::stream::decode_all(body).expect("valid zstd"),
        Some(other) => panic!("unexpected coding {other}"),
    }
    out
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_string())
}

const ROUTES: &str = "
routes:
  - id: default
    paths: [/d/*]
    upstream: u
    plugins:
      compression: {}
  - id: gzip-first
    paths: [/g/*]
    upstream: u
    plugins:
      compression: {algorithms: [gzip, br, zstd], min_length: 100, content_types: [text/plain]}
";

async fn setup() -> (ScriptedUpstream, weir_testsupport::Gateway) {
    let up = ScriptedUpstream::start().await;
    let yaml = format!(
        "upstreams: [{{id: u, targets: [{{addr: \"{}\"}}]}}]\n{ROUTES}",
        up.target()
    );
    let gw = gateway(&yaml).await;
    (up, gw)
}

/// Sends `GET path` with `accept` (None: no header); returns the coding,
/// the decoded body and the response.
async fn fetch(
    gw: &weir_testsupport::Gateway,
    path: &str,
    accept: Option<&str>,
) -> (Option<String>, Vec<u8>, reqwest::header::HeaderMap, u16) {
    let mut req = http_client().get(gw.url(path));
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let coding = header(&r, "content-encoding");
    let headers = r.headers().clone();
    let raw = r.bytes().await.expect("body");
    let body = decode(coding.as_deref(), &raw);
    (coding, body, headers, status)
}

#[tokio::test]
async fn negotiation_follows_q_values_and_server_preference() {
    let (up, gw) = setup().await;
    let json = json_body();
    up.set(
        "/d/json",
        Script::ok()
            .header("content-type", "application/json")
            .body(json.clone()),
    );
    up.set(
        "/g/text",
        Script::ok()
            .header("content-type", "text/plain; charset=utf-8")
            .body(json.clone()),
    );
    // (path, Accept-Encoding, coding expected)
    let table: &[(&str, Option<&str>, Option<&str>)] = &[
        ("/d/json", None, None),
        ("/d/json", Some(""), None),
        ("/d/json", Some("identity"), None),
        ("/d/json", Some("gzip"), Some("gzip")),
        ("/d/json", Some("br"), Some("br")),
        ("/d/json", Some("zstd"), Some("zstd")),
        // Ties go to the server's order: default zstd, br, gzip.
        ("/d/json", Some("gzip, deflate, br, zstd"), Some("zstd")),
        ("/g/text", Some("gzip, deflate, br, zstd"), Some("gzip")),
        ("/d/json", Some("gzip;q=1.0, br;q=0.8"), Some("gzip")),
        ("/g/text", Some("gzip;q=0.5, zstd;q=0.9"), Some("zstd")),
        ("/d/json", Some("zstd;q=0, br;q=0, gzip"), Some("gzip")),
        ("/d/json", Some("zstd;q=0, br;q=0, gzip;q=0"), None),
        ("/d/json", Some("*"), Some("zstd")),
        ("/g/text", Some("*;q=0.3, gzip;q=0"), Some("br")),
        ("/d/json", Some("*;q=0"), None),
        ("/d/json", Some("gzip;q=0.5, identity"), None),
        ("/d/json", Some("deflate, compress"), None),
        ("/d/json", Some("gzip;q=high"), None),
    ];
    for &(path, accept, want) in table {
        let (coding, body, headers, status) = fetch(&gw, path, accept).await;
        assert_eq!(status, 200, "{path} {accept:?}");
        assert_eq!(
            coding.as_deref(),
            want,
            "{path} Accept-Encoding: {accept:?}"
        );
        assert_eq!(
            body, json,
            "{path} {accept:?}: decodes to the upstream's bytes"
        );
        // The answer varies by Accept-Encoding whether or not this client
        // got it compressed.
        assert_eq!(
            headers.get("vary").map(|v| v.to_str().unwrap()),
            Some("Accept-Encoding"),
            "{path} {accept:?}"
        );
        if want.is_some() {
            assert!(headers.get("content-length").is_none(), "{path} {accept:?}");
        } else {
            assert_eq!(
                headers.get("content-length").map(|v| v.to_str().unwrap()),
                Some(json.len().to_string().as_str())
            );
        }
    }
}

#[tokio::test]
async fn each_coding_round_trips_a_chunked_body_and_weakens_the_etag() {
    let (up, gw) = setup().await;
    let json = json_body();
    let mut script = Script::ok()
        .header("content-type", "application/problem+json")
        .header("etag", "\"v1\"")
        .header("vary", "Origin")
        .header("vary", "X-Tenant");
    for part in json.chunks(3000) {
        script = script.body(part.to_vec());
    }
    up.set("/d/chunked", script);
    for coding in ["gzip", "br", "zstd"] {
        let (got, body, headers, _) = fetch(&gw, "/d/chunked", Some(coding)).await;
        assert_eq!(got.as_deref(), Some(coding));
        assert_eq!(body, json, "{coding} decodes to the upstream's bytes");
        assert_eq!(headers["etag"], "W/\"v1\"", "{coding}");
        assert_eq!(headers["vary"], "Origin, X-Tenant, Accept-Encoding");
        assert_eq!(headers.get_all("vary").iter().count(), 1);
    }
    // Not compressed: the strong ETag stays.
    let (got, body, headers, _) = fetch(&gw, "/d/chunked", None).await;
    assert_eq!(got, None);
    assert_eq!(body, json);
    assert_eq!(headers["etag"], "\"v1\"");
}

#[tokio::test]
async fn responses_that_must_not_change_are_left_alone() {
    let (up, gw) = setup().await;
    let json = json_body();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).unwrap();
    let already = gz.finish().unwrap();
    up.set(
        "/d/encoded",
        Script::ok()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(already.clone()),
    );
    up.set(
        "/d/short",
        Script::ok()
            .header("content-type", "application/json")
            .body(&b"{\"ok\":true}"[..]),
    );
    up.set(
        "/d/png",
        Script::ok()
            .header("content-type", "image/png")
            .body(json.clone()),
    );
    up.set("/d/untyped", Script::ok().body(json.clone()));
    up.set(
        "/d/no-transform",
        Script::ok()
            .header("content-type", "application/json")
            .header("cache-control", "public, no-transform")
            .body(json.clone()),
    );
    up.set(
        "/d/partial",
        Script::status(206)
            .header("content-type", "application/json")
            .header(
                "content-range",
                format!("bytes 0-{}/99999", json.len() - 1).as_str(),
            )
            .body(json.clone()),
    );
    up.set(
        "/d/empty",
        Script::status(204).header("content-type", "application/json"),
    );
    // An unknown length is no reason to skip: a streamed body of a
    // compressible type is compressed.
    up.set(
        "/d/streamed",
        Script::ok()
            .header("content-type", "text/html")
            .body(&b"<p>"[..])
            .body(&b"hi</p>"[..]),
    );

    let c = http_client();
    let r = c
        .get(gw.url("/d/encoded"))
        .header("accept-encoding", "gzip, br, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(
        r.bytes().await.unwrap(),
        already,
        "an encoded body passes byte for byte"
    );

    for (path, status, body) in [
        ("/d/short", 200, b"{\"ok\":true}".to_vec()),
        ("/d/png", 200, json.clone()),
        ("/d/untyped", 200, json.clone()),
        ("/d/no-transform", 200, json.clone()),
        ("/d/partial", 206, json.clone()),
        ("/d/empty", 204, Vec::new()),
    ] {
        let (coding, got, headers, st) = fetch(&gw, path, Some("gzip, br, zstd")).await;
        assert_eq!(st, status, "{path}");
        assert_eq!(coding, None, "{path} is not compressed");
        assert_eq!(got, body, "{path}");
        assert!(headers.get("vary").is_none(), "{path}: no Vary");
    }

    let (coding, got, _, _) = fetch(&gw, "/d/streamed", Some("gzip")).await;
    assert_eq!(coding.as_deref(), Some("gzip"));
    assert_eq!(got, b"<p>hi</p>");

    // HEAD: the headers of the uncompressed answer, nothing added.
    up.set(
        "/d/head",
        Script::ok()
            .header("content-type", "application/json")
            .body(json.clone()),
    );
    let r = c
        .head(gw.url("/d/head"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    assert!(r.headers().get("vary").is_none());
}

/// A decoder fed the bytes as they arrive, to see how much is readable.
enum Partial {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Partial {
    fn new(coding: &str) -> Partial {
        match coding {
            "gzip" => Partial::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            "br" => Partial::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Partial::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
            other => panic!("unexpected coding {other}"),
        }
    }

    /// Feeds `data`; returns everything decoded so far.
    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            Partial::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Partial::Brotli(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Partial::Zstd(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
        }
    }
}

#[tokio::test]
async fn a_stalled_upstream_body_is_readable_up_to_the_stall() {
    let (up, gw) = setup().await;
    let first = b"{\"first\":\"part, sent before the upstream waits\"".repeat(20);
    let rest = b",\"rest\":\"after the signal\"}".repeat(20);
    for coding in ["gzip", "br", "zstd"] {
        let gate = Gate::new();
        let path = format!("/d/stream-{coding}");
        up.set(
            &path,
            Script::ok()
                .header("content-type", "application/json")
                .body(first.clone())
                .wait(&gate)
                .body(rest.clone()),
        );
        let mut r = http_client()
            .get(gw.url(&path))
            .header("accept-encoding", coding)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "content-encoding").as_deref(), Some(coding));
        let mut dec = Partial::new(coding);
        // The gate is still closed: everything decoded here was sent
        // before the upstream finished.
        let decoded = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let chunk = r
                    .chunk()
                    .await
                    .expect("body")
                    .expect("the body cannot end before the signal");
                let so_far = dec.feed(&chunk);
                if so_far.len() >= first.len() {
                    break so_far;
                }
            }
        })
        .await
        .expect("the first part arrives while the upstream waits");
        assert_eq!(
            decoded, first,
            "{coding}: the first part, decoded before the signal"
        );
        gate.open();
        let mut all = decoded;
        while let Some(chunk) = r.chunk().await.unwrap() {
            all = dec.feed(&chunk);
        }
        let mut want = first.clone();
        want.extend_from_slice(&rest);
        assert_eq!(all, want, "{coding}: the whole body");
    }
}
