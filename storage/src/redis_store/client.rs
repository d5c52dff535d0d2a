//! The connection to Redis: a redis-rs [`ConnectionManager`] (single
//! node) or cluster connection, both with their connection and response
//! timeouts set, opened lazily so building one never waits; every call
//! bounded in all by the response timeout and its failure mapped to a
//! [`SettleError`].

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, IntoConnectionInfo, RedisError, Script, Value};
use weir_limits::store::SettleError;

use super::settings::{RedisSettings, SettingsError};

/// Longest pause between two reconnect attempts: short, so the first call
/// after Redis recovers finds a connection within a second.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// First pause between reconnect attempts.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(50);

enum Conn {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
        /// Replaced by a fresh one after a refused login: the manager
        /// keeps a failed first connection for good unless the failure
        /// was an I/O error.
        manager: arc_swap::ArcSwap<ConnectionManager>,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
}

/// A handle on one Redis (or Redis Cluster); cheap to clone, shared by
/// every limit of a node.
#[derive(Clone)]
pub struct RedisClient {
    conn: Arc<Conn>,
    response_timeout: Duration,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("cluster", &matches!(*self.conn, Conn::Cluster { .. }))
            .field("response_timeout", &self.response_timeout)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisClient {
    /// Validates `settings`, reads the password and prepares the
    /// connection. Returns at once: nothing is connected until the first
    /// call (which may then fail or time out like any other).
    ///
    /// Must be called inside a tokio runtime (the connection manager
    /// spawns its reconnect task there).
    pub fn open(settings: &RedisSettings) -> Result<RedisClient, SettingsError> {
        settings.validate()?;
        let password = settings.password()?;
        let bad_url = |i: usize, e: RedisError| SettingsError {
            field: format!("urls[{i}]"),
            reason: e.to_string(),
        };
        let conn = if settings.cluster {
            let mut infos = Vec::with_capacity(settings.urls.len());
            for (i, url) in settings.urls.iter().enumerate() {
                infos.push(
                    url.as_str()
                        .into_connection_info()
                        .map_err(|e| bad_url(i, e))?,
                );
            }
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(settings.connection_timeout)
                .response_timeout(settings.response_timeout)
                .retries(settings.reconnect_retries)
                .min_retry_wait(MIN_RECONNECT_DELAY.as_millis() as u64)
                .max_retry_wait(MAX_RECONNECT_DELAY.as_millis() as u64);
            if let Some(user) = &settings.username {
                builder = builder.username(user);
            }
            if let Some(pw) = &password {
                builder = builder.password(pw);
            }
            let client = builder.build().map_err(|e| SettingsError {
                field: "urls".to_owned(),
                reason: e.to_string(),
            })?;
            Conn::Cluster {
                client,
                conn: tokio::sync::OnceCell::new(),
            }
        } else {
            let info = settings.urls[0]
                .as_str()
                .into_connection_info()
                .map_err(|e| bad_url(0, e))?;
            let mut redis_info = info.redis_settings().clone();
            if let Some(user) = &settings.username {
                redis_info = redis_info.set_username(user);
            }
            if let Some(pw) = &password {
                redis_info = redis_info.set_password(pw);
            }
            let client = redis::Client::open(info.set_redis_settings(redis_info))
                .map_err(|e| bad_url(0, e))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connection_timeout))
                .set_response_timeout(Some(settings.response_timeout))
                .set_number_of_retries(settings.reconnect_retries as usize)
                .set_min_delay(MIN_RECONNECT_DELAY)
                .set_max_delay(MAX_RECONNECT_DELAY);
            let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(|e| SettingsError {
                field: "urls[0]".to_owned(),
                reason: e.to_string(),
            })?;
            Conn::Single {
                client,
                config,
                manager: arc_swap::ArcSwap::from_pointee(manager),
            }
        };
        Ok(RedisClient {
            conn: Arc::new(conn),
            response_timeout: settings.response_timeout,
            prefix: settings.key_prefix.as_str().into(),
        })
    }

    /// The bound of every call.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The key prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `script` with `keys` and `args` (EVALSHA, loading the script
    /// on NOSCRIPT), bounded in all by the response timeout.
    pub(crate) async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[u64],
    ) -> Result<Value, SettleError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let call = async {
            match &*self.conn {
                Conn::Single { manager, .. } => {
                    let mut m = ConnectionManager::clone(&manager.load());
                    inv.invoke_async::<Value>(&mut m).await
                }
                Conn::Cluster { client, conn } => {
                    let c = conn
                        .get_or_try_init(|| client.get_async_connection())
                        .await?;
                    let mut c = c.clone();
                    inv.invoke_async::<Value>(&mut c).await
                }
            }
        };
        match tokio::time::timeout(self.response_timeout, call).await {
            Err(_) => Err(SettleError::Timeout(self.response_timeout)),
            Ok(Err(e)) => {
                self.renew_after(&e);
                Err(map_error(&e, self.response_timeout))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }
}

impl RedisClient {
    /// Starts over with a new connection manager after a refused login
    /// (or a server still loading its data), so the next call logs in
    /// again instead of repeating the stored failure.
    fn renew_after(&self, e: &RedisError) {
        let Conn::Single {
            client,
            config,
            manager,
        } = &*self.conn
        else {
            return;
        };
        let login = e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "LOADING"));
        if !login {
            return;
        }
        if let Ok(fresh) = ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            manager.store(Arc::new(fresh));
        }
    }
}

/// What a redis-rs error means for the caller: the network (unreachable),
/// the clock (timeout) or Redis saying no (refused).
fn map_error(e: &RedisError, timeout: Duration) -> SettleError {
    if e.is_timeout() {
        return SettleError::Timeout(timeout);
    }
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) {
        return SettleError::Refused(format!("Redis refused the credentials: {e}"));
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => {
            SettleError::Refused(format!("Redis refused the credentials: {e}"))
        }
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => {
            SettleError::Unreachable(format!("Redis: {e}"))
        }
        _ if e.is_cluster_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
            SettleError::Unreachable(format!("Redis: {e}"))
        }
        _ => SettleError::Refused(format!("Redis: {e}")),
    }
}

/// Reads a reply of `n` integers, or says what came instead.
pub(crate) fn integers<const N: usize>(v: &Value, what: &str) -> Result<[u64; N], SettleError> {
    let wrong = || {
        SettleError::Refused(format!(
            "Redis answered {what} with {v:?}, expected {N} non-negative integers"
        ))
    };
    let Value::Array(items) = v else {
        return Err(wrong());
    };
    if items.len() != N {
        return Err(wrong());
    }
    let mut out = [0u64; N];
    for (slot, item) in out.iter_mut().zip(items) {
        *slot = match item {
            Value::Int(i) => u64::try_from(*i).map_err(|_| wrong())?,
            _ => return Err(wrong()),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_the_wrong_shape_are_refused() {
        let ok = Value::Array(vec![Value::Int(3), Value::Int(4)]);
        assert_eq!(integers::<2>(&ok, "x").unwrap(), [3, 4]);
        for bad in [
            Value::Nil,
            Value::Int(3),
            Value::Array(vec![Value::Int(3)]),
            Value::Array(vec![Value::Int(-1), Value::Int(4)]),
            Value::Array(vec![Value::Int(3), Value::Nil]),
        ] {
            assert!(matches!(
                integers::<2>(&bad, "x"),
                Err(SettleError::Refused(_))
            ));
        }
    }
}
