//! Header helpers shared by the proxy, the cache and the admin listener: `X-Request-Id` (kept
//! when well-formed, else generated), W3C `traceparent` (continued with a new parent id, or
//! started), the names the gateway owns (a client's copy never reaches an upstream), the
//! identity and client-address headers that other gateways and CDNs set (`[server]
//! strip_request_headers`), and compiled name lists with `prefix-*` entries.

use http::HeaderName;

/// The host a request names: its Host header, or the authority of an absolute-form target
/// (HTTP/2 carries it there). As sent, port included.
pub fn request_host(req: &pingora::http::RequestHeader) -> Option<&[u8]> {
    req.headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
}

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

/// Request headers a client may not set for the upstream: the gateway sets them itself.
const GATEWAY_OWNED: [&str; 8] = [
    "x-consumer-id",
    "x-consumer-groups",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// Whether a client's copy of the header named `lowercase` is removed before the upstream: a
/// name the gateway sets itself, or a name with an underscore (some servers read them as
/// dashes, so a client could smuggle a copy of a trusted header).
pub fn is_gateway_owned(lowercase: &str) -> bool {
    lowercase.contains('_') || GATEWAY_OWNED.contains(&lowercase)
}

/// The default of `[server] strip_request_headers`: identity, limit and client-address headers
/// that other gateways (Kong, Tyk, APISIX, cloud load balancers) and CDNs set for their
/// upstreams. An upstream migrated from one of them may trust them, so a client's copy is
/// removed on every API.
pub const OTHER_GATEWAYS: &[&str] = &[
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-consumer-groups-*",
    "x-credential-identifier",
    "x-credential-username",
    "x-anonymous-consumer",
    "x-anonymous-groups",
    "x-authenticated-userid",
    "x-authenticated-scope",
    "x-authenticated-groups",
    "x-userinfo",
    "x-ratelimit-*",
    "ratelimit",
    "ratelimit-policy",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-envoy-external-address",
    "x-gateway-*",
    "x-tyk-*",
    "x-apisix-*",
    "x-kong-*",
];

/// A compiled list of header names: exact names and `prefix-*` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameList {
    exact: Vec<HeaderName>,
    prefixes: Vec<String>,
    /// The first bytes of every entry (a bit per byte value): most request headers are ruled
    /// out by their first byte alone, without comparing names.
    first: [u64; 4],
}

impl NameList {
    /// Compiles `names` (any case; `prefix*` for a prefix). `Err` names the first entry that
    /// is not a header name.
    pub fn compile(names: &[String]) -> Result<NameList, String> {
        let mut list = NameList::default();
        for n in names {
            let lower = n.trim().to_ascii_lowercase();
            let (bare, prefix) = match lower.strip_suffix('*') {
                Some(p) => (p, true),
                None => (lower.as_str(), false),
            };
            let name = HeaderName::from_bytes(bare.as_bytes())
                .map_err(|_| format!("{n:?} is not a header name (or name prefix ending in *)"))?;
            match name.as_str().as_bytes().first() {
                Some(&b) => list.first[usize::from(b / 64)] |= 1 << (b % 64),
                // An empty prefix ("*") matches every name.
                None => list.first = [u64::MAX; 4],
            }
            match prefix {
                true => list.prefixes.push(name.as_str().to_string()),
                false => list.exact.push(name),
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether `name` (a lowercase header name) is on the list.
    pub fn contains(&self, name: &str) -> bool {
        let Some(&b) = name.as_bytes().first() else {
            return false;
        };
        if self.first[usize::from(b / 64)] & (1 << (b % 64)) == 0 {
            return false;
        }
        self.exact.iter().any(|e| e.as_str() == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// The exact names (for a cache key).
    pub fn names(&self) -> &[HeaderName] {
        &self.exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_match_names_and_prefixes_and_refuse_bad_entries() {
        let l =
            NameList::compile(&["X-Client-IP".into(), "x-ratelimit-*".into()]).unwrap_or_default();
        assert!(l.contains("x-client-ip"));
        assert!(l.contains("x-ratelimit-remaining"));
        assert!(!l.contains("x-ratelimit"));
        assert!(!l.contains("x-client-ip2"));
        assert!(NameList::compile(&["bad name".into()]).is_err());
        let defaults: Vec<String> = OTHER_GATEWAYS.iter().map(|s| s.to_string()).collect();
        assert!(NameList::compile(&defaults).is_ok());
        assert!(is_gateway_owned("x_consumer_id") && is_gateway_owned("x-real-ip"));
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
