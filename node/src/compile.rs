//! Loading a config file: parsing (with `line:column` for what the YAML
//! parser finds) and checking it as a whole with the one compile,
//! [`crate::snapshot::compile`], so that every problem of a document is
//! reported at once with its path.
//!
//! `weir validate`, `weir apply -f` and the file reload read files through
//! here; `weir serve` parses its file and lets the node's first compile be
//! the check.

use std::path::Path;

use crate::config::{self, Config, ConfigErrors};

/// Every problem of `cfg`, in document order; `Ok` when there is none.
/// This is the whole compile with its result thrown away.
pub fn validate(cfg: &Config) -> Result<(), ConfigErrors> {
    crate::snapshot::validate(cfg)
}

/// Parses and validates a YAML document. Every problem is reported with its
/// field path, and with `line:column` where the YAML parser knows it.
pub fn load_str(src: &str) -> Result<Config, ConfigErrors> {
    let config = config::parse_str(src)?;
    validate(&config).map_err(|mut e| {
        config::locate_problems(src, &mut e);
        e
    })?;
    Ok(config)
}

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_str(&config::read_file(path)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{BalancerConfig, Config, HashOn, HostHeader, ValueRule};

    #[test]
    fn empty_document_is_default() {
        assert_eq!(load_str("").unwrap(), Config::default());
        // The embedded default must itself be a valid config.
        validate(&Config::default()).unwrap();
    }

    #[test]
    fn unknown_field_names_path_and_location() {
        let err =
            load_str("routes:\n  - id: a\n    paths: [/]\n    upstream: u\n    pathz: [/x]\n")
                .unwrap_err();
        let p = &err.0[0];
        assert_eq!(p.path, "routes[0].pathz");
        assert!(p.reason.contains("unknown field `pathz`"), "{}", p.reason);
        assert_eq!(p.location.map(|l| l.0), Some(5));
    }

    #[test]
    fn reports_every_problem() {
        let src = "upstreams:\n  - id: u\n    targets: [{addr: 'nope'}]\nroutes:\n  - id: r\n    paths: [/]\n    upstream: missing\n  - id: r\n    paths: [/]\n    service: gone\n";
        let err = load_str(src).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("upstreams[0].targets[0].addr"), "{text}");
        assert!(
            text.contains("routes[0].upstream: no upstream with id `missing`"),
            "{text}"
        );
        assert!(
            text.contains("routes[1].id: duplicate route id `r`"),
            "{text}"
        );
        assert!(
            text.contains("routes[1].service: no service with id `gone`"),
            "{text}"
        );
    }

    proptest::proptest! {
        // Whatever bytes a config file holds, loading it returns problems,
        // never a panic.
        #[test]
        fn loading_never_panics(src in "[ -~\n]{0,200}") {
            let _ = load_str(&src);
        }

        // Structured noise: plausible keys with random values.
        #[test]
        fn loading_shaped_documents_never_panics(
            key in proptest::sample::select(vec!["routes", "upstreams", "services", "settings", "version"]),
            inner in proptest::sample::select(vec!["id", "paths", "targets", "addr", "weight", "balancer", "hosts", "version", "listen"]),
            value in "[ -~]{0,30}",
        ) {
            let _ = load_str(&format!("{key}:\n  - {inner}: {value}\n"));
            let _ = load_str(&format!("{key}: {{{inner}: [{value}]}}\n"));
        }
    }

    #[test]
    fn value_conditions_need_exactly_one_rule() {
        let base = "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]\nroutes:\n  - {id: r, paths: [/], upstream: u, headers: [";
        let c = load_str(&format!("{base}{{name: x-a, regex: '^a'}}]}}\n")).unwrap();
        assert_eq!(c.routes[0].headers[0].rule, ValueRule::Regex("^a".into()));
        let e = load_str(&format!("{base}{{name: x-a}}]}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "routes[0].headers[0]: condition on `x-a` needs one of `exact`, `regex`, `present`"
            ),
            "{e}"
        );
        let e = load_str(&format!("{base}{{name: x-a, exact: a, regex: b}}]}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must set only one of"), "{e}");
        let e = load_str(&format!("{base}{{name: x-a, exakt: a}}]}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `exakt`"), "{e}");
    }

    #[test]
    fn host_header_forms() {
        let base = "upstreams: [{id: u, targets: [{addr: '127.0.0.1:1'}]}]\nroutes:\n  - {id: r, paths: [/], upstream: u, host_header: ";
        let c = load_str(&format!("{base}target}}\n")).unwrap();
        assert_eq!(c.routes[0].host_header, Some(HostHeader::Target));
        let c = load_str(&format!("{base}{{rewrite: api.internal}}}}\n")).unwrap();
        assert_eq!(
            c.routes[0].host_header,
            Some(HostHeader::Rewrite("api.internal".into()))
        );
        let e = load_str(&format!("{base}bogus}}\n")).unwrap_err();
        assert!(
            e.to_string().contains("`bogus` is not a host_header mode"),
            "{e}"
        );
    }

    #[test]
    fn durations_and_balancers_parse() {
        let src = "upstreams:\n  - id: u\n    targets: [{addr: '127.0.0.1:1', weight: 3}]\n    balancer: {kind: consistent_hash, hash_on: {source: header, name: x-user}}\n    timeouts: {connect: 250ms}\n";
        let c = load_str(src).unwrap();
        assert_eq!(c.upstreams[0].timeouts.connect, Duration::from_millis(250));
        assert_eq!(
            c.upstreams[0].balancer,
            BalancerConfig::ConsistentHash {
                hash_on: HashOn::Header("x-user".into())
            }
        );
    }
}
