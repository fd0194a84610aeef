//! The request-target rules. The gateway decides on the raw, still-encoded path and forwards
//! exactly those bytes (less the documented base-path strip), so anything that a server behind
//! us could read as a different path is rejected here instead of being "normalised":
//!
//! - only origin-form targets (`/path?query`); `*`, absolute and authority forms are refused;
//! - no dot segments (`.`, `..`, also as `%2e`), no empty segments (`//`), no `;` parameters;
//! - no control bytes, spaces, bytes >= 0x80, backslashes or fragments in the raw target;
//! - percent escapes must be complete (`%HH`) and must not encode `/`, `\`, `%`, `.`, `;`, a
//!   control byte, or any character that may stand unencoded in a route (letters, digits,
//!   `-_~:`): such an escape could make one path look like another;
//! - escaped bytes >= 0x80 in the path must form valid UTF-8 (no overlong `%C0%AE` for `.`) and
//!   must not be the fullwidth look-alikes of `/`, `\` or `.` that some servers fold.
//!
//! Route templates in the config may only use characters that a request must send unencoded,
//! so a static route segment can only ever equal the raw request segment byte for byte.

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    NotOriginForm,
    BadByte,
    BadEscape,
    ForbiddenEscape,
    DotSegment,
    EmptySegment,
    Parameter,
}

impl TargetError {
    /// A short explanation safe to show to clients.
    pub fn detail(self) -> &'static str {
        match self {
            TargetError::NotOriginForm => "the request target must be a path starting with '/'",
            TargetError::BadByte => "the request target contains a byte that must be percent-encoded",
            TargetError::BadEscape => "the request path contains an incomplete percent escape",
            TargetError::ForbiddenEscape => {
                "the request path encodes a character that must not be encoded ('/', '\\', '%', '.', control, or unreserved)"
            }
            TargetError::DotSegment => "the request path contains a '.' or '..' segment",
            TargetError::EmptySegment => "the request path contains an empty segment ('//')",
            TargetError::Parameter => "the request path contains a ';' parameter",
        }
    }
}

/// A request target that passed every rule: the path and the optional query (without `?`).
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
}

/// Characters allowed unencoded in a static route segment of the config.
pub fn is_route_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.' | b':')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A byte that may not be sent in percent-encoded form.
fn forbidden_decoded(b: u8) -> bool {
    b < 0x20 || b == 0x7f || matches!(b, b'/' | b'\\' | b'%' | b';') || is_route_char(b)
}

/// A run of escaped bytes >= 0x80 in the path: valid UTF-8 without look-alikes of separators.
fn check_high_run(bytes: &[u8]) -> Result<(), TargetError> {
    let text = std::str::from_utf8(bytes).map_err(|_| TargetError::ForbiddenEscape)?;
    if text.chars().any(|c| {
        matches!(
            c,
            '\u{FF0E}' | '\u{FF0F}' | '\u{FF3C}' | '\u{2215}' | '\u{2216}'
        )
    }) {
        return Err(TargetError::ForbiddenEscape);
    }
    Ok(())
}

/// Checks a raw request target (as received) against the rules above.
pub fn check_target(raw: &[u8]) -> Result<Target<'_>, TargetError> {
    if raw.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    // Bytes that are never valid unencoded anywhere in the target.
    if raw
        .iter()
        .any(|&b| b <= 0x20 || b >= 0x7f || matches!(b, b'\\' | b'#'))
    {
        return Err(TargetError::BadByte);
    }
    let (path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    if let Some(q) = query {
        check_escapes(q, false)?;
    }
    check_escapes(path, true)?;
    if path.contains(&b';') {
        return Err(TargetError::Parameter);
    }
    // Every segment after the leading '/': no empty ones (except a single trailing slash) and no
    // dot segments. Encoded dots were refused above, so a raw compare is enough.
    let segments = &path[1..];
    if !segments.is_empty() {
        let mut parts = segments.split(|&b| b == b'/').peekable();
        while let Some(seg) = parts.next() {
            let last = parts.peek().is_none();
            if seg.is_empty() && !last {
                return Err(TargetError::EmptySegment);
            }
            if seg == b"." || seg == b".." {
                return Err(TargetError::DotSegment);
            }
        }
    }
    Ok(Target { path, query })
}

fn check_escapes(s: &[u8], strict: bool) -> Result<(), TargetError> {
    // Escaped bytes >= 0x80 of the current run (paths only); allocated only for such paths.
    let mut high: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let decoded = h * 16 + l;
            if strict && forbidden_decoded(decoded) || decoded < 0x20 || decoded == 0x7f {
                return Err(TargetError::ForbiddenEscape);
            }
            i += 3;
            if strict && decoded >= 0x80 {
                high.push(decoded);
                continue;
            }
        } else {
            i += 1;
        }
        if !high.is_empty() {
            check_high_run(&high)?;
            high.clear();
        }
    }
    if !high.is_empty() {
        check_high_run(&high)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, Option<String>) {
        let t = check_target(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        (
            String::from_utf8_lossy(t.path).into(),
            t.query.map(|q| String::from_utf8_lossy(q).into()),
        )
    }

    #[test]
    fn accepts_ordinary_targets() {
        assert_eq!(ok("/"), ("/".into(), None));
        assert_eq!(ok("/a/b/"), ("/a/b/".into(), None));
        assert_eq!(
            ok("/items/42?x=1&y=%2F"),
            ("/items/42".into(), Some("x=1&y=%2F".into()))
        );
        assert_eq!(ok("/caf%C3%A9/a%20b").0, "/caf%C3%A9/a%20b");
        assert_eq!(ok("/%E6%97%A5%E6%9C%AC/x").0, "/%E6%97%A5%E6%9C%AC/x");
        assert_eq!(ok("/a?bin=%FF%FE").1, Some("bin=%FF%FE".into()));
        assert_eq!(ok("/v1/things:batchGet").0, "/v1/things:batchGet");
        assert_eq!(ok("/file.txt").0, "/file.txt");
    }

    #[test]
    fn refuses_every_ambiguous_target() {
        use TargetError::*;
        let cases: &[(&str, TargetError)] = &[
            ("*", NotOriginForm),
            ("http://evil/x", NotOriginForm),
            ("example.com:443", NotOriginForm),
            ("", NotOriginForm),
            ("/a/../admin", DotSegment),
            ("/a/./b", DotSegment),
            ("/..", DotSegment),
            ("/a/%2e%2e/admin", ForbiddenEscape),
            ("/a/%2E/b", ForbiddenEscape),
            ("/a%2Fb", ForbiddenEscape),
            ("/a%2fb", ForbiddenEscape),
            ("/a%5Cb", ForbiddenEscape),
            ("/a%252e%252e/", ForbiddenEscape),
            ("/%61dmin", ForbiddenEscape),
            ("/a%00b", ForbiddenEscape),
            ("/a?x=%00", ForbiddenEscape),
            ("/a%", BadEscape),
            ("/a%4", BadEscape),
            ("/a%zz", BadEscape),
            ("/a\\b", BadByte),
            ("/a\0b", BadByte),
            ("/a\rb", BadByte),
            ("/a b", BadByte),
            ("/a#frag", BadByte),
            ("/caf\u{e9}", BadByte),
            ("//a", EmptySegment),
            ("/a//b", EmptySegment),
            ("/admin;x=1/a", Parameter),
            ("/admin%3Bx/a", ForbiddenEscape),
            ("/a/%C0%AE%C0%AE/admin", ForbiddenEscape),
            ("/a%C0%AFb", ForbiddenEscape),
            ("/a%EF%BC%8Fb", ForbiddenEscape),
            ("/a/%EF%BC%8E%EF%BC%8E/b", ForbiddenEscape),
            ("/a%C3", ForbiddenEscape),
            ("/a%C3/b", ForbiddenEscape),
        ];
        for (raw, want) in cases {
            assert_eq!(check_target(raw.as_bytes()), Err(*want), "{raw:?}");
        }
    }
}
