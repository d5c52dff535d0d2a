//! The Redis backend of the limits (ADR 0034): the `redis` settings
//! ([`RedisSettings`]), the connection ([`RedisClient`]: redis-rs's async
//! connection manager with both timeouts set), a [`CreditAuthority`] whose
//! counts live in Redis ([`RedisAuthority`]: credit chunks taken and given
//! back by atomic Lua scripts) and the one-round-trip-per-request counter
//! of `sync: per_request` ([`RedisCounter`]).
//!
//! It does not own the request path: the credit store that spends grants
//! and falls back to a fair share lives in `weir-limits`, and the plugins
//! choose `store: redis` in `weir-node`. Only [`RedisCounter`] is meant to
//! be awaited by a request, and only when a limit asks for `sync:
//! per_request`.
//!
//! [`CreditAuthority`]: weir_limits::store::CreditAuthority

mod authority;
mod client;
mod counter;
mod settings;

pub use authority::{DEFAULT_REPORT_TTL, RedisAuthority};
pub use client::RedisClient;
pub use counter::RedisCounter;
pub use settings::{MAX_PREFIX_BYTES, MAX_TIMEOUT, RedisSettings, SettingsError};

use weir_limits::local::cut;
use weir_limits::store::LimitId;

/// The part of a Redis key shared by every window of one limit key:
/// `<prefix>{<limit id>|<key>}`. The braces are Redis Cluster's hash tag,
/// so the current and previous window of a key sit in one hash slot and a
/// script may touch both.
fn base_key(prefix: &str, id: &LimitId, key: &str) -> String {
    let key = cut(key);
    let mut s = String::with_capacity(prefix.len() + key.len() + 48);
    s.push_str(prefix);
    s.push('{');
    s.push_str(&id.to_string());
    s.push('|');
    s.push_str(key);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_limits::store::MAX_KEY_BYTES;

    #[test]
    fn keys_carry_the_prefix_the_id_and_a_cut_key() {
        let id = LimitId {
            owner: "route:r1".into(),
            plugin: "limit-count".into(),
            config: 0xab,
        };
        assert_eq!(
            base_key("weir:", &id, "alice"),
            "weir:{route:r1/limit-count/00000000000000ab|alice}"
        );
        // One byte then two-byte characters: the cut falls inside one.
        let long = format!("a{}", "é".repeat(MAX_KEY_BYTES));
        let k = base_key("p:", &id, &long);
        let cut_len = k.len() - "p:{route:r1/limit-count/00000000000000ab|}".len();
        assert_eq!(cut_len, MAX_KEY_BYTES - 1);
    }
}
