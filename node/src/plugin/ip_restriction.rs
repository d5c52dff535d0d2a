//! `ip-restriction`: allow or deny clients by IP address, with CIDR lists
//! for IPv4 and IPv6. Behind proxies, the client address is taken from
//! `X-Forwarded-For` or `Forwarded`, but only when the TCP peer is a
//! trusted proxy, and then as the rightmost hop that is not itself trusted
//! (a client can prepend anything to those headers, never append).

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{self, HeaderName};
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    BuildEnv, ConfigErrorList, Early, Plugin, PluginDef, RequestCtx, RequestHead, parse_config,
};

/// Registration.
pub(super) const DEF: PluginDef = PluginDef {
    name: "ip-restriction",
    priority: 3000,
    build,
};

/// Config of `ip-restriction`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// When set, only these networks may pass.
    #[serde(default)]
    allow: Vec<String>,
    /// These networks never pass (deny wins over allow).
    #[serde(default)]
    deny: Vec<String>,
    /// Peers whose forwarding header is believed.
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// Which forwarding header trusted proxies set.
    #[serde(default)]
    client_ip_header: ClientIpHeader,
}

/// The forwarding header read behind trusted proxies.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    trusted: Vec<IpNet>,
    header: ClientIpHeader,
}

fn parse_nets(list: &[String], field: &str, errs: &mut ConfigErrorList) -> Vec<IpNet> {
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let s = s.trim();
        let net = s
            .parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from));
        match net {
            // `10.1.2.3/8` means 10.0.0.0/8; store it canonical.
            Some(n) => out.push(n.trunc()),
            None => errs.push((
                format!("{field}[{i}]"),
                format!("`{s}` is not an IP address or CIDR network"),
            )),
        }
    }
    // Fewer, larger networks to scan per request.
    IpNet::aggregate(&out)
}

fn build(v: &serde_yaml_ng::Value, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, ConfigErrorList> {
    Ok(Arc::new(compile(v)?))
}

fn compile(v: &serde_yaml_ng::Value) -> Result<IpRestriction, ConfigErrorList> {
    let raw: RawConfig = parse_config(v)?;
    let mut errs = Vec::new();
    let allow = parse_nets(&raw.allow, "allow", &mut errs);
    let deny = parse_nets(&raw.deny, "deny", &mut errs);
    let trusted = parse_nets(&raw.trusted_proxies, "trusted_proxies", &mut errs);
    if raw.allow.is_empty() && raw.deny.is_empty() {
        errs.push((String::new(), "set `allow`, `deny` or both".into()));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(IpRestriction {
        allow,
        deny,
        trusted,
        header: raw.client_ip_header,
    })
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a dual-stack socket
/// reports IPv4 peers) is matched as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn contains(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|n| n.contains(&ip))
}

impl IpRestriction {
    fn is_trusted(&self, ip: IpAddr) -> bool {
        contains(&self.trusted, ip)
    }

    /// The client's address: the peer, unless the peer is a trusted proxy;
    /// then the rightmost forwarded hop that is not trusted. `None` when
    /// that hop cannot be read (`unknown`, an obfuscated name, garbage).
    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let hops: Vec<Option<IpAddr>> = match self.header {
            ClientIpHeader::XForwardedFor => {
                list_items(headers, &header::HeaderName::from_static("x-forwarded-for"))
                    .map(parse_hop)
                    .collect()
            }
            ClientIpHeader::Forwarded => list_items(headers, &header::FORWARDED)
                .map(|element| forwarded_for(element).and_then(parse_hop))
                .collect(),
        };
        let mut last = peer;
        for hop in hops.into_iter().rev() {
            let ip = canonical(hop?);
            if !self.is_trusted(ip) {
                return Some(ip);
            }
            last = ip;
        }
        // Every hop is a trusted proxy: the leftmost one is the client.
        Some(last)
    }
}

/// The comma-separated items of every line of a header, in order. A line
/// that is not visible ASCII yields one unreadable item.
fn list_items<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The `for=` value of one `Forwarded` element, quotes removed.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, _) = rest.split_once(']')?;
        return inner.parse().ok();
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[async_trait::async_trait]
impl Plugin for IpRestriction {
    async fn access(&self, req: &mut RequestHead<'_>, ctx: &mut RequestCtx) -> Result<(), Early> {
        let Some(ip) = self.client_ip(ctx.client_ip(), req.headers) else {
            return Err(Early::forbidden(
                "ip_forbidden",
                "the client address could not be determined",
            ));
        };
        let denied =
            contains(&self.deny, ip) || (!self.allow.is_empty() && !contains(&self.allow, ip));
        if denied {
            return Err(Early::forbidden(
                "ip_forbidden",
                "access from this address is not allowed",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn plugin(yaml: &str) -> Result<IpRestriction, ConfigErrorList> {
        compile(&serde_yaml_ng::from_str(yaml).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let p = plugin("{deny: [1.1.1.1], trusted_proxies: [10.0.0.0/8, 'fd00::/8']}").unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 2.2.2.2"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        // Untrusted peer: headers ignored.
        assert_eq!(p.client_ip(ip("3.3.3.3"), &h), Some(ip("3.3.3.3")));
        assert_eq!(p.client_ip(ip("10.1.1.1"), &h), Some(ip("2.2.2.2")));
        assert_eq!(p.client_ip(ip("::ffff:10.1.1.1"), &h), Some(ip("2.2.2.2")));
        // All trusted: the leftmost hop.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.9.9.9, 10.0.0.2"),
        );
        assert_eq!(p.client_ip(ip("10.1.1.1"), &h), Some(ip("10.9.9.9")));
        // No header: the peer itself.
        assert_eq!(
            p.client_ip(ip("10.1.1.1"), &HeaderMap::new()),
            Some(ip("10.1.1.1"))
        );
        // Garbage in the hop that decides.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, nonsense"),
        );
        assert_eq!(p.client_ip(ip("10.1.1.1"), &h), None);
    }

    #[test]
    fn forwarded_header_forms() {
        let p =
            plugin("{allow: ['::/0'], trusted_proxies: [127.0.0.1], client_ip_header: forwarded}")
                .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static(
                r#"for=192.0.2.60;proto=http, For="[2001:db8:cafe::17]:4711""#,
            ),
        );
        assert_eq!(
            p.client_ip(ip("127.0.0.1"), &h),
            Some(ip("2001:db8:cafe::17"))
        );
        h.insert(header::FORWARDED, HeaderValue::from_static("for=unknown"));
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), None);
        assert_eq!(parse_hop("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop("[::1]"), Some(ip("::1")));
    }

    #[test]
    fn config_errors_name_the_entry() {
        let e = plugin("{allow: [10.0.0.0/8, 300.1.1.1, 'fe80::/129']}")
            .err()
            .unwrap();
        assert_eq!(e[0].0, "allow[1]");
        assert_eq!(e[1].0, "allow[2]");
        let e = plugin("~").err().unwrap();
        assert!(e[0].1.contains("allow"), "{e:?}");
    }
}
