//! The proxy file of the `weir-faultproxy` binary: which proxies to run,
//! where, in front of what, with which toxics from the start. JSON, the
//! toxics in the control API's shape:
//!
//! ```json
//! {"control": "0.0.0.0:8474",
//!  "proxies": [{"name": "to-us-0", "protocol": "tcp",
//!               "listen": "0.0.0.0:9183", "upstream": "weir-us-0:9183",
//!               "toxics": [{"name": "wan", "type": "latency", "stream": "upstream",
//!                           "attributes": {"latency_ms": 40, "jitter_ms": 5}}]}]}
//! ```
//!
//! The upstream is `host:port`: a name is resolved when the proxy starts
//! and again while it runs (containers come and go). This module only
//! reads and checks the file; running it is `main.rs`.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::{FieldError, Protocol, Toxic};

/// A parsed, checked proxy file.
#[derive(Debug, Clone)]
pub struct ProxyFile {
    /// Where the control API listens, if anywhere.
    pub control: Option<SocketAddr>,
    /// The proxies.
    pub proxies: Vec<ProxySpec>,
}

/// One proxy of the file.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Its name (unique in the file).
    pub name: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Where it listens.
    pub listen: SocketAddr,
    /// `host:port` it forwards to.
    pub upstream: String,
    /// Seed of its random choices.
    pub seed: u64,
    /// Toxics it starts with.
    pub toxics: Vec<Toxic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    control: Option<SocketAddr>,
    proxies: Vec<RawProxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    name: String,
    protocol: Protocol,
    listen: SocketAddr,
    upstream: String,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    toxics: Vec<serde_json::Value>,
}

/// Reads a proxy file's text.
///
/// # Errors
/// The first problem, named by its path in the file (`proxies[1].listen`).
pub fn parse(text: &str) -> Result<ProxyFile, FieldError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        FieldError::new(
            if path == "." { "file".into() } else { path },
            e.inner().to_string(),
        )
    })?;
    if raw.proxies.is_empty() {
        return Err(FieldError::new("proxies", "lists no proxy"));
    }
    let mut proxies: Vec<ProxySpec> = Vec::with_capacity(raw.proxies.len());
    for (i, p) in raw.proxies.into_iter().enumerate() {
        let at = |f: &str| format!("proxies[{i}].{f}");
        if proxies.iter().any(|q| q.name == p.name) {
            return Err(FieldError::new(
                at("name"),
                format!("`{}` is taken", p.name),
            ));
        }
        if p.upstream
            .rsplit_once(':')
            .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(FieldError::new(
                at("upstream"),
                format!("`{}` is not `host:port`", p.upstream),
            ));
        }
        let mut toxics = Vec::with_capacity(p.toxics.len());
        for (j, t) in p.toxics.iter().enumerate() {
            let toxic = Toxic::from_json(t, p.protocol, None).map_err(|e| {
                FieldError::new(format!("proxies[{i}].toxics[{j}].{}", e.field), e.reason)
            })?;
            toxics.push(toxic);
        }
        proxies.push(ProxySpec {
            name: p.name,
            protocol: p.protocol,
            listen: p.listen,
            upstream: p.upstream,
            seed: p.seed,
            toxics,
        });
    }
    Ok(ProxyFile {
        control: raw.control,
        proxies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proxies_and_names_the_wrong_field() {
        let ok = parse(
            r#"{"control": "127.0.0.1:8474", "proxies": [{"name": "a", "protocol": "udp",
                "listen": "127.0.0.1:0", "upstream": "node:7946",
                "toxics": [{"name": "wan", "type": "latency", "attributes": {"latency_ms": 40}}]}]}"#,
        )
        .unwrap();
        assert_eq!(ok.proxies[0].upstream, "node:7946");
        assert_eq!(ok.proxies[0].toxics.len(), 1);

        let e = parse(
            r#"{"proxies": [{"name": "a", "protocol": "tcp", "listen": "127.0.0.1:0",
                "upstream": "node"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "proxies[0].upstream");
        let e = parse(
            r#"{"proxies": [{"name": "a", "protocol": "tcp", "listen": "127.0.0.1:0",
                "upstream": "n:1", "toxics": [{"name": "l", "type": "loss",
                "attributes": {"probability": 0.5}}]}]}"#,
        )
        .unwrap_err();
        assert!(e.field.starts_with("proxies[0].toxics[0]"), "{e:?}");
        let e =
            parse(r#"{"proxies": [{"name": "a", "protocol": "tcp", "listen": "x"}]}"#).unwrap_err();
        assert_eq!(e.field, "proxies[0].listen");
    }
}
