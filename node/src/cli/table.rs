//! How the admin client prints what it fetched: the member, mesh and
//! health tables of `weir cluster status`, the document list of `weir get` and the
//! history of `weir revisions`. Each function returns the text; printing
//! it is `client`'s job.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// `weir cluster status`: the member list, the mesh links and the health
/// matrix (fetched by the admin client, which sends the admin key) printed
/// as tables, or as JSON (the members document with the health view's
/// `targets` under `health` and the mesh document under `mesh`).
///
/// # Errors
/// If the JSON cannot be printed.
pub(super) fn render_status(
    mut members: serde_json::Value,
    health: &serde_json::Value,
    mesh: serde_json::Value,
    json: bool,
) -> anyhow::Result<String> {
    members["health"] = health["targets"].clone();
    if !mesh.is_null() {
        members["mesh"] = mesh;
    }
    if json {
        return Ok(serde_json::to_string_pretty(&members)?);
    }
    Ok(render_table(&members))
}

/// A JSON value as a table cell: `-` for null or empty.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Null | Value::String(_) => "-".to_string(),
        other => other.to_string(),
    }
}

/// The one table layout of the CLI: left-aligned columns, two spaces
/// apart, each as wide as its widest cell, header included, so headers
/// and rows line up.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The member list, gossip counters and health matrix as tables.
fn render_table(doc: &serde_json::Value) -> String {
    let s = cell;
    let members: &[Value] = doc["members"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut rows = vec![
        [
            "ID",
            "STATE",
            "GENERATION",
            "RAFT",
            "REVISION",
            "REGION",
            "ZONE",
            "AGE",
            "PROXY",
            "ADMIN",
            "GOSSIP",
        ]
        .map(String::from),
    ];
    for m in members {
        let mut id = s(&m["id"]);
        if m["is_self"] == serde_json::Value::Bool(true) {
            id.push_str(" (self)");
        }
        let age = m["age_seconds"]
            .as_u64()
            .map(|a| humantime::format_duration(Duration::from_secs(a)).to_string())
            .unwrap_or_else(|| "-".to_string());
        // A restarted node gossips again under a higher generation; the
        // entry of its previous incarnation is marked old.
        let mut generation = s(&m["generation"]);
        let superseded = m["generation"].as_u64().is_some_and(|g| {
            members
                .iter()
                .any(|o| o["id"] == m["id"] && o["generation"].as_u64().is_some_and(|og| og > g))
        });
        if superseded {
            generation.push_str(" (old)");
        }
        rows.push([
            id,
            s(&m["state"]),
            generation,
            s(&m["raft_role"]),
            s(&m["revision"]),
            s(&m["region"]),
            s(&m["zone"]),
            age,
            s(&m["proxy_addr"]),
            s(&m["admin_addr"]),
            s(&m["gossip_addr"]),
        ]);
    }
    let mut out = if doc["membership"] == "single" {
        format!(
            "{} is a single node ({} mode): no gossip, so no other members\n\n",
            s(&doc["node_id"]),
            s(&doc["mode"])
        )
    } else {
        format!(
            "cluster {} (seen from {})\n\n",
            s(&doc["cluster"]),
            s(&doc["node_id"])
        )
    };
    out.push_str(&columns(&rows));
    let g = &doc["gossip"];
    if !g.is_null() {
        out.push_str(&format!(
            "\ngossip: {} datagrams sent, {} received, {} rejected (failed to open), {} malformed\n",
            s(&g["sent_datagrams"]),
            s(&g["received_datagrams"]),
            s(&g["rejected_datagrams"]),
            s(&g["malformed_datagrams"]),
        ));
    }
    out.push_str(&render_mesh(&doc["mesh"]));
    let targets = doc["health"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !targets.is_empty() {
        let list = |v: &serde_json::Value| {
            let items: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x.as_str().unwrap_or("?").to_string())
                .collect();
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(",")
            }
        };
        let mut rows = vec![
            [
                "UPSTREAM", "TARGET", "REGION", "CLUSTER", "PROBERS", "DOWN FOR",
            ]
            .map(String::from),
        ];
        for t in targets {
            rows.push([
                s(&t["upstream"]),
                s(&t["target"]),
                s(&t["region"]),
                if t["cluster_down"] == serde_json::Value::Bool(true) {
                    "down".to_string()
                } else {
                    "up".to_string()
                },
                list(&t["probers"]),
                list(&t["down_reports"]),
            ]);
        }
        out.push_str("\nhealth checks (DOWN FOR: members reporting the target down)\n\n");
        out.push_str(&columns(&rows));
    }
    out
}

/// The mesh links of `weir cluster status`; empty when the node reported
/// no mesh document.
fn render_mesh(mesh: &Value) -> String {
    let s = cell;
    match mesh["enabled"] {
        Value::Bool(true) => {}
        Value::Bool(false) => return format!("\nmesh: off ({})\n", s(&mesh["reason"])),
        _ => return String::new(),
    }
    let mut out = format!(
        "\nmesh on {} (listening on {})\n\n",
        s(&mesh["advertise"]),
        s(&mesh["listen"])
    );
    let mut rows = vec![
        [
            "PEER",
            "STATE",
            "RTT",
            "BYTES IN",
            "BYTES OUT",
            "FRAMES IN",
            "FRAMES OUT",
            "DROPS",
            "RECONNECTS",
        ]
        .map(String::from),
    ];
    for p in mesh["peers"].as_array().into_iter().flatten() {
        rows.push([
            s(&p["node_id"]),
            s(&p["state"]),
            p["rtt_ms"]
                .as_f64()
                .map(|ms| format!("{ms:.2}ms"))
                .unwrap_or_else(|| "-".to_string()),
            s(&p["bytes_in"]),
            s(&p["bytes_out"]),
            s(&p["frames_in"]),
            s(&p["frames_out"]),
            s(&p["drops"]),
            s(&p["reconnects"]),
        ]);
    }
    if rows.len() == 1 {
        out.push_str("no peers yet\n");
    } else {
        out.push_str(&columns(&rows));
    }
    let refused = |m: &Value| -> u64 {
        m.as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let _ = writeln!(
        out,
        "refused: {} connections, {} frames",
        refused(&mesh["refused_handshakes"]),
        refused(&mesh["refused_frames"])
    );
    out
}

/// `weir get -o table`: id, revision and creation revision of each
/// document, one per line under a header.
pub(super) fn documents(items: &[Value]) -> String {
    let mut rows = vec![["ID", "REVISION", "CREATED"].map(String::from)];
    for d in items {
        rows.push([
            d["id"].as_str().unwrap_or("").to_string(),
            d["revision"].to_string(),
            d["created"].to_string(),
        ]);
    }
    columns(&rows)
}

/// `weir revisions`: revision, time, author and changes of each history
/// record, one per line under a header.
pub(super) fn revisions(records: &[Value]) -> String {
    let mut rows = vec![["REVISION", "WHEN", "AUTHOR", "CHANGES"].map(String::from)];
    for rec in records {
        let when = rec["at_ms"]
            .as_u64()
            .map(|ms| {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            })
            .unwrap_or_default();
        let changes: Vec<String> = rec["changes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                format!(
                    "{} {}/{}",
                    c["action"].as_str().unwrap_or(""),
                    c["kind"].as_str().unwrap_or(""),
                    c["id"].as_str().unwrap_or("")
                )
            })
            .collect();
        rows.push([
            rec["revision"].to_string(),
            when,
            rec["author"].as_str().unwrap_or("").to_string(),
            changes.join(", "),
        ]);
    }
    columns(&rows)
}

/// The members document of a node without gossip, built from its
/// `/v1/status`: itself as the only member, with its role in its config
/// store and the revision it serves (store mode).
pub(super) fn single_node(status: &Value) -> Value {
    let st = &status["cluster"];
    let role = if st.is_null() {
        Value::Null
    } else if st["leader"] == st["raft_id"] {
        Value::from("leader")
    } else {
        st["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["id"] == st["raft_id"])
            .map_or(Value::Null, |m| m["role"].clone())
    };
    serde_json::json!({
        "node_id": status["node_id"],
        "mode": status["mode"],
        "membership": status["membership"],
        "members": [{
            "id": status["node_id"],
            "is_self": true,
            "state": "alive",
            "raft_id": st["raft_id"],
            "raft_role": role,
            "revision": status["config"]["revision"],
        }],
    })
}

/// `weir cluster store`: the node's view of the replicated config store
/// (`/v1/status`): a summary line, then one row per Raft member with its
/// node id (when known), Raft id, role and address.
pub(super) fn store(status: &Value) -> String {
    let st = &status["cluster"];
    let s = cell;
    if st.is_null() {
        return format!(
            "{} runs in {} mode: its config is its file, there is no config store\n",
            s(&status["node_id"]),
            s(&status["mode"])
        );
    }
    let mut out = format!(
        "config store seen from {} (raft_id={}): {}, term {}, revision {}, applied index {}\n",
        s(&status["node_id"]),
        s(&st["raft_id"]),
        s(&st["role"]),
        s(&st["term"]),
        s(&st["revision"]),
        s(&st["applied_index"]),
    );
    let contact = match st["config_age_ms"].as_u64() {
        Some(ms) => format!("last contact with the leader {ms}ms ago"),
        None => "no contact with a leader yet".to_string(),
    };
    let fresh = if st["config_stale"] == Value::Bool(true) {
        "stale"
    } else {
        "fresh"
    };
    let _ = writeln!(out, "config: {fresh} ({contact})");
    if let Some(b) = st["bootstrap"].as_str() {
        let _ = writeln!(out, "bootstrap: {b}");
    }
    out.push('\n');
    let mut rows = vec![["NODE", "RAFT ID", "ROLE", "ADDRESS"].map(String::from)];
    for m in st["members"].as_array().into_iter().flatten() {
        let role = if m["id"] == st["leader"] {
            "leader".to_string()
        } else {
            s(&m["role"])
        };
        let mut node = s(&m["node_id"]);
        if m["id"] == st["raft_id"] {
            node.push_str(" (self)");
        }
        rows.push([node, s(&m["id"]), role, s(&m["addr"])]);
    }
    if rows.len() == 1 {
        out.push_str("no members yet\n");
    } else {
        out.push_str(&columns(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_members() {
        let doc = serde_json::json!({
            "cluster": "c", "node_id": "a",
            "members": [
                {"id": "a", "is_self": true, "state": "alive", "region": "eu", "zone": "",
                 "age_seconds": 61, "proxy_addr": "127.0.0.1:1", "admin_addr": null, "gossip_addr": "127.0.0.1:2"},
                {"id": "b", "is_self": false, "state": "dead", "region": "us", "zone": "z",
                 "age_seconds": null, "proxy_addr": null, "admin_addr": null, "gossip_addr": "127.0.0.1:3"}
            ],
            "gossip": {"sent_datagrams": 5, "received_datagrams": 4, "rejected_datagrams": 1, "malformed_datagrams": 0},
            "health": [
                {"upstream": "u", "target": "10.0.0.1:80", "region": "eu", "cluster_down": true,
                 "probers": ["a", "b"], "down_reports": ["a", "b"]},
                {"upstream": "u", "target": "10.0.0.2:80", "region": "", "cluster_down": false,
                 "probers": ["b", "a"], "down_reports": []}
            ]
        });
        let t = render_table(&doc);
        assert!(t.contains("a (self)  alive"), "{t}");
        assert!(t.contains("1m 1s"), "{t}");
        assert!(t.contains("b         dead "), "{t}");
        assert!(t.contains("1 rejected"), "{t}");
        assert!(
            t.contains("u         10.0.0.1:80  eu      down     a,b      a,b"),
            "{t}"
        );
        assert!(
            t.contains("u         10.0.0.2:80  -       up       b,a      -"),
            "{t}"
        );
    }

    #[test]
    fn documents_and_revisions_line_up_under_their_headers() {
        let docs = [
            serde_json::json!({"id": "a", "revision": 12, "created": 3}),
            serde_json::json!({"id": "a-much-longer-id", "revision": 7, "created": 7}),
        ];
        assert_eq!(
            documents(&docs),
            "ID                REVISION  CREATED\n\
             a                 12        3\n\
             a-much-longer-id  7         7\n"
        );
        let recs = [serde_json::json!({
            "revision": 10, "at_ms": 0, "author": "ops",
            "changes": [{"action": "created", "kind": "routes", "id": "a"},
                        {"action": "deleted", "kind": "routes", "id": "b"}]
        })];
        assert_eq!(
            revisions(&recs),
            "REVISION  WHEN                  AUTHOR  CHANGES\n\
             10        1970-01-01T00:00:00Z  ops     created routes/a, deleted routes/b\n"
        );
    }

    #[test]
    fn status_marks_an_old_incarnation_and_shows_raft_roles() {
        let doc = serde_json::json!({
            "cluster": "c", "node_id": "a",
            "members": [
                {"id": "a", "is_self": true, "generation": 5, "state": "alive", "raft_role": "leader", "revision": 4},
                {"id": "b", "is_self": false, "generation": 2, "state": "dead", "raft_role": null, "revision": 3},
                {"id": "b", "is_self": false, "generation": 9, "state": "alive", "raft_role": "learner", "revision": 4}
            ],
            "gossip": {"sent_datagrams": 1, "received_datagrams": 1, "rejected_datagrams": 0, "malformed_datagrams": 0}
        });
        let t = render_table(&doc);
        let members: Vec<&str> = t.lines().skip(2).take(4).collect();
        assert_eq!(
            members,
            [
                "ID        STATE  GENERATION  RAFT     REVISION  REGION  ZONE  AGE  PROXY  ADMIN  GOSSIP",
                "a (self)  alive  5           leader   4         -       -     -    -      -      -",
                "b         dead   2 (old)     -        3         -       -     -    -      -      -",
                "b         alive  9           learner  4         -       -     -    -      -      -",
            ]
        );
    }

    #[test]
    fn a_single_node_is_described_as_one() {
        let status = serde_json::json!({
            "node_id": "vm", "mode": "store", "membership": "single",
            "config": {"revision": 2},
            "cluster": {"raft_id": 77, "leader": 77, "role": "leader", "term": 1,
                        "revision": 2, "applied_index": 3, "config_stale": false, "config_age_ms": 0,
                        "members": [{"id": 77, "addr": "127.0.0.1:9180", "role": "voter", "node_id": "vm"}]}
        });
        let t = render_table(&single_node(&status));
        assert_eq!(
            t,
            "vm is a single node (store mode): no gossip, so no other members\n\n\
             ID         STATE  GENERATION  RAFT    REVISION  REGION  ZONE  AGE  PROXY  ADMIN  GOSSIP\n\
             vm (self)  alive  -           leader  2         -       -     -    -      -      -\n"
        );
        assert_eq!(
            store(&status),
            "config store seen from vm (raft_id=77): leader, term 1, revision 2, applied index 3\n\
             config: fresh (last contact with the leader 0ms ago)\n\n\
             NODE       RAFT ID  ROLE    ADDRESS\n\
             vm (self)  77       leader  127.0.0.1:9180\n"
        );
    }
}
