//! `consumers:` (named API clients and their hashed credentials) and
//! `subscriptions:` (a consumer's standing on a route or service). Checks
//! that span consumers, credentials and plugins run in `consumer` and
//! `plugin`, called by `compile`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::PluginMap;

/// A named API client.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name, sent upstream in the consumer header.
    pub name: String,
    /// Groups, for `consumer-restriction` and the groups header.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Credentials, per auth method; several per method are allowed (key
    /// rotation).
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// The consumer's own limits (`limit-count`, `limit-req`,
    /// `limit-conn`); each wins over a route's limit of the same type.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub plugins: PluginMap,
}

/// A consumer's credentials. Secrets are only ever given hashed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// API keys for `key-auth`.
    #[serde(default, rename = "key-auth")]
    pub key_auth: Vec<KeyCredential>,
    /// Username and password for `basic-auth`.
    #[serde(default, rename = "basic-auth")]
    pub basic_auth: Vec<BasicCredential>,
    /// Keys for `jwt-auth`.
    #[serde(default, rename = "jwt-auth")]
    pub jwt_auth: Vec<JwtCredential>,
    /// Shared secrets for `hmac-auth`.
    #[serde(default, rename = "hmac-auth")]
    pub hmac_auth: Vec<HmacCredential>,
}

/// A key id and its shared HMAC secret. HMAC needs the secret itself, so
/// this is the one credential kept in the clear; it is never logged.
#[derive(Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacCredential {
    /// Key id the client names in its signature; unique over all consumers.
    pub key_id: String,
    /// The shared secret, at least 32 bytes.
    pub secret: String,
}

impl fmt::Debug for HmacCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacCredential")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An API key, stored as the hex SHA-256 of the key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCredential {
    /// `sha256(key)` as 64 hex digits (`printf %s KEY | sha256sum`).
    pub key_sha256: String,
}

/// A username and an argon2 password hash.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    /// The username; unique over all consumers.
    pub username: String,
    /// The password's argon2 hash as a PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
}

/// How `jwt-auth` recognises this consumer's tokens.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    /// The value of the route's consumer claim (default `sub`) that means
    /// this consumer; unique over all consumers.
    pub subject: String,
}

/// A consumer's subscription to a route or a service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Id of the subscription in the replicated store (default
    /// `CONSUMER.route.ID` or `CONSUMER.service.ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Consumer name.
    pub consumer: String,
    /// Route id (exactly one of `route`, `service`).
    #[serde(default)]
    pub route: Option<String>,
    /// Service id (exactly one of `route`, `service`).
    #[serde(default)]
    pub service: Option<String>,
    /// Only `approved` admits the consumer.
    pub state: SubscriptionState,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Asked for, not decided.
    Requested,
    /// Granted.
    Approved,
    /// Refused.
    Rejected,
    /// Granted, then withdrawn.
    Revoked,
}
