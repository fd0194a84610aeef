//! Edge checks of a request head before it is routed: request-line, header-line, header-block
//! and header-count limits, Host rules, framing sanity and the declared body size. Each failure
//! is a `Reply` with its stable code.

use super::reply::{Code, Reply};
use crate::state::Limits;
use pingora::http::RequestHeader;

/// What the edge checks learned about the request.
#[derive(Debug, Default)]
pub struct Head {
    pub content_length: Option<u64>,
    pub chunked: bool,
}

impl Head {
    /// Whether body bytes may follow the head.
    pub fn may_have_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

fn too_large(detail: String) -> Reply {
    Reply::new(Code::HeadersTooLarge, detail)
}

/// The longest method token accepted (the longest registered method is 17 bytes).
const MAX_METHOD: usize = 32;

/// Whether a Host value is `host[:port]`: a bracketed IPv6 literal, or a name of 1-63 byte
/// labels (letters, digits, `-`, `_`; one trailing dot allowed) up to 253 bytes; a port of
/// at most 65535.
pub fn valid_host(h: &[u8]) -> bool {
    let (name, port) = match h.first() {
        Some(b'[') => {
            let Some(end) = h.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = std::str::from_utf8(&h[1..end]).ok();
            if literal
                .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
                .is_none()
            {
                return false;
            }
            match &h[end + 1..] {
                [] => (None, None),
                [b':', port @ ..] => (None, Some(port)),
                _ => return false,
            }
        }
        _ => match h.iter().position(|&b| b == b':') {
            Some(i) => (Some(&h[..i]), Some(&h[i + 1..])),
            None => (Some(h), None),
        },
    };
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_none_or(|n| n <= 65535)
    });
    let name_ok = name.is_none_or(|n| {
        let n = n.strip_suffix(b".").unwrap_or(n);
        !n.is_empty()
            && n.len() <= 253
            && n.split(|&b| b == b'.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    });
    port_ok && name_ok
}

/// Checks sizes, Host and framing headers.
pub fn check_head(req: &RequestHeader, limits: &Limits) -> Result<Head, Reply> {
    if req.method.as_str().len() > MAX_METHOD {
        return Err(Reply::new(
            Code::BadRequest,
            format!("the method is longer than {MAX_METHOD} bytes"),
        ));
    }
    let line = req.method.as_str().len() + req.raw_path().len() + 11;
    if line > limits.request_line {
        return Err(Reply::new(
            Code::UriTooLong,
            format!(
                "the request line is longer than {} bytes",
                limits.request_line
            ),
        ));
    }
    let headers = &req.headers;
    if headers.len() > limits.header_count {
        return Err(too_large(format!(
            "more than {} header fields",
            limits.header_count
        )));
    }
    let mut total = line;
    for (name, value) in headers {
        let len = name.as_str().len() + value.len() + 4;
        if len > limits.header_line {
            return Err(too_large(format!(
                "a header field is longer than {} bytes",
                limits.header_line
            )));
        }
        total += len;
    }
    if total > limits.header_block {
        return Err(too_large(format!(
            "the request head is larger than {} bytes",
            limits.header_block
        )));
    }

    let hosts = headers.get_all(http::header::HOST);
    let mut host_iter = hosts.iter();
    let host = host_iter.next();
    if host_iter.next().is_some() {
        return Err(Reply::new(Code::BadRequest, "more than one Host header"));
    }
    if host.is_none() && req.version == http::Version::HTTP_11 {
        return Err(Reply::new(
            Code::BadRequest,
            "HTTP/1.1 requests need a Host header",
        ));
    }
    // Without a Host header (HTTP/2, HTTP/1.0) the authority of the target is the host.
    let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
    if let Some(h) = host.map(|h| h.as_bytes()).or(authority) {
        if !valid_host(h) {
            return Err(Reply::new(
                Code::BadRequest,
                "the Host header is not a valid host",
            ));
        }
    }

    let mut head = Head::default();
    let te = headers.get_all(http::header::TRANSFER_ENCODING);
    let te_count = te.iter().count();
    if te_count > 0 {
        let single_chunked = te_count == 1
            && te
                .iter()
                .next()
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        if !single_chunked || req.version == http::Version::HTTP_10 {
            return Err(Reply::new(
                Code::BadRequest,
                "unsupported Transfer-Encoding",
            ));
        }
        head.chunked = true;
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if head.chunked {
            return Err(Reply::new(
                Code::BadRequest,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let parse = |v: &http::HeaderValue| -> Option<u64> {
            let b = v.as_bytes();
            if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(b).ok()?.parse().ok()
        };
        let n =
            parse(first).ok_or_else(|| Reply::new(Code::BadRequest, "invalid Content-Length"))?;
        // Even identical copies are refused, as nginx and Envoy do: a peer that merged them
        // differently would frame the body differently.
        if lengths.next().is_some() {
            return Err(Reply::new(
                Code::BadRequest,
                "more than one Content-Length header",
            ));
        }
        head.content_length = Some(n);
    }
    Ok(head)
}

/// Why an upstream response's framing is ambiguous, if it is: both Content-Length and
/// Transfer-Encoding, more than one Transfer-Encoding, or one that is not just `chunked`
/// (a response framed by the connection's close is fine, but then without either header).
pub fn ambiguous_response_framing(resp: &pingora::http::ResponseHeader) -> Option<&'static str> {
    let mut te = resp.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    let first = te.next()?;
    if te.next().is_some() {
        return Some("the upstream sent more than one Transfer-Encoding");
    }
    if !first
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"chunked")
    {
        return Some("the upstream sent a Transfer-Encoding other than chunked");
    }
    if resp.headers.contains_key(http::header::CONTENT_LENGTH) {
        return Some("the upstream sent both Content-Length and Transfer-Encoding");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            request_line: 100,
            header_line: 64,
            header_block: 200,
            header_count: 4,
            keepalive_idle: std::time::Duration::from_secs(60),
            body_min_rate: 1000,
            body_rate_after: std::time::Duration::from_secs(20),
            send_min_rate: 1000,
            upstream_header_block: 64 << 10,
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r =
            RequestHeader::build("GET", path.as_bytes(), None).unwrap_or_else(|_| unreachable!());
        for (n, v) in headers {
            r.append_header(n.to_string(), *v)
                .unwrap_or_else(|_| unreachable!());
        }
        r
    }

    fn code(r: Result<Head, Reply>) -> Option<&'static str> {
        r.err().map(|e| e.code.as_str())
    }

    #[test]
    fn limits_and_framing() {
        let l = limits();
        assert_eq!(code(check_head(&req("/a", &[("host", "x")]), &l)), None);
        assert_eq!(
            code(check_head(
                &req(&format!("/{}", "a".repeat(100)), &[("host", "x")]),
                &l
            )),
            Some("uri_too_long")
        );
        let many = [
            ("host", "x"),
            ("a", "1"),
            ("b", "1"),
            ("c", "1"),
            ("d", "1"),
        ];
        assert_eq!(
            code(check_head(&req("/", &many), &l)),
            Some("headers_too_large")
        );
        let long = "v".repeat(60);
        assert_eq!(
            code(check_head(&req("/", &[("host", "x"), ("a", &long)]), &l)),
            Some("headers_too_large")
        );
        let mid = "v".repeat(58);
        assert_eq!(
            code(check_head(
                &req("/", &[("host", "x"), ("a", &mid), ("b", &mid), ("c", &mid)]),
                &l
            )),
            Some("headers_too_large")
        );
        assert_eq!(code(check_head(&req("/", &[]), &l)), Some("bad_request"));
        assert_eq!(
            code(check_head(&req("/", &[("host", "x"), ("host", "y")]), &l)),
            Some("bad_request")
        );
        assert_eq!(
            code(check_head(&req("/", &[("host", "a b")]), &l)),
            Some("bad_request")
        );
        for cl in ["+5", "0x10", "", "-1", "99999999999999999999"] {
            assert_eq!(
                code(check_head(
                    &req("/", &[("host", "x"), ("content-length", cl)]),
                    &l
                )),
                Some("bad_request"),
                "{cl}"
            );
        }
        assert_eq!(
            code(check_head(
                &req(
                    "/",
                    &[
                        ("host", "x"),
                        ("content-length", "5"),
                        ("content-length", "6")
                    ]
                ),
                &l
            )),
            Some("bad_request")
        );
        assert_eq!(
            code(check_head(
                &req(
                    "/",
                    &[
                        ("host", "x"),
                        ("content-length", "5"),
                        ("transfer-encoding", "chunked")
                    ]
                ),
                &l
            )),
            Some("bad_request")
        );
        assert_eq!(
            code(check_head(
                &req(
                    "/",
                    &[("host", "x"), ("transfer-encoding", "gzip, chunked")]
                ),
                &l
            )),
            Some("bad_request")
        );
        let twice = check_head(
            &req(
                "/",
                &[
                    ("host", "x"),
                    ("content-length", "5"),
                    ("content-length", "5"),
                ],
            ),
            &l,
        );
        assert_eq!(code(twice), Some("bad_request"));
        assert_eq!(
            code(check_head(
                &req("/", &[("host", "x"), ("content-length", "5")]),
                &l
            )),
            None
        );
    }

    #[test]
    fn ambiguous_upstream_framing_is_found() {
        let resp = |headers: &[(&str, &str)]| {
            let mut r =
                pingora::http::ResponseHeader::build(200, None).unwrap_or_else(|_| unreachable!());
            for (n, v) in headers {
                r.append_header(n.to_string(), *v)
                    .unwrap_or_else(|_| unreachable!());
            }
            r
        };
        let found = |h: &[(&str, &str)]| ambiguous_response_framing(&resp(h)).is_some();
        assert!(!found(&[("content-length", "5")]));
        assert!(!found(&[("transfer-encoding", "Chunked")]));
        assert!(!found(&[]));
        assert!(found(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(found(&[("transfer-encoding", "chunked, chunked")]));
        assert!(found(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(found(&[("transfer-encoding", "gzip")]));
        assert!(found(&[("transfer-encoding", "gzip, chunked")]));
    }

    #[test]
    fn hosts_must_be_host_and_port() {
        for ok in [
            "a.example",
            "A.Example:80",
            "a.example.",
            "a.example.:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:443",
            "my_host",
            "x:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "..", "a:1:2", "[::1", "a:99999", "a:-1", "", ".", "a..b", "[::1]x", "[zz]", ":80",
            "a b", "a/b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
        let long = format!("{}.x", "a".repeat(64));
        assert!(!valid_host(long.as_bytes()));
    }
}
