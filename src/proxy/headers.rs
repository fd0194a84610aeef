//! Identity and forwarding headers: `X-Request-Id` (kept when well-formed, else generated),
//! W3C `traceparent` (continued with a new parent id, or started), and the forwarding headers
//! the gateway sets for upstreams (client copies are removed, never trusted).

use crate::headers::{is_gateway_owned, NameList};
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// Request ids longer than this, or with other characters than `[A-Za-z0-9._:-]`, are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The client's request id if acceptable, else a new random one.
pub fn request_id(client: Option<&[u8]>) -> String {
    if let Some(id) = client {
        if !id.is_empty()
            && id.len() <= MAX_REQUEST_ID
            && id
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            // Checked ASCII above.
            return String::from_utf8_lossy(id).into_owned();
        }
    }
    let mut id = String::with_capacity(32);
    push_hex(&mut id, rand::random::<u128>(), 32);
    id
}

/// Appends the low `digits` hex digits of `n`, lower case, zero-padded (no `fmt` machinery:
/// this runs for every request).
fn push_hex(out: &mut String, n: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((n >> (i * 4)) & 0xf) as usize]));
    }
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The `traceparent` to send upstream: the client's trace continued with a fresh parent id, or a
/// new trace when the client sent none or an invalid one.
pub fn traceparent(client: Option<&[u8]>) -> String {
    let span = u128::from(rand::random::<u64>().max(1));
    let mut out = String::with_capacity(55);
    if let Some(tp) = client {
        // version(2) - trace-id(32) - parent-id(16) - flags(2)
        let parts: Vec<&[u8]> = tp.split(|&b| b == b'-').collect();
        if let [ver, trace, parent, flags, ..] = parts[..] {
            let valid = ver.len() == 2
                && ver != b"ff"
                && is_lower_hex(ver)
                && trace.len() == 32
                && is_lower_hex(trace)
                && trace.iter().any(|&b| b != b'0')
                && parent.len() == 16
                && is_lower_hex(parent)
                && parent.iter().any(|&b| b != b'0')
                && flags.len() == 2
                && is_lower_hex(flags)
                && (ver != b"00" || parts.len() == 4);
            if valid {
                // Checked lower-case hex above.
                out.push_str("00-");
                out.push_str(&String::from_utf8_lossy(trace));
                out.push('-');
                push_hex(&mut out, span, 16);
                out.push('-');
                out.push_str(&String::from_utf8_lossy(flags));
                return out;
            }
        }
    }
    out.push_str("00-");
    push_hex(&mut out, rand::random::<u128>().max(1), 32);
    out.push('-');
    push_hex(&mut out, span, 16);
    out.push_str("-01");
    out
}

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

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some(b"abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in [
            &b""[..],
            b"a b",
            b"a\r\nX-Evil: 1",
            &[b'a'; 129][..],
            "é".as_bytes(),
        ] {
            let id = request_id(Some(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(is_lower_hex(id.as_bytes()));
        }
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn traceparent_continues_valid_traces_only() {
        let client = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = traceparent(Some(client));
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert!(!out.contains("00f067aa0ba902b7"), "the parent id is ours");
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"garbage",
        ] {
            let out = traceparent(Some(bad));
            assert!(!out.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{bad:?}");
            assert_eq!(out.len(), 55);
        }
    }
}
