//! The `redis` settings section: where Redis is, how to log in, how long to
//! wait. A plain serde type so the node config can embed it; [`RedisSettings::validate`]
//! names the field and the reason of the first problem.
//!
//! Secrets never sit in the config: the password comes from an environment
//! variable or a file, and a URL that carries credentials is refused.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest key prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 64;
/// Longest timeout accepted: anything longer hangs requests in
/// `sync: per_request` for longer than any client waits.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Redis is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` or `rediss://…` (TLS). One URL for a
    /// single node; with `cluster: true`, one or more seed nodes.
    pub urls: Vec<String>,
    /// Redis Cluster instead of a single node (keys of one limit key share
    /// a hash slot, so the scripts work there too).
    pub cluster: bool,
    /// ACL user name (not a secret); none means the default user.
    pub username: Option<String>,
    /// Name of the environment variable that holds the password.
    pub password_env: Option<String>,
    /// File whose contents (trailing newline removed) are the password.
    pub password_file: Option<PathBuf>,
    /// How long opening a connection (TCP, TLS, AUTH) may take.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// How long a call may take in all, reconnecting included; a call
    /// that takes longer fails with a timeout and the limit falls back.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How many more times one reconnect round tries (50 ms to 500 ms
    /// apart, with jitter) before calls fail at once; the next call starts
    /// a new round. Calls wait for a round in progress, within their
    /// response timeout.
    pub reconnect_retries: u32,
    /// Prefix of every key weir writes, so several clusters can share
    /// one Redis.
    pub key_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            urls: vec!["redis://127.0.0.1:6379".to_owned()],
            cluster: false,
            username: None,
            password_env: None,
            password_file: None,
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(250),
            reconnect_retries: 1,
            key_prefix: "weir:".to_owned(),
        }
    }
}

/// A problem with the `redis` settings: the field (`redis.<field>`) and
/// why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis.{field}: {reason}")]
pub struct SettingsError {
    /// The field, relative to the `redis` section (e.g. `urls[1]`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SettingsError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SettingsError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl RedisSettings {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.urls.is_empty() {
            return Err(SettingsError::new("urls", "at least one URL is needed"));
        }
        if !self.cluster && self.urls.len() > 1 {
            return Err(SettingsError::new(
                "urls",
                "several URLs need `cluster: true` (a single node takes one URL)",
            ));
        }
        let mut tls = None;
        for (i, url) in self.urls.iter().enumerate() {
            let field = format!("urls[{i}]");
            let this_tls = check_url(url).map_err(|reason| SettingsError::new(&field, reason))?;
            if *tls.get_or_insert(this_tls) != this_tls {
                return Err(SettingsError::new(
                    field,
                    "mixes `redis://` and `rediss://`: all nodes use TLS or none",
                ));
            }
        }
        if let Some(user) = &self.username
            && (user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(SettingsError::new(
                "username",
                "must be non-empty, without spaces or control characters",
            ));
        }
        match (&self.password_env, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(SettingsError::new(
                    "password_file",
                    "set either password_env or password_file, not both",
                ));
            }
            (Some(var), None) if var.is_empty() || var.contains('=') || var.contains('\0') => {
                return Err(SettingsError::new(
                    "password_env",
                    "must be an environment variable name",
                ));
            }
            (None, Some(path)) if path.as_os_str().is_empty() => {
                return Err(SettingsError::new("password_file", "must be a file path"));
            }
            _ => {}
        }
        for (field, value) in [
            ("connection_timeout", self.connection_timeout),
            ("response_timeout", self.response_timeout),
        ] {
            if value.is_zero() {
                return Err(SettingsError::new(
                    field,
                    "must be more than 0 (an unset timeout hangs when Redis stops answering)",
                ));
            }
            if value > MAX_TIMEOUT {
                return Err(SettingsError::new(
                    field,
                    format!("must be at most {}s", MAX_TIMEOUT.as_secs()),
                ));
            }
        }
        if self.reconnect_retries > 10 {
            return Err(SettingsError::new(
                "reconnect_retries",
                "must be at most 10 (each call is bounded by response_timeout anyway)",
            ));
        }
        if self.key_prefix.len() > MAX_PREFIX_BYTES {
            return Err(SettingsError::new(
                "key_prefix",
                format!("must be at most {MAX_PREFIX_BYTES} bytes"),
            ));
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return Err(SettingsError::new(
                "key_prefix",
                "must not contain braces (they mark the cluster hash slot), spaces or control characters",
            ));
        }
        Ok(())
    }

    /// The password, read from its environment variable or file now;
    /// `None` when none is configured.
    pub fn password(&self) -> Result<Option<String>, SettingsError> {
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                Ok(_) => Err(SettingsError::new(
                    "password_env",
                    format!("the environment variable {var} is empty"),
                )),
                Err(e) => Err(SettingsError::new(
                    "password_env",
                    format!("the environment variable {var} cannot be read: {e}"),
                )),
            };
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                SettingsError::new(
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let pw = text.trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                return Err(SettingsError::new(
                    "password_file",
                    format!("{} is empty", path.display()),
                ));
            }
            return Ok(Some(pw.to_owned()));
        }
        Ok(None)
    }
}

/// Whether `url` is a usable Redis URL without credentials; `Ok(true)`
/// for TLS.
fn check_url(url: &str) -> Result<bool, String> {
    let tls = if url.starts_with("rediss://") {
        true
    } else if url.starts_with("redis://") {
        false
    } else {
        return Err("must start with redis:// or rediss:// (TLS)".to_owned());
    };
    let parsed = redis::parse_redis_url(url).ok_or_else(|| "is not a valid URL".to_owned())?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry credentials: use username and password_env or password_file".to_owned(),
        );
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not carry a query or fragment".to_owned());
    }
    let path = parsed.path().trim_start_matches('/');
    if !path.is_empty() && path.parse::<u16>().is_err() {
        return Err(format!("database `{path}` is not a number"));
    }
    // The crate's own check (port, database range) on the same string.
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut RedisSettings)) -> Result<(), SettingsError> {
        let mut s = RedisSettings::default();
        f(&mut s);
        s.validate()
    }

    fn field_of(r: Result<(), SettingsError>) -> String {
        r.expect_err("must be refused").field
    }

    #[test]
    fn defaults_are_valid() {
        RedisSettings::default().validate().unwrap();
        with(|s| s.urls = vec!["rediss://cache.example:6380/2".into()]).unwrap();
        with(|s| {
            s.cluster = true;
            s.urls = vec!["redis://a:7000".into(), "redis://b:7000".into()];
        })
        .unwrap();
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(field_of(with(|s| s.urls.clear())), "urls");
        assert_eq!(
            field_of(with(|s| s.urls = vec!["http://x:1".into()])),
            "urls[0]"
        );
        assert_eq!(
            field_of(with(|s| s.urls = vec!["redis://:secret@x:1".into()])),
            "urls[0]"
        );
        assert_eq!(
            field_of(with(|s| s.urls = vec!["redis://x:1/abc".into()])),
            "urls[0]"
        );
        assert_eq!(
            field_of(with(|s| s.urls.push("redis://y:1".into()))),
            "urls"
        );
        assert_eq!(
            field_of(with(|s| {
                s.cluster = true;
                s.urls = vec!["redis://a:1".into(), "rediss://b:1".into()];
            })),
            "urls[1]"
        );
        assert_eq!(
            field_of(with(|s| s.response_timeout = Duration::ZERO)),
            "response_timeout"
        );
        assert_eq!(
            field_of(with(|s| s.connection_timeout = Duration::from_secs(600))),
            "connection_timeout"
        );
        assert_eq!(
            field_of(with(|s| s.key_prefix = "a{b}".into())),
            "key_prefix"
        );
        assert_eq!(
            field_of(with(|s| {
                s.password_env = Some("PW".into());
                s.password_file = Some("/pw".into());
            })),
            "password_file"
        );
        assert_eq!(
            field_of(with(|s| s.username = Some(String::new()))),
            "username"
        );
    }

    #[test]
    fn password_comes_from_a_file_or_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let s = RedisSettings {
            password_file: Some(path.clone()),
            ..RedisSettings::default()
        };
        assert_eq!(s.password().unwrap().as_deref(), Some("s3cret"));
        let s = RedisSettings {
            password_file: Some(dir.path().join("missing")),
            ..RedisSettings::default()
        };
        assert_eq!(s.password().unwrap_err().field, "password_file");
        let s = RedisSettings {
            password_env: Some("WEIR_TEST_SURELY_UNSET_REDIS_PW".into()),
            ..RedisSettings::default()
        };
        assert_eq!(s.password().unwrap_err().field, "password_env");
    }
}
