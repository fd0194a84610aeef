//! Addresses and fractions written as text without the `fmt` machinery, for the paths that run
//! for every request (`X-Forwarded-For`, the access-log line). IPv6 is rare there and goes
//! through `Display`. Also `percent_decode`, for the config's and specs' URI texts.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

/// Writes `v4` in dotted decimal into `out`; returns the length (7 to 15).
fn ipv4(v4: Ipv4Addr, out: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            out[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            out[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

/// Appends `.` and the last three digits of `n`: the fraction of a millisecond count written as
/// seconds, or of a microsecond count written as milliseconds.
pub fn push_thousandths(out: &mut Vec<u8>, n: u64) {
    let t = n % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (t / 100) as u8,
        b'0' + (t / 10 % 10) as u8,
        b'0' + (t % 10) as u8,
    ]);
}

/// Appends `ip` as `Display` writes it; IPv6 in brackets when `bracket_v6` (before a port).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr, bracket_v6: bool) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let n = ipv4(v4, &mut buf);
            out.extend_from_slice(&buf[..n]);
        }
        // Writing to a Vec cannot fail.
        IpAddr::V6(v6) if bracket_v6 => {
            let _ = write!(out, "[{v6}]");
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Decodes the `%XX` escapes of a URI text (others are kept as they are; invalid UTF-8 is
/// replaced).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousandths_keep_their_leading_zeros() {
        for (n, text) in [
            (0, ".000"),
            (7, ".007"),
            (42, ".042"),
            (999, ".999"),
            (12_345, ".345"),
        ] {
            let mut out = Vec::new();
            push_thousandths(&mut out, n);
            assert_eq!(out, text.as_bytes(), "{n}");
        }
    }

    #[test]
    fn addresses_are_written_like_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            let mut out = Vec::new();
            push_ip(&mut out, ip, false);
            assert_eq!(String::from_utf8_lossy(&out), ip.to_string());
        }
        let mut out = Vec::new();
        push_ip(&mut out, "::1".parse().expect("ip"), true);
        assert_eq!(out, b"[::1]");
    }
}
