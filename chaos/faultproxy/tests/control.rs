//! The HTTP control API on loopback: listing proxies, adding, updating and
//! removing toxics, partitions on and off, reset, and refusals that name
//! the field; each change shows in real traffic through the proxy.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use weir_faultproxy::{ControlServer, Proxy, ProxyConfig, Registry};

mod common;

use common::{LOCAL, tcp_echo};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.expect("the control API answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON")
        };
        (status, v)
    }
}

/// A control API serving `proxies`, and a client for it.
async fn serve(proxies: &[weir_faultproxy::ProxyHandle]) -> (ControlServer, Api) {
    let reg = Registry::new();
    for p in proxies {
        reg.add(p.clone());
    }
    let server = ControlServer::start(reg, LOCAL.parse().expect("addr"))
        .await
        .expect("control API");
    let api = Api {
        base: format!("http://{}", server.addr()),
        http: reqwest::Client::new(),
    };
    (server, api)
}

/// Whether one byte sent through the proxy comes back within `d`.
async fn echoes(c: &mut TcpStream, d: Duration) -> bool {
    c.write_all(b"x").await.expect("write");
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(d, c.read_exact(&mut b)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn the_control_api_changes_running_proxies() {
    use reqwest::Method;
    let tcp = Proxy::tcp(ProxyConfig::new(
        "redis",
        LOCAL.parse().expect("addr"),
        Some(tcp_echo().await),
    ))
    .await
    .expect("tcp proxy");
    let udp = Proxy::udp(ProxyConfig::new("mesh", LOCAL.parse().expect("addr"), None))
        .await
        .expect("udp proxy");
    let (_server, api) = serve(&[tcp.handle(), udp.handle()]).await;

    let (s, list) = api.call(Method::GET, "/proxies", None).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["mesh", "redis"]);
    assert_eq!(list[0]["protocol"], "udp");
    assert_eq!(list[0]["upstream"], Value::Null);
    assert_eq!(list[1]["listen"], tcp.listen_addr().to_string());

    // A blackhole added over the API silences the proxy.
    let mut c = TcpStream::connect(tcp.listen_addr())
        .await
        .expect("connect");
    assert!(echoes(&mut c, Duration::from_secs(10)).await);
    let (s, doc) = api
        .call(
            Method::POST,
            "/proxies/redis/toxics",
            Some(json!({"name": "hole", "type": "blackhole", "stream": "upstream"})),
        )
        .await;
    assert_eq!(s, 201, "{doc}");
    assert_eq!(doc["stream"], "upstream");
    assert!(!echoes(&mut c, Duration::from_millis(300)).await);

    // The same name again is a conflict.
    let (s, e) = api
        .call(
            Method::POST,
            "/proxies/redis/toxics",
            Some(json!({"name": "hole", "type": "blackhole"})),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (409, Some("name")));

    // Updated to a latency, then removed.
    let (s, doc) = api
        .call(
            Method::POST,
            "/proxies/redis/toxics/hole",
            Some(json!({"type": "latency", "attributes": {"latency_ms": 10, "jitter_ms": 5}})),
        )
        .await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(doc["attributes"]["jitter_ms"], 5);
    let (s, one) = api
        .call(Method::GET, "/proxies/redis/toxics/hole", None)
        .await;
    assert_eq!((s, one["type"].as_str()), (200, Some("latency")));
    let (s, _) = api
        .call(Method::DELETE, "/proxies/redis/toxics/hole", None)
        .await;
    assert_eq!(s, 204);
    let (_, toxics) = api.call(Method::GET, "/proxies/redis/toxics", None).await;
    assert_eq!(toxics, json!([]));
    let mut fresh = TcpStream::connect(tcp.listen_addr())
        .await
        .expect("connect");
    assert!(echoes(&mut fresh, Duration::from_secs(10)).await);

    // Partitions on and off.
    let (s, doc) = api
        .call(
            Method::PUT,
            "/proxies/redis/partitions/cut",
            Some(json!({"sources": ["127.0.0.1"], "direction": "downstream"})),
        )
        .await;
    assert_eq!(s, 200, "{doc}");
    assert!(!echoes(&mut fresh, Duration::from_millis(300)).await);
    let (_, parts) = api
        .call(Method::GET, "/proxies/redis/partitions", None)
        .await;
    assert_eq!(parts["cut"]["direction"], "downstream");
    let (s, _) = api
        .call(Method::DELETE, "/proxies/redis/partitions/cut", None)
        .await;
    assert_eq!(s, 204);
    assert!(echoes(&mut fresh, Duration::from_secs(10)).await);
    let (s, _) = api
        .call(Method::DELETE, "/proxies/redis/partitions/cut", None)
        .await;
    assert_eq!(s, 404);

    // UDP toxics through the same API, then a reset clears everything.
    let (s, doc) = api
        .call(
            Method::POST,
            "/proxies/mesh/toxics",
            Some(json!({"name": "lossy", "type": "loss", "attributes": {"probability": 0.1}})),
        )
        .await;
    assert_eq!(s, 201, "{doc}");
    let (s, _) = api
        .call(Method::PUT, "/proxies/mesh/partitions/all", Some(json!({})))
        .await;
    assert_eq!(s, 200);
    let (s, _) = api.call(Method::POST, "/reset", None).await;
    assert_eq!(s, 204);
    let (_, mesh) = api.call(Method::GET, "/proxies/mesh", None).await;
    assert_eq!(mesh["toxics"], json!([]));
    assert_eq!(mesh["partitions"], json!({}));
    // Stats are part of the document and count traffic.
    let probe = UdpSocket::bind(LOCAL).await.expect("bind");
    probe.send_to(b"x", udp.listen_addr()).await.expect("send");
    let mut counted = false;
    for _ in 0..200 {
        let (_, mesh) = api.call(Method::GET, "/proxies/mesh", None).await;
        if mesh["stats"]["dropped"]["no_upstream"] == 1 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(counted, "the datagram without an upstream is counted");
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    use reqwest::Method;
    let tcp = Proxy::tcp(ProxyConfig::new(
        "t",
        LOCAL.parse().expect("addr"),
        Some(tcp_echo().await),
    ))
    .await
    .expect("proxy");
    let (_server, api) = serve(&[tcp.handle()]).await;
    let cases = [
        (
            json!({"name": "a", "type": "latency", "attributes": {"latency_ms": -1}}),
            "attributes.latency_ms",
        ),
        (
            json!({"name": "a", "type": "latency", "attributes": {"latency_ms": 10, "jitter_ms": 11}}),
            "attributes.jitter_ms",
        ),
        (
            json!({"name": "a", "type": "loss", "attributes": {"probability": 0.5}}),
            "type",
        ),
        (
            json!({"name": "a", "type": "bandwidth", "attributes": {"bytes_per_sec": 0}}),
            "attributes.bytes_per_sec",
        ),
        (
            json!({"name": "a", "type": "blackhole", "stream": "up"}),
            "stream",
        ),
        (json!({"name": "", "type": "blackhole"}), "name"),
        (
            json!({"name": "a", "type": "slicer", "attributes": {"average_size": 0}}),
            "attributes.average_size",
        ),
        (
            json!({"name": "a", "type": "blackhole", "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (s, e) = api
            .call(Method::POST, "/proxies/t/toxics", Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body} -> {e}");
        assert_eq!(e["field"], field, "{body} -> {e}");
        assert!(
            e["error"].as_str().is_some_and(|m| m.starts_with(field)),
            "{e}"
        );
    }
    let resp = api
        .http
        .post(format!("{}/proxies/t/toxics", api.base))
        .body("{not json")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 400);
    let e: Value = resp.json().await.expect("JSON");
    assert_eq!(e["field"], "body");
    let (s, e) = api
        .call(
            Method::PUT,
            "/proxies/t/partitions/p",
            Some(json!({"sources": ["127.0.0.1", "nowhere"]})),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("sources[1]")));
    let (s, _) = api.call(Method::GET, "/proxies/nope", None).await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            Method::POST,
            "/proxies/t/toxics/ghost",
            Some(json!({"type": "blackhole"})),
        )
        .await;
    assert_eq!(s, 404);
    // Nothing bad got in.
    assert!(tcp.handle().toxics().is_empty());
    assert!(tcp.handle().partitions().is_empty());
}
