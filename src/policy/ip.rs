//! Client addresses: the `ip_filter` policy (allow and deny lists of CIDR ranges) and the
//! resolution of the client address behind `[server] trusted_proxies`, done once per request
//! and used by every address-based decision.

use ipnet::IpNet;
use std::net::IpAddr;

/// A list of address ranges; a bare address is a range of one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ranges(Vec<IpNet>);

impl Ranges {
    /// Parses every entry; `Err` holds the index and message of the first bad one.
    pub fn parse(list: &[String]) -> Result<Ranges, (usize, String)> {
        let mut out = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let net = match text.parse::<IpNet>() {
                Ok(n) => canonical(n.trunc()),
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err((
                            i,
                            format!(
                                "{text:?} is not an address or CIDR range, e.g. \"192.0.2.0/24\" or \"2001:db8::/32\""
                            ),
                        ))
                    }
                },
            };
            out.push(net);
        }
        Ok(Ranges(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 range (`::ffff:192.0.2.0/120`) as the IPv4 range it is: addresses
/// are compared in their canonical form.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// `kind = "ip_filter"`: an address passes when it is in `allow` (if given) and not in `deny`.
#[derive(Debug)]
pub struct Filter {
    pub allow: Option<Ranges>,
    pub deny: Ranges,
}

impl Filter {
    /// Whether `ip` may pass; a request without an address (a Unix socket) passes a deny list
    /// but not an allow list.
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            None => self.allow.is_none(),
            Some(ip) => {
                self.allow.as_ref().is_none_or(|a| a.contains(ip)) && !self.deny.contains(ip)
            }
        }
    }
}

/// The client address of a request: the TCP peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not itself trusted (addresses to the left
/// of it were written by the client and prove nothing). An entry that is not an address stops
/// the walk: the last trusted hop is then the client.
pub fn client_address<'a>(
    peer: Option<IpAddr>,
    trusted: &Ranges,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    let mut client = peer;
    let entries = forwarded_for.rev().flat_map(|v| v.rsplit(|&b| b == b','));
    for entry in entries {
        let Some(ip) = parse_entry(entry) else {
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    text.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[&str]) -> Ranges {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        Ranges::parse(&list).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn filters_v4_and_v6() {
        let f = Filter {
            allow: Some(ranges(&["192.0.2.0/24", "2001:db8::/32"])),
            deny: ranges(&["192.0.2.9"]),
        };
        assert!(f.admits(Some(ip("192.0.2.1"))));
        assert!(!f.admits(Some(ip("192.0.2.9"))));
        assert!(f.admits(Some(ip("::ffff:192.0.2.1"))), "mapped v4 is v4");
        assert!(f.admits(Some(ip("2001:db8::7"))));
        assert!(!f.admits(Some(ip("2001:db9::7"))));
        assert!(!f.admits(None));
        let mapped = Filter {
            allow: None,
            deny: ranges(&["::ffff:203.0.113.0/120"]),
        };
        assert!(
            !mapped.admits(Some(ip("203.0.113.9"))),
            "a mapped range is its IPv4 range"
        );
        assert!(Ranges::parse(&["10.0.0.300/8".into()]).is_err());
    }

    #[test]
    fn trusted_chain_takes_the_rightmost_untrusted() {
        let t = ranges(&["10.0.0.0/8"]);
        let xff: [&[u8]; 2] = [b"6.6.6.6, 203.0.113.7", b"10.1.1.1"];
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), &t, xff.iter().copied()),
            Some(ip("203.0.113.7"))
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(Some(ip("198.51.100.1")), &t, xff.iter().copied()),
            Some(ip("198.51.100.1"))
        );
        // Garbage stops the walk at the last trusted hop.
        let bad: [&[u8]; 1] = [b"203.0.113.7, nonsense"];
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), &t, bad.iter().copied()),
            Some(ip("10.0.0.1"))
        );
        let ports: [&[u8]; 1] = [b"[2001:db8::1]:443"];
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), &t, ports.iter().copied()),
            Some(ip("2001:db8::1"))
        );
    }
}
