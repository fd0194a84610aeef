//! Header helpers shared by the proxy, the cache and the admin listener: `X-Request-Id` (kept
//! when well-formed, else generated), W3C `traceparent` (continued with a new parent id, or
//! started), the names the gateway owns (a client's copy never reaches an upstream), the
//! identity and client-address headers that other gateways and CDNs set (`[server]
//! strip_request_headers`), and compiled name lists with `prefix-*` entries.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

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

/// A request id, as sent (`X-Request-Id` upstream and to the client) and logged: 1 to 128
/// characters of `[A-Za-z0-9._:-]`, so it is both a header value and text. Made once per
/// request in its own small buffer (a client's id is copied out of its request head); clones
/// share it, so putting it on the upstream request, the answer and the record allocates
/// nothing more.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id as a header value.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }

    /// A fixed id (the offline policy runner's).
    pub fn from_static(id: &'static str) -> Self {
        RequestId(HeaderValue::from_static(id))
    }

    pub fn as_str(&self) -> &str {
        // Only ids of the characters above are made.
        self.0.to_str().unwrap_or_default()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A header value of bytes the caller checked to be visible ASCII, in one allocation that
/// clones share.
fn shared_value<const N: usize>(bytes: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_owner(bytes))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The client's request id if acceptable, else a new random one.
pub fn request_id(client: Option<&HeaderValue>) -> RequestId {
    if let Some(id) = client {
        let b = id.as_bytes();
        if !b.is_empty()
            && b.len() <= MAX_REQUEST_ID
            && b.iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            // A copy: the client's value shares the buffer of its whole request head, which the
            // analytics record would otherwise keep alive while it waits in the channel.
            if let Ok(own) = HeaderValue::from_bytes(b) {
                return RequestId(own);
            }
        }
    }
    let mut id = [0u8; 32];
    put_hex(&mut id, rand::random::<u128>());
    RequestId(shared_value(id))
}

/// Writes the low `out.len()` hex digits of `n` into `out`, lower case, zero-padded (no `fmt`
/// machinery: this runs for every request).
fn put_hex(out: &mut [u8], n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = out.len();
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((n >> ((digits - 1 - i) * 4)) & 0xf) as usize];
    }
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The fields of a W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    /// Only the flags this gateway knows (sampled, and Level 2's random trace id): reserved bits
    /// are passed on as zero, as Trace Context asks.
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn hex_value(s: &[u8]) -> u128 {
    s.iter().fold(0u128, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            _ => b - b'a' + 10,
        };
        (n << 4) | u128::from(d)
    })
}

/// A client's `traceparent` if it is valid (version 00, or a later version's first four
/// fields; ids not all zero; lower-case hex).
pub fn parse_traceparent(tp: &[u8]) -> Option<TraceParent> {
    let mut parts = tp.split(|&b| b == b'-');
    let (ver, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
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
        && (ver != b"00" || parts.next().is_none());
    valid.then(|| TraceParent {
        trace_id: hex_value(trace),
        parent_id: hex_value(parent) as u64,
        flags: (hex_value(flags) as u8) & 0x3,
    })
}

/// A `traceparent` value (version 00).
pub fn format_traceparent(trace_id: u128, span_id: u64, flags: u8) -> HeaderValue {
    // version(2) - trace-id(32) - parent-id(16) - flags(2)
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut out[3..35], trace_id);
    put_hex(&mut out[36..52], u128::from(span_id));
    put_hex(&mut out[53..55], u128::from(flags));
    shared_value(out)
}

/// A new random span id (never zero).
pub fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// A new random trace id (never zero).
pub fn new_trace_id() -> u128 {
    rand::random::<u128>().max(1)
}

/// The `traceparent` to send upstream: the client's trace continued with a fresh parent id, or a
/// new (sampled) trace when the client sent none or an invalid one.
pub fn traceparent(client: Option<&[u8]>) -> HeaderValue {
    match client.and_then(parse_traceparent) {
        Some(c) => format_traceparent(c.trace_id, new_span_id(), c.flags),
        None => format_traceparent(new_trace_id(), new_span_id(), 1),
    }
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
        let id = |b: &[u8]| request_id(Some(&HeaderValue::from_bytes(b).expect("value")));
        assert_eq!(&*id(b"abc-123_x.y:z"), "abc-123_x.y:z");
        for bad in [&b""[..], b"a b", b"a\tb", &[b'a'; 129][..], "é".as_bytes()] {
            let made = id(bad);
            assert_eq!(made.len(), 32, "{bad:?}");
            assert!(is_lower_hex(made.as_bytes()));
            assert_eq!(made.header().as_bytes(), made.as_bytes());
        }
        assert_ne!(request_id(None).as_str(), request_id(None).as_str());
        // The client's id is copied out of the request head it came in.
        let head = bytes::Bytes::from_static(b"abc-123");
        let value = HeaderValue::from_maybe_shared(head.clone()).expect("value");
        let kept = request_id(Some(&value));
        assert_ne!(kept.as_bytes().as_ptr(), head.as_ptr());
        assert_eq!(kept.as_str(), "abc-123");
    }

    #[test]
    fn traceparent_fields_round_trip() {
        let tp = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert!(tp.sampled());
        let out = format_traceparent(tp.trace_id, 0xab, 0);
        assert_eq!(
            out.to_str().expect("ascii"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000ab-00"
        );
    }

    #[test]
    fn traceparent_continues_valid_traces_only() {
        let client = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = traceparent(Some(client));
        let out = out.to_str().expect("ascii");
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert!(!out.contains("00f067aa0ba902b7"), "the parent id is ours");
        assert!(is_lower_hex(&out.as_bytes()[36..52]) && out[36..52] != *"0000000000000000");
        let sampled_off = traceparent(Some(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra",
        ));
        assert!(
            sampled_off.to_str().expect("ascii").ends_with("-00"),
            "later versions may add fields"
        );
        for (flags, sent) in [
            ("01", "01"),
            ("03", "03"),
            ("ff", "03"),
            ("09", "01"),
            ("f0", "00"),
        ] {
            let client = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            let out = traceparent(Some(client.as_bytes()));
            let out = out.to_str().expect("ascii");
            assert!(
                out.ends_with(&format!("-{sent}")),
                "{flags}: reserved bits are zeroed"
            );
        }
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            let out = traceparent(Some(bad));
            let out = out.to_str().expect("ascii");
            assert!(!out.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{bad:?}");
            assert_eq!(out.len(), 55);
            assert!(out.starts_with("00-") && out.ends_with("-01"));
            assert!(out[3..35].bytes().any(|b| b != b'0'));
        }
    }
}
