//! PROXY protocol (HAProxy's v1 text and v2 binary headers) on listeners with
//! `proxy_protocol = true`: the header a trusted load balancer sends first on each connection,
//! parsed here. The connection layer (`proxy::conn`) replaces the connection's socket digest
//! with one whose peer is the client the header names (`client_digest`), so every request of
//! the connection, HTTP/1 or HTTP/2, sees that client as its peer.

use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::SocketDigest;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted (16 bytes and addresses with TLVs).
pub const V2_MAX: usize = 16 + 512;

/// What the first bytes of a connection hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// More bytes are needed to tell (at most `n` in all).
    Incomplete(usize),
    /// A header of `len` bytes naming the client (`None`: LOCAL or UNKNOWN, the connection's
    /// own peer is the client, e.g. a load balancer's health check).
    Complete {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a PROXY protocol header, or a malformed one.
    Invalid(&'static str),
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Header {
    if buf.len() < V2_SIGNATURE.len().min(6) {
        return Header::Incomplete(16);
    }
    if buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    Header::Invalid("the connection does not start with a PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Header {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return match buf.len() >= V1_MAX {
            true => Header::Invalid("a PROXY v1 header longer than 107 bytes"),
            false => Header::Incomplete(V1_MAX),
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Header::Invalid("a PROXY v1 header longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Header::Invalid("a PROXY v1 header that is not text");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Complete { len, source: None },
        ["PROXY", family, src, _dst, sport, _dport] => {
            let ip = match (*family, src.parse::<IpAddr>()) {
                ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => ip,
                _ => return Header::Invalid("a PROXY v1 header with a bad address"),
            };
            match sport.parse::<u16>() {
                Ok(port) => Header::Complete {
                    len,
                    source: Some(SocketAddr::new(ip, port)),
                },
                Err(_) => Header::Invalid("a PROXY v1 header with a bad port"),
            }
        }
        _ => Header::Invalid("a malformed PROXY v1 header"),
    }
}

fn parse_v2(buf: &[u8]) -> Header {
    if buf.len() < 16 {
        return Header::Incomplete(16);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Header::Invalid("a PROXY v2 header of another version");
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Header::Invalid("a PROXY v2 header longer than 528 bytes");
    }
    if buf.len() < len {
        return Header::Incomplete(len);
    }
    let addr = &buf[16..len];
    let source = match (ver_cmd & 0x0f, family >> 4) {
        // LOCAL: the sender's own connection (health checks).
        (0, _) => None,
        (1, 1) if addr.len() >= 12 => {
            let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([addr[8], addr[9]]),
            ))
        }
        (1, 2) if addr.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addr[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([addr[32], addr[33]]),
            ))
        }
        // UNSPEC or UNIX: no address to use.
        (1, 0) | (1, 3) => None,
        (1, _) => return Header::Invalid("a PROXY v2 header with a short address block"),
        _ => return Header::Invalid("a PROXY v2 header with an unknown command"),
    };
    Header::Complete { len, source }
}

/// The socket digest of a connection whose PROXY header named `client` (or nothing: LOCAL or
/// UNKNOWN, then the client is unknown, `0.0.0.0` or `::` with the sender's port, which no
/// trusted range and no allow list contains). `fd` is the connection's socket; `digest` its
/// digest so far (its local address is kept).
pub fn client_digest(
    fd: i32,
    digest: Option<&SocketDigest>,
    sender: SocketAddr,
    client: Option<SocketAddr>,
) -> SocketDigest {
    let peer = client.unwrap_or_else(|| match sender {
        SocketAddr::V4(a) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), a.port()),
        SocketAddr::V6(a) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), a.port()),
    });
    let out = SocketDigest::from_raw_fd(fd);
    let _ = out.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    if let Some(local) = digest.and_then(|d| d.local_addr().cloned()) {
        let _ = out.local_addr.set(Some(local));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Header::Complete {
                len: 39,
                source: Some("192.0.2.7:5555".parse().unwrap_or_else(|e| panic!("{e}")))
            }
        );
        assert!(matches!(
            parse(b"PROXY TCP6 2001:db8::9 ::1 1 2\r\n"),
            Header::Complete {
                source: Some(_),
                ..
            }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Header::Complete {
                len: 15,
                source: None
            }
        );
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2"),
            Header::Incomplete(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 ::1 ::1 1 2\r\n"),
            Header::Invalid(_)
        ));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Header::Invalid(_)));
        assert!(matches!(parse(&[b'P'; 200]), Header::Invalid(_)));
    }

    #[test]
    fn v2_headers() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0x15, 0xb3, 0, 80,
        ]);
        h.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&h),
            Header::Complete {
                len: 28,
                source: Some("192.0.2.7:5555".parse().unwrap_or_else(|e| panic!("{e}")))
            }
        );
        assert!(matches!(parse(&h[..20]), Header::Incomplete(28)));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Header::Complete {
                len: 16,
                source: None
            }
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&bad), Header::Invalid(_)));
    }
}
