//! What a proxy does to the traffic it carries: toxics (latency, bandwidth,
//! loss, blackhole, reset, slicer), each on one direction of a proxy, and
//! partitions (drop everything from some client sources, or through the
//! whole proxy, one way or both). Parsing their JSON form checks every
//! field and names the one that is wrong; the proxies read them as plain
//! values. The proxies themselves are `tcp` and `udp`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest latency or slicer delay accepted: ten minutes.
const MAX_LATENCY_MS: u64 = 600_000;
/// Longest pause between slices: ten seconds.
const MAX_SLICE_DELAY_US: u64 = 10_000_000;
/// Largest slice: 1 MiB.
const MAX_SLICE: usize = 1 << 20;
/// Longest toxic or partition name.
const MAX_NAME: usize = 64;

/// Which way the data flows through a proxy (toxiproxy's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// From the client to the upstream.
    Upstream,
    /// From the upstream back to the client (the default).
    #[default]
    Downstream,
}

impl Stream {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// What a proxy carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Byte streams.
    Tcp,
    /// Datagrams.
    Udp,
}

impl Protocol {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A wrong field of outside input: its path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Where (`attributes.latency_ms`, `stream`, `sources[1]`).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One kind of toxic with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ToxicKind {
    /// Delays each chunk (TCP) or datagram (UDP) by `latency_ms`, plus or
    /// minus up to `jitter_ms` (uniform). TCP keeps the order; UDP may
    /// reorder, as a jittery network does.
    Latency {
        /// Mean delay, ms.
        latency_ms: u64,
        /// Largest deviation from the mean, ms (at most `latency_ms`).
        jitter_ms: u64,
    },
    /// Caps the rate of the direction.
    Bandwidth {
        /// Bytes per second.
        bytes_per_sec: u64,
    },
    /// Drops each datagram with this probability (UDP only).
    Loss {
        /// 0 to 1.
        probability: f64,
    },
    /// Drops everything in the direction; a TCP connection stays open and
    /// silent.
    Blackhole,
    /// Resets a TCP connection (RST both ways) once `after_bytes` passed
    /// in the direction (TCP only).
    Reset {
        /// Bytes let through on the connection first.
        after_bytes: u64,
    },
    /// Cuts TCP writes into slices of `average_size` ± `size_variation`
    /// bytes with `delay_us` between them (TCP only).
    Slicer {
        /// Mean slice, bytes.
        average_size: usize,
        /// Largest deviation, bytes (below `average_size`).
        size_variation: usize,
        /// Pause between slices, µs.
        delay_us: u64,
    },
}

impl ToxicKind {
    /// The `type` label.
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::Loss { .. } => "loss",
            ToxicKind::Blackhole => "blackhole",
            ToxicKind::Reset { .. } => "reset",
            ToxicKind::Slicer { .. } => "slicer",
        }
    }

    fn attributes(&self) -> serde_json::Value {
        match *self {
            ToxicKind::Latency {
                latency_ms,
                jitter_ms,
            } => serde_json::json!({"latency_ms": latency_ms, "jitter_ms": jitter_ms}),
            ToxicKind::Bandwidth { bytes_per_sec } => {
                serde_json::json!({"bytes_per_sec": bytes_per_sec})
            }
            ToxicKind::Loss { probability } => serde_json::json!({"probability": probability}),
            ToxicKind::Blackhole => serde_json::json!({}),
            ToxicKind::Reset { after_bytes } => serde_json::json!({"after_bytes": after_bytes}),
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay_us,
            } => serde_json::json!({
                "average_size": average_size,
                "size_variation": size_variation,
                "delay_us": delay_us,
            }),
        }
    }

    /// Checks the settings for a proxy of `protocol`.
    ///
    /// # Errors
    /// The first wrong field (`type` or `attributes.…`).
    pub fn validate(&self, protocol: Protocol) -> Result<(), FieldError> {
        let attr = |f: &str, r: &str| Err(FieldError::new(format!("attributes.{f}"), r));
        match *self {
            ToxicKind::Latency {
                latency_ms,
                jitter_ms,
            } => {
                if latency_ms > MAX_LATENCY_MS {
                    return attr("latency_ms", "must be at most 600000 (ten minutes)");
                }
                if jitter_ms > latency_ms {
                    return attr("jitter_ms", "must be at most latency_ms");
                }
            }
            ToxicKind::Bandwidth { bytes_per_sec } => {
                if bytes_per_sec == 0 {
                    return attr(
                        "bytes_per_sec",
                        "must be at least 1 (use a blackhole to stop the traffic)",
                    );
                }
            }
            ToxicKind::Loss { probability } => {
                if protocol != Protocol::Udp {
                    return Err(FieldError::new(
                        "type",
                        "`loss` applies to UDP proxies only (TCP does not lose bytes; use blackhole or reset)",
                    ));
                }
                if !(probability.is_finite() && (0.0..=1.0).contains(&probability)) {
                    return attr("probability", "must be a number from 0 to 1");
                }
            }
            ToxicKind::Blackhole => {}
            ToxicKind::Reset { .. } => {
                if protocol != Protocol::Tcp {
                    return Err(FieldError::new(
                        "type",
                        "`reset` applies to TCP proxies only (UDP has no connection to reset)",
                    ));
                }
            }
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay_us,
            } => {
                if protocol != Protocol::Tcp {
                    return Err(FieldError::new(
                        "type",
                        "`slicer` applies to TCP proxies only (a datagram is not cut)",
                    ));
                }
                if average_size == 0 || average_size > MAX_SLICE {
                    return attr("average_size", "must be from 1 to 1048576 bytes");
                }
                if size_variation >= average_size {
                    return attr("size_variation", "must be below average_size");
                }
                if delay_us > MAX_SLICE_DELAY_US {
                    return attr("delay_us", "must be at most 10000000 (ten seconds)");
                }
            }
        }
        Ok(())
    }
}

/// A named toxic on one direction of a proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    /// Unique per proxy.
    pub name: String,
    /// The direction it acts on.
    pub stream: Stream,
    /// What it does.
    pub kind: ToxicKind,
}

impl Toxic {
    /// A toxic.
    pub fn new(name: impl Into<String>, stream: Stream, kind: ToxicKind) -> Toxic {
        Toxic {
            name: name.into(),
            stream,
            kind,
        }
    }

    /// Checks the name and the settings for a proxy of `protocol`.
    ///
    /// # Errors
    /// The first wrong field.
    pub fn validate(&self, protocol: Protocol) -> Result<(), FieldError> {
        check_name("name", &self.name)?;
        self.kind.validate(protocol)
    }

    /// The JSON form: `{"name", "type", "stream", "attributes"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream,
            "attributes": self.kind.attributes(),
        })
    }

    /// Reads the JSON form for a proxy of `protocol`; `name`, when given,
    /// is the name from the URL (a `name` in the body must match it).
    ///
    /// # Errors
    /// The first wrong field, by its path.
    pub fn from_json(
        v: &serde_json::Value,
        protocol: Protocol,
        name: Option<&str>,
    ) -> Result<Toxic, FieldError> {
        let raw: RawToxic = parse(v.clone(), "")?;
        let name = match (name, raw.name) {
            (Some(url), Some(body)) if url != body => {
                return Err(FieldError::new(
                    "name",
                    format!("`{body}` differs from the toxic named in the path (`{url}`)"),
                ));
            }
            (Some(url), _) => url.to_string(),
            (None, Some(body)) => body,
            (None, None) => return Err(FieldError::new("name", "missing")),
        };
        let a = raw.attributes.unwrap_or(serde_json::json!({}));
        let kind = match raw.kind.as_str() {
            "latency" => {
                let l: LatencyAttrs = parse(a, "attributes.")?;
                ToxicKind::Latency {
                    latency_ms: l.latency_ms,
                    jitter_ms: l.jitter_ms,
                }
            }
            "bandwidth" => {
                let b: BandwidthAttrs = parse(a, "attributes.")?;
                ToxicKind::Bandwidth {
                    bytes_per_sec: b.bytes_per_sec,
                }
            }
            "loss" => {
                let l: LossAttrs = parse(a, "attributes.")?;
                ToxicKind::Loss {
                    probability: l.probability,
                }
            }
            "blackhole" => {
                let _: NoAttrs = parse(a, "attributes.")?;
                ToxicKind::Blackhole
            }
            "reset" => {
                let r: ResetAttrs = parse(a, "attributes.")?;
                ToxicKind::Reset {
                    after_bytes: r.after_bytes,
                }
            }
            "slicer" => {
                let s: SlicerAttrs = parse(a, "attributes.")?;
                ToxicKind::Slicer {
                    average_size: s.average_size,
                    size_variation: s.size_variation,
                    delay_us: s.delay_us,
                }
            }
            other => {
                return Err(FieldError::new(
                    "type",
                    format!(
                        "unknown type `{other}`; one of latency, bandwidth, loss, blackhole, reset, slicer"
                    ),
                ));
            }
        };
        let t = Toxic {
            name,
            stream: raw.stream.unwrap_or_default(),
            kind,
        };
        t.validate(protocol)?;
        Ok(t)
    }

    /// The delay this toxic adds to one chunk or datagram.
    pub(crate) fn delay(&self, rng: &mut fastrand::Rng) -> Duration {
        match self.kind {
            ToxicKind::Latency {
                latency_ms,
                jitter_ms,
            } => latency_sample(latency_ms, jitter_ms, rng),
            _ => Duration::ZERO,
        }
    }
}

/// One delay of `latency_ms` ± up to `jitter_ms`, uniform, in µs steps.
pub fn latency_sample(latency_ms: u64, jitter_ms: u64, rng: &mut fastrand::Rng) -> Duration {
    let base = latency_ms.saturating_mul(1000);
    let j = jitter_ms.saturating_mul(1000).min(base);
    if j == 0 {
        return Duration::from_micros(base);
    }
    let offset = rng.u64(0..=2 * j);
    Duration::from_micros(base - j + offset)
}

fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(FieldError::new(
            field,
            "must be 1-64 letters, digits, `-`, `_` or `.`",
        ));
    }
    Ok(())
}

/// Deserializes `v`, naming the wrong field under `prefix`.
fn parse<T: DeserializeOwned>(v: serde_json::Value, prefix: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.trim_end_matches('.').to_string()
        } else {
            format!("{prefix}{path}")
        };
        let field = if field.is_empty() {
            "body".to_string()
        } else {
            field
        };
        FieldError::new(field, e.into_inner().to_string())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToxic {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    stream: Option<Stream>,
    attributes: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyAttrs {
    latency_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BandwidthAttrs {
    bytes_per_sec: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LossAttrs {
    probability: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoAttrs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetAttrs {
    #[serde(default)]
    after_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlicerAttrs {
    average_size: usize,
    #[serde(default)]
    size_variation: usize,
    #[serde(default)]
    delay_us: u64,
}

/// Which client sources a partition cuts off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Every port of this IP.
    Ip(IpAddr),
    /// This address exactly.
    Addr(SocketAddr),
}

impl Source {
    /// Whether `client` is this source.
    pub fn matches(&self, client: SocketAddr) -> bool {
        match *self {
            Source::Ip(ip) => client.ip() == ip,
            Source::Addr(a) => client == a,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(ip) => ip.fmt(f),
            Source::Addr(a) => a.fmt(f),
        }
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Source, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Source::Addr(a));
        }
        s.parse::<IpAddr>()
            .map(Source::Ip)
            .map_err(|_| format!("`{s}` is neither an IP nor an IP:port"))
    }
}

impl From<SocketAddr> for Source {
    fn from(a: SocketAddr) -> Source {
        Source::Addr(a)
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        Source::Ip(ip)
    }
}

/// Which way a partition drops traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Both ways (symmetric; the default).
    #[default]
    Both,
    /// Only what the matched clients send (one-way: they cannot reach
    /// the upstream, the upstream's answers to others still flow).
    Upstream,
    /// Only what goes back to the matched clients (one-way: the upstream
    /// hears them, they never hear it).
    Downstream,
}

impl Direction {
    /// Whether it drops `stream`.
    pub fn drops(self, stream: Stream) -> bool {
        match self {
            Direction::Both => true,
            Direction::Upstream => stream == Stream::Upstream,
            Direction::Downstream => stream == Stream::Downstream,
        }
    }
}

/// A partition rule on a proxy: traffic of the matched client sources
/// (every client when `sources` is empty: the whole proxy) is dropped in
/// `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Partition {
    /// Client sources cut off; empty cuts off every client.
    pub sources: Vec<Source>,
    /// Which way.
    pub direction: Direction,
}

impl Partition {
    /// Cuts off every client of the proxy, both ways.
    pub fn whole() -> Partition {
        Partition::default()
    }

    /// Cuts off these sources, both ways.
    pub fn sources(sources: impl IntoIterator<Item = Source>) -> Partition {
        Partition {
            sources: sources.into_iter().collect(),
            direction: Direction::Both,
        }
    }

    /// The same rule, one way.
    pub fn one_way(mut self, direction: Direction) -> Partition {
        self.direction = direction;
        self
    }

    /// Whether it drops `stream` of `client`.
    pub fn drops(&self, client: SocketAddr, stream: Stream) -> bool {
        self.direction.drops(stream)
            && (self.sources.is_empty() || self.sources.iter().any(|s| s.matches(client)))
    }

    /// The JSON form: `{"sources": [...], "direction"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sources": self.sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "direction": self.direction,
        })
    }

    /// Reads the JSON form.
    ///
    /// # Errors
    /// The first wrong field, by its path.
    pub fn from_json(v: &serde_json::Value) -> Result<Partition, FieldError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(default)]
            sources: Vec<String>,
            #[serde(default)]
            direction: Direction,
        }
        let raw: Raw = parse(v.clone(), "")?;
        let sources = raw
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse()
                    .map_err(|r| FieldError::new(format!("sources[{i}]"), r))
            })
            .collect::<Result<Vec<Source>, FieldError>>()?;
        Ok(Partition {
            sources,
            direction: raw.direction,
        })
    }
}

/// Checks a partition rule's name.
///
/// # Errors
/// A name that is empty, too long or has other characters.
pub fn check_rule_name(name: &str) -> Result<(), FieldError> {
    check_name("name", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(v: serde_json::Value, p: Protocol) -> String {
        Toxic::from_json(&v, p, None).expect_err("refused").field
    }

    #[test]
    fn toxics_round_trip_through_json() {
        let all = [
            Toxic::new(
                "lag",
                Stream::Upstream,
                ToxicKind::Latency {
                    latency_ms: 100,
                    jitter_ms: 10,
                },
            ),
            Toxic::new(
                "bw",
                Stream::Downstream,
                ToxicKind::Bandwidth {
                    bytes_per_sec: 1000,
                },
            ),
            Toxic::new("hole", Stream::Upstream, ToxicKind::Blackhole),
            Toxic::new(
                "rst",
                Stream::Downstream,
                ToxicKind::Reset { after_bytes: 5 },
            ),
            Toxic::new(
                "cut",
                Stream::Downstream,
                ToxicKind::Slicer {
                    average_size: 10,
                    size_variation: 2,
                    delay_us: 100,
                },
            ),
        ];
        for t in all {
            let back = Toxic::from_json(&t.to_json(), Protocol::Tcp, None).expect("parses");
            assert_eq!(back, t);
        }
        let loss = Toxic::new(
            "drop",
            Stream::Upstream,
            ToxicKind::Loss { probability: 0.25 },
        );
        assert_eq!(
            Toxic::from_json(&loss.to_json(), Protocol::Udp, None).expect("parses"),
            loss
        );
    }

    #[test]
    fn a_bad_toxic_names_its_field() {
        use serde_json::json;
        let tcp = Protocol::Tcp;
        let udp = Protocol::Udp;
        assert_eq!(field(json!({"type": "latency"}), tcp), "name");
        assert_eq!(
            field(json!({"name": "a b", "type": "blackhole"}), tcp),
            "name"
        );
        assert_eq!(field(json!({"name": "a", "type": "teleport"}), tcp), "type");
        assert_eq!(
            field(
                json!({"name": "a", "type": "blackhole", "stream": "sideways"}),
                tcp
            ),
            "stream"
        );
        assert_eq!(
            field(
                json!({"name": "a", "type": "latency", "attributes": {"latency_ms": "slow"}}),
                tcp
            ),
            "attributes.latency_ms"
        );
        assert_eq!(
            field(
                json!({"name": "a", "type": "latency", "attributes": {"latency_ms": 5, "jitter_ms": 6}}),
                tcp
            ),
            "attributes.jitter_ms"
        );
        assert_eq!(
            field(
                json!({"name": "a", "type": "latency", "attributes": {"latency": 5}}),
                tcp
            ),
            "attributes.latency"
        );
        assert_eq!(
            field(
                json!({"name": "a", "type": "latency", "attributes": {}}),
                tcp
            ),
            "attributes"
        );
        assert_eq!(
            field(
                json!({"name": "a", "type": "bandwidth", "attributes": {"bytes_per_sec": 0}}),
                tcp
            ),
            "attributes.bytes_per_sec"
        );
        assert_eq!(
            field(
                json!({"name": "a", "type": "loss", "attributes": {"probability": 0.5}}),
                tcp
            ),
            "type"
        );
        assert_eq!(
            field(
                json!({"name": "a", "type": "loss", "attributes": {"probability": 1.5}}),
                udp
            ),
            "attributes.probability"
        );
        assert_eq!(field(json!({"name": "a", "type": "reset"}), udp), "type");
        assert_eq!(
            field(
                json!({"name": "a", "type": "slicer", "attributes": {"average_size": 4, "size_variation": 4}}),
                tcp
            ),
            "attributes.size_variation"
        );
        assert_eq!(
            field(json!({"name": "a", "type": "blackhole", "extra": 1}), tcp),
            "extra"
        );
        let e = Toxic::from_json(&json!({"name": "b", "type": "blackhole"}), tcp, Some("a"))
            .expect_err("names differ");
        assert_eq!(e.field, "name");
    }

    #[test]
    fn latency_samples_stay_within_the_jitter() {
        let mut rng = fastrand::Rng::with_seed(7);
        let samples: Vec<Duration> = (0..10_000)
            .map(|_| latency_sample(50, 20, &mut rng))
            .collect();
        let lo = Duration::from_millis(30);
        let hi = Duration::from_millis(70);
        assert!(samples.iter().all(|d| (lo..=hi).contains(d)));
        // Uniform over [30, 70] ms: the mean of 10,000 samples is within
        // 1 ms of 50 ms (its standard error is ~0.12 ms).
        let mean = samples.iter().sum::<Duration>() / 10_000;
        assert!(
            mean > Duration::from_millis(49) && mean < Duration::from_millis(51),
            "{mean:?}"
        );
        assert_eq!(latency_sample(50, 0, &mut rng), Duration::from_millis(50));
    }

    #[test]
    fn partitions_match_sources_and_directions() {
        let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.2:1000".parse().expect("addr");
        let p = Partition::sources([Source::Addr(a)]);
        assert!(p.drops(a, Stream::Upstream) && p.drops(a, Stream::Downstream));
        assert!(!p.drops(b, Stream::Upstream));
        let ip =
            Partition::sources(["127.0.0.2".parse().expect("src")]).one_way(Direction::Downstream);
        assert!(ip.drops(b, Stream::Downstream) && !ip.drops(b, Stream::Upstream));
        assert!(Partition::whole().drops(b, Stream::Upstream));
        let v =
            serde_json::json!({"sources": ["127.0.0.1:1000", "10.0.0.1"], "direction": "upstream"});
        let parsed = Partition::from_json(&v).expect("parses");
        assert_eq!(
            Partition::from_json(&parsed.to_json()).expect("again"),
            parsed
        );
        let e = Partition::from_json(&serde_json::json!({"sources": ["x"]})).expect_err("bad");
        assert_eq!(e.field, "sources[0]");
        let e = Partition::from_json(&serde_json::json!({"direction": "around"})).expect_err("bad");
        assert_eq!(e.field, "direction");
    }
}
