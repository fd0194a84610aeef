//! The headers the gateway sets for upstreams: forwarding and identity headers, the request id
//! and `traceparent` (made by `crate::headers`); client copies are removed, never trusted.

use crate::headers::{is_gateway_owned, NameList};
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// Removes the client headers the upstream must not receive: the names the gateway sets
/// itself, names with underscores (some servers read them as dashes, so a client could
/// smuggle a copy of a trusted header), and `also` (`[server] strip_request_headers`, and on
/// cached routes `[cache] strip_unkeyed`). One pass over the names; removal only when present.
pub fn strip_client_headers(req: &mut RequestHeader, also: &[&NameList]) {
    let unwanted: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            is_gateway_owned(n) || also.iter().any(|l| l.contains(n))
        })
        .cloned()
        .collect();
    for name in unwanted {
        req.remove_header(&name);
    }
}

/// The text of an address for `X-Forwarded-For` (IPv4 written by hand: this runs for every
/// request and `Display` goes through the formatting machinery).
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Sets the forwarding and identity headers of the upstream request (after
/// `strip_client_headers`).
pub fn set_upstream_headers(
    req: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&str>,
    request_id: &str,
    traceparent: &str,
) -> pingora::Result<()> {
    if let Some(ip) = client_ip {
        req.insert_header("X-Forwarded-For", ip_text(ip))?;
    }
    req.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
    if let Some(host) = host {
        req.insert_header("X-Forwarded-Host", host)?;
    }
    req.insert_header("X-Request-Id", request_id)?;
    req.insert_header("traceparent", traceparent)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_like_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
