//! The QUIC mesh with real `weir` processes on loopback: three nodes with
//! the cluster secret link to each other (`GET /v1/cluster/mesh`,
//! `/metrics`, `weir cluster status`), a node with another secret gets no
//! link, a node without a secret keeps the mesh off and says so, and a raw
//! QUIC client holding valid credentials has its malformed frames (and a
//! malformed credit message in a valid frame) refused and counted while
//! the node keeps serving; a mesh address to advertise that peers could
//! not dial is refused by name, in the file and as a flag.

mod common;

use std::time::Duration;

use common::weir_bin;
use serde_json::Value;
use weir_chaos::{Cluster, ClusterSpec, NodeSpec};
use weir_testsupport::Gateway;

/// Generous for starting processes on a busy two-core machine.
const CONVERGE: Duration = Duration::from_secs(30);

async fn get(url: &str) -> (u16, String) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    match c.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn mesh_doc(g: &Gateway) -> Value {
    let (status, body) = get(&g.admin_url("/v1/cluster/mesh")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn peer<'a>(doc: &'a Value, id: &str) -> Option<&'a Value> {
    doc["peers"].as_array()?.iter().find(|p| p["node_id"] == id)
}

fn connected(doc: &Value, id: &str) -> bool {
    peer(doc, id).is_some_and(|p| p["state"] == "connected")
}

/// Polls until every listed node reports a connected link to each other
/// listed node; returns the last documents.
async fn wait_linked(c: &Cluster, nodes: &[usize]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let mut docs = Vec::new();
        for &i in nodes {
            docs.push(mesh_doc(c.node(i).gateway()).await);
        }
        let all = nodes.iter().zip(&docs).all(|(&i, d)| {
            nodes
                .iter()
                .filter(|&&j| j != i)
                .all(|&j| connected(d, &c.node(j).spec.id))
        });
        if all {
            return docs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mesh links did not form: {docs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_link_and_report_their_links() {
    let c = Cluster::start(weir_bin(), ClusterSpec::new(3))
        .await
        .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    let docs = wait_linked(&c, &[0, 1, 2]).await;
    for (i, doc) in docs.iter().enumerate() {
        let n = c.node(i);
        assert_eq!(doc["enabled"], true, "{doc}");
        assert_eq!(doc["node_id"], n.spec.id.as_str());
        assert_eq!(doc["peers"].as_array().map(Vec::len), Some(2), "{doc}");
        assert_eq!(
            doc["listen"].as_str(),
            n.gateway()
                .ready()
                .extra
                .get("mesh")
                .and_then(Value::as_str),
            "the ready file names the mesh socket"
        );
        for p in doc["peers"].as_array().into_iter().flatten() {
            // The dialler's hello at least went each way.
            assert!(p["rtt_ms"].as_f64().is_some(), "{p}");
            assert!(
                p["frames_in"].as_u64() >= Some(1) || p["frames_out"].as_u64() >= Some(1),
                "{p}"
            );
            assert_eq!(p["drops"], 0, "{p}");
            assert_eq!(p["refused_frames"], 0, "{p}");
        }
        // `unknown_node` may count a dial that arrived before gossip had
        // told this node about the dialler; nothing else is refused.
        assert_eq!(doc["refused_handshakes"]["identity_mismatch"], 0, "{doc}");
        assert_eq!(doc["refused_handshakes"]["bad_certificate"], 0, "{doc}");
    }

    // Gossip publishes each node's mesh address and the one it listens on.
    let (_, members) = get(&c.node(0).gateway().admin_url("/v1/cluster/members")).await;
    let members: Value = serde_json::from_str(&members).expect("JSON");
    for (i, doc) in docs.iter().enumerate() {
        let id = c.node(i).spec.id.as_str();
        let m = members["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["id"] == id))
            .expect("member listed");
        assert_eq!(m["mesh_addr"], doc["advertise"], "{m}");
        assert_eq!(m["mesh_addr"], doc["listen"], "loopback: as bound");
    }

    // Prometheus series for the same links.
    let (status, metrics) = get(&c.node(0).gateway().admin_url("/metrics")).await;
    assert_eq!(status, 200);
    for id in ["node-1", "node-2"] {
        let line = format!("weir_mesh_link_up{{peer=\"{id}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
        assert!(
            metrics.contains(&format!("weir_mesh_rtt_seconds{{peer=\"{id}\"}}")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "weir_mesh_frames_total{{peer=\"{id}\",direction=\"in\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(metrics.contains("weir_mesh_enabled 1"), "{metrics}");
    assert!(
        metrics.contains("weir_mesh_peers{state=\"connected\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_mesh_connections_refused_total{reason=\"identity_mismatch\"} 0"),
        "{metrics}"
    );

    // `weir cluster status` shows the links.
    let admin = c.node(0).gateway().admin_addr().to_string();
    let out = std::process::Command::new(weir_bin())
        .args(["cluster", "status", "--admin", &admin])
        .output()
        .expect("run weir cluster status");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("mesh on"), "{table}");
    assert!(table.contains("PEER") && table.contains("RTT"), "{table}");
    for line in table.lines().filter(|l| l.starts_with("node-")) {
        if line.contains("connected") {
            assert!(
                line.starts_with("node-1") || line.starts_with("node-2"),
                "{table}"
            );
        }
    }
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("node-") && l.contains(" connected "))
            .count(),
        2,
        "{table}"
    );
    let out = std::process::Command::new(weir_bin())
        .args(["cluster", "status", "--json", "--admin", &admin])
        .output()
        .expect("run weir cluster status --json");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["mesh"]["peers"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_has_no_mesh_link() {
    let mut c = Cluster::start(weir_bin(), ClusterSpec::new(2))
        .await
        .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    wait_linked(&c, &[0, 1]).await;
    let x = c
        .add(NodeSpec::new("intruder", "region-x").secret("not-the-cluster-secret"))
        .await
        .expect("intruder starts");
    // The intruder gossips at the others (and is refused there) for a
    // while; it never becomes a member, so it never becomes a mesh peer.
    c.wait_until("intruder rejected", CONVERGE, |docs| {
        docs[0]
            .as_ref()
            .is_some_and(|v| v.gossip.rejected_datagrams >= 3)
    })
    .await
    .expect("rejections counted");
    let doc = mesh_doc(c.node(x).gateway()).await;
    assert_eq!(doc["enabled"], true, "{doc}");
    assert!(
        doc["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["state"] != "connected"),
        "{doc}"
    );
    for i in 0..2 {
        let doc = mesh_doc(c.node(i).gateway()).await;
        assert!(peer(&doc, "intruder").is_none(), "{doc}");
        assert_eq!(doc["peers"].as_array().map(Vec::len), Some(1), "{doc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_mesh_stays_off_and_says_so() {
    let g = Gateway::builder(weir_bin())
        .config(Gateway::config(""))
        .args([
            "--gossip-listen",
            "127.0.0.1:0",
            "--mesh-listen",
            "127.0.0.1:0",
        ])
        .start()
        .await
        .expect("weir starts");
    let doc = mesh_doc(&g).await;
    assert_eq!(doc["enabled"], false, "{doc}");
    assert!(
        doc["reason"].as_str().is_some_and(|r| r.contains("secret")),
        "{doc}"
    );
    assert!(g.ready().extra.get("mesh").is_none());
    assert!(g.log().contains("mesh off"), "{}", g.log());
    let (_, metrics) = get(&g.admin_url("/metrics")).await;
    assert!(metrics.contains("weir_mesh_enabled 0"), "{metrics}");

    // A node without clustering has no mesh endpoint at all.
    let alone = Gateway::start(weir_bin(), &Gateway::config(""))
        .await
        .expect("weir starts");
    let (status, body) = get(&alone.admin_url("/v1/cluster/mesh")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("cluster_disabled"), "{body}");
}

/// Sends `bytes` on a new stream of `conn`; the answer, or `None` when the
/// node reset the stream (refused the frame) or the connection failed.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Option<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    tokio::time::timeout(
        Duration::from_secs(5),
        recv.read_to_end(weir_mesh::MAX_FRAME),
    )
    .await
    .ok()?
    .ok()
}

fn raw_frame(sender: &str, seq: u64) -> Vec<u8> {
    weir_mesh::Frame {
        flags: 0,
        kind: weir_mesh::KIND_HELLO,
        seq,
        sender: sender.into(),
        body: bytes::Bytes::new(),
    }
    .encode()
    .expect("encodes")
    .to_vec()
}

/// A raw QUIC client that holds valid credentials: it has the cluster
/// secret, so it joins gossip and publishes its own key's pin; then it
/// writes malformed frames at a real node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_from_a_raw_client_with_valid_credentials_are_refused_and_counted() {
    use weir_cluster::membership::{
        GossipTiming, KEY_MESH_IDENTITY, Membership, MembershipConfig, NodeInfo,
    };

    let c = Cluster::start(weir_bin(), ClusterSpec::new(2))
        .await
        .expect("cluster starts");
    c.wait_converged(CONVERGE).await.expect("converges");
    wait_linked(&c, &[0, 1]).await;
    let node = c.node(0).gateway();
    let node_fp: weir_mesh::Fingerprint = mesh_doc(node).await["fingerprint"]
        .as_str()
        .and_then(|f| f.parse().ok())
        .expect("the node's fingerprint");
    let node_mesh: std::net::SocketAddr = mesh_doc(node).await["listen"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the node's mesh address");

    let identity = weir_mesh::Identity::generate("raw").expect("identity");
    let endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("raw endpoint");
    let membership = Membership::start(MembershipConfig {
        cluster_name: "chaos".into(),
        node_id: "raw".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise_ip: None,
        seeds: vec![c.node(0).gossip_addr().to_string()],
        secret: Some(b"chaos-harness-test-secret".to_vec()),
        info: NodeInfo {
            mesh_addr: Some(endpoint.local_addr().expect("addr")),
            ..NodeInfo::default()
        },
        timing: GossipTiming::default(),
        transport: weir_cluster::gossip::GossipTransport::default(),
    })
    .await
    .expect("raw joins gossip");
    membership
        .set_key(KEY_MESH_IDENTITY, &identity.fingerprint().to_string())
        .await;

    // Connect once the node pins `raw`: until then its TLS verifier
    // refuses, which a client only learns when its first request fails.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let mut seq = 0;
    let conn = loop {
        let crypto =
            weir_mesh::tls::client_config(&identity, "node-0", node_fp, Default::default())
                .expect("tls");
        let cfg = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
        if let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(5),
            endpoint
                .connect_with(cfg, node_mesh, weir_mesh::tls::SERVER_NAME)
                .expect("connect"),
        )
        .await
        {
            seq += 1;
            if raw_exchange(&conn, &raw_frame("raw", seq)).await.is_some() {
                break conn;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never accepted the raw client"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Malformed, unknown version, forged sender: each refused (stream
    // reset), the connection stays up.
    assert_eq!(raw_exchange(&conn, b"\x01\x00 not a frame").await, None);
    let mut v7 = raw_frame("raw", seq + 1);
    v7[0] = 7;
    assert_eq!(raw_exchange(&conn, &v7).await, None);
    assert_eq!(
        raw_exchange(&conn, &raw_frame("node-1", seq + 2)).await,
        None
    );
    conn.send_datagram(bytes::Bytes::from_static(b"\x01junk"))
        .expect("datagram");

    let deadline = tokio::time::Instant::now() + CONVERGE;
    let doc = loop {
        let doc = mesh_doc(node).await;
        let r = &doc["refused_frames"];
        if r["malformed"] == 2 && r["unknown_version"] == 1 && r["forged_sender"] == 1 {
            break doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(peer(&doc, "raw").expect("raw listed")["refused_frames"], 4);
    let (_, metrics) = get(&node.admin_url("/metrics")).await;
    for line in [
        "weir_mesh_frames_refused_total{reason=\"malformed\"} 2",
        "weir_mesh_frames_refused_total{reason=\"unknown_version\"} 1",
        "weir_mesh_frames_refused_total{reason=\"forged_sender\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        node.log().contains("mesh: refused a frame"),
        "{}",
        node.log()
    );

    // A well-formed frame whose credit message (kind 14) is not: answered
    // with an error, counted by the limits, the connection stays up.
    let bad_credit = weir_mesh::Frame {
        flags: 0,
        kind: weir_node::cluster_limits::KIND_LIMIT_CREDIT,
        seq: seq + 3,
        sender: "raw".into(),
        body: bytes::Bytes::from_static(b"{\"v\": 1, \"scope\": \"cluster\", \"op\": 7"),
    }
    .encode()
    .expect("encodes");
    let _ = raw_exchange(&conn, &bad_credit).await;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let (_, metrics) = get(&node.admin_url("/metrics")).await;
        if metrics.contains("weir_limit_scope_messages_refused_total{reason=\"malformed\"} 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the malformed credit message is not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seq = seq + 1;

    // The node keeps serving: the raw client's next valid frame, its link
    // to the other node, and its admin API.
    assert!(
        raw_exchange(&conn, &raw_frame("raw", seq + 3))
            .await
            .is_some()
    );
    assert!(connected(&mesh_doc(node).await, "node-1"));
    let (status, _) = get(&node.admin_url("/v1/health")).await;
    assert_eq!(status, 200);
    membership.leave().await;
}

#[test]
fn a_mesh_advertise_peers_cannot_dial_is_refused_by_name() {
    weir_testsupport::assert_rejected(
        weir_bin(),
        "cluster: {mesh_advertise: \"0.0.0.0:7947\"}\n",
        &["cluster.mesh_advertise", "a specific IP"],
    );
    let out = std::process::Command::new(weir_bin())
        .args(["serve", "--mesh-advertise", "127.0.0.1:0"])
        .output()
        .expect("run weir");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cluster.mesh_advertise"), "{err}");
}
