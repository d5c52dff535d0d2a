//! Consumers: named API clients with labels, groups and credentials,
//! compiled once per snapshot into lookup tables the auth plugins share.
//!
//! Secrets are never kept in the clear here: API keys are stored as their
//! SHA-256, passwords as argon2/bcrypt PHC strings, and every comparison of
//! a secret runs in constant time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, Problems};
use crate::stores::BuildStores;

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
    /// Its own limits, which win over a route's of the same type.
    pub limits: crate::plugin::ConsumerLimits,
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
    /// API key digests, bucketed by their first 8 bytes so the final
    /// comparison of the whole digest can run in constant time.
    keys: HashMap<u64, Vec<KeyEntry>>,
    /// Basic-auth usernames → (PHC hash, consumer).
    basic: HashMap<String, (String, Arc<Consumer>)>,
    /// JWT subjects → consumer.
    jwt: HashMap<String, Arc<Consumer>>,
    /// HMAC key ids → (secret, consumer).
    hmac: HashMap<String, HmacEntry>,
}

/// An HMAC secret and its consumer.
pub struct HmacEntry {
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Its owner.
    pub consumer: Arc<Consumer>,
}

impl std::fmt::Debug for HmacEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacEntry")
            .field("consumer", &self.consumer.name)
            .finish_non_exhaustive()
    }
}

/// A stored key digest and its consumer.
type KeyEntry = ([u8; 32], Arc<Consumer>);

/// SHA-256 of an API key.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key).into()
}

fn bucket(d: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// A fixed argon2 hash checked when a username is unknown, so that an
/// unknown user costs the same time as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        SaltString::encode_b64(b"weir-dummy-salt!")
            .ok()
            .and_then(|salt| {
                argon2::Argon2::default()
                    .hash_password(b"weir-no-such-user", &salt)
                    .ok()
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
    })
}

impl Consumers {
    /// Compiles the `consumers:` list of a config; consumers' own limits
    /// keep their state in `stores`.
    pub fn build(config: &Config, stores: &BuildStores) -> Result<Consumers, ConfigErrors> {
        let mut p = Problems::default();
        let mut out = Consumers::default();
        for (i, c) in config.consumers.iter().enumerate() {
            let at = format!("consumers[{i}]");
            if let Some(consumer) = compile(c, &at, config, stores, &mut p) {
                if out.by_name.contains_key(&c.name) {
                    p.push(
                        format!("{at}.name"),
                        format!("duplicate consumer name `{}`", c.name),
                    );
                    continue;
                }
                let consumer = Arc::new(consumer);
                out.index_credentials(c, &consumer, &at, &mut p);
                out.by_name.insert(c.name.clone(), consumer);
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

    /// The consumer owning an API key, comparing digests in constant time.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        use subtle::ConstantTimeEq;
        let d = key_digest(key);
        self.keys
            .get(&bucket(&d))?
            .iter()
            .find(|(stored, _)| bool::from(stored.ct_eq(&d)))
            .map(|(_, c)| c)
    }

    /// The consumer with these basic-auth credentials. Runs argon2 or
    /// bcrypt (on a blocking thread); an unknown username costs the same as a wrong
    /// password.
    pub async fn by_password(&self, username: &str, password: &[u8]) -> Option<Arc<Consumer>> {
        let (hash, consumer) = match self.basic.get(username) {
            Some((h, c)) => (h.clone(), Some(c.clone())),
            None => (dummy_hash().to_string(), None),
        };
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || {
            use argon2::password_hash::{PasswordHash, PasswordVerifier};
            if is_bcrypt(&hash) {
                // The crate compares the digests in constant time.
                return bcrypt::verify(&password, &hash).unwrap_or(false);
            }
            PasswordHash::new(&hash)
                .map(|h| {
                    argon2::Argon2::default()
                        .verify_password(&password, &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok { consumer } else { None }
    }

    /// The HMAC secret and consumer of a key id.
    pub fn by_hmac_key(&self, key_id: &str) -> Option<&HmacEntry> {
        self.hmac.get(key_id)
    }

    /// The consumer a JWT subject (the route's consumer claim) names.
    pub fn by_jwt_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.jwt.get(subject)
    }
}

impl Consumers {
    fn index_credentials(
        &mut self,
        c: &crate::config::ConsumerConfig,
        consumer: &Arc<Consumer>,
        at: &str,
        p: &mut Problems,
    ) {
        let cred = &c.credentials;
        for (j, k) in cred.key_auth.iter().enumerate() {
            let here = format!("{at}.credentials.key-auth[{j}].key_sha256");
            let mut d = [0u8; 32];
            let hex = k.key_sha256.as_bytes();
            let ok = hex.len() == 64
                && hex.chunks(2).zip(d.iter_mut()).all(|(pair, out)| {
                    let s = std::str::from_utf8(pair).ok();
                    match s.and_then(|s| u8::from_str_radix(s, 16).ok()) {
                        Some(b) => {
                            *out = b;
                            true
                        }
                        None => false,
                    }
                });
            if !ok {
                // The value is (the hash of) a secret: not echoed.
                p.push(here, "must be the SHA-256 of the key as 64 hex digits");
                continue;
            }
            let slot = self.keys.entry(bucket(&d)).or_default();
            if slot.iter().any(|(e, _)| *e == d) {
                p.push(here, "the same key is given to another credential");
                continue;
            }
            slot.push((d, consumer.clone()));
        }
        for (j, b) in cred.basic_auth.iter().enumerate() {
            let here = format!("{at}.credentials.basic-auth[{j}]");
            if b.username.is_empty() || b.username.contains(':') {
                p.push(
                    format!("{here}.username"),
                    "must be non-empty and must not contain `:`",
                );
                continue;
            }
            let known = if b.password_hash.starts_with("$2") {
                is_bcrypt(&b.password_hash)
            } else {
                argon2::password_hash::PasswordHash::new(&b.password_hash)
                    .is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
            };
            if !known {
                p.push(
                    format!("{here}.password_hash"),
                    "must be an argon2 PHC string (`$argon2id$v=19$m=...`) or a bcrypt hash (`$2b$12$...`, cost 4 to 31)",
                );
                continue;
            }
            if self.basic.contains_key(&b.username) {
                p.push(
                    format!("{here}.username"),
                    format!("username `{}` is used by another credential", b.username),
                );
                continue;
            }
            self.basic.insert(
                b.username.clone(),
                (b.password_hash.clone(), consumer.clone()),
            );
        }
        for (j, t) in cred.jwt_auth.iter().enumerate() {
            let here = format!("{at}.credentials.jwt-auth[{j}].subject");
            if t.subject.is_empty() {
                p.push(here, "must not be empty");
                continue;
            }
            if self.jwt.contains_key(&t.subject) {
                p.push(
                    here,
                    format!("subject `{}` is used by another consumer", t.subject),
                );
                continue;
            }
            self.jwt.insert(t.subject.clone(), consumer.clone());
        }
        for (j, h) in cred.hmac_auth.iter().enumerate() {
            let here = format!("{at}.credentials.hmac-auth[{j}]");
            if h.key_id.is_empty() || h.key_id.contains(['"', ',', '\\']) {
                p.push(
                    format!("{here}.key_id"),
                    "must be non-empty without `\"`, `,` or `\\`",
                );
                continue;
            }
            if h.secret.len() < 32 {
                p.push(format!("{here}.secret"), "must be at least 32 bytes");
                continue;
            }
            if self.hmac.contains_key(&h.key_id) {
                p.push(
                    format!("{here}.key_id"),
                    format!("key id `{}` is used by another credential", h.key_id),
                );
                continue;
            }
            self.hmac.insert(
                h.key_id.clone(),
                HmacEntry {
                    secret: h.secret.as_bytes().to_vec(),
                    consumer: consumer.clone(),
                },
            );
        }
    }
}

/// Whether `hash` is a well-formed bcrypt hash: `$2a$`, `$2b$` or `$2y$`,
/// a cost of 4 to 31, then 22 characters of salt and 31 of digest in
/// bcrypt's base64 alphabet. (`$2x$`, the marker of a broken old
/// implementation, is refused.)
fn is_bcrypt(hash: &str) -> bool {
    let Some(rest) = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .find_map(|v| hash.strip_prefix(v))
    else {
        return false;
    };
    let Some((cost, tail)) = rest.split_once('$') else {
        return false;
    };
    cost.len() == 2
        && cost.parse::<u32>().is_ok_and(|c| (4..=31).contains(&c))
        && tail.len() == 53
        && tail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn compile(
    c: &crate::config::ConsumerConfig,
    at: &str,
    config: &Config,
    stores: &BuildStores,
    p: &mut Problems,
) -> Option<Consumer> {
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
    let limits = crate::plugin::consumer_limits(
        &c.name,
        &c.plugins,
        &format!("{at}.plugins"),
        config,
        stores,
        p,
    );
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
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::is_bcrypt;

    #[test]
    fn bcrypt_hashes_are_recognised() {
        let h = "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie";
        assert!(is_bcrypt(h));
        assert!(is_bcrypt(&h.replacen("$2b$", "$2a$", 1)));
        assert!(is_bcrypt(&h.replacen("$2b$", "$2y$", 1)));
        assert!(!is_bcrypt(&h.replacen("$2b$", "$2x$", 1)));
        assert!(!is_bcrypt(&h.replacen("$04$", "$03$", 1)));
        assert!(!is_bcrypt(&h.replacen("$04$", "$32$", 1)));
        assert!(!is_bcrypt(&h[..h.len() - 1]));
        assert!(!is_bcrypt(&h.replacen('E', "!", 1)));
        assert!(!is_bcrypt("$argon2id$v=19$m=19456,t=2,p=1$abc$def"));
    }
}
