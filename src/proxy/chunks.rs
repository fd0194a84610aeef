//! A strict check of the chunked framing of a request body as its bytes arrive (RFC 9112
//! section 7.1), stricter than Pingora's parser, which accepts a chunk size followed by
//! spaces and a bare LF inside a chunk extension and re-frames the body for the upstream. Like
//! nginx and Envoy, the gateway refuses them: a peer that reads such framing differently could
//! take body bytes for a request. Chunk data is skipped, not looked at.

/// Why a body's framing was refused.
pub type Refusal = &'static str;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (how many so far).
    Size(u8),
    /// Whitespace after the size: only `;` (an extension) may follow.
    SizeSpace,
    /// Inside a chunk extension, up to its CR.
    Ext,
    /// The CR that ends a size line was seen.
    SizeCr,
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    Trailer,
    TrailerCr,
    FinalLf,
    Done,
}

/// The framing state of one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkCheck {
    state: State,
    size: u64,
}

impl Default for ChunkCheck {
    fn default() -> Self {
        ChunkCheck {
            state: State::Size(0),
            size: 0,
        }
    }
}

impl ChunkCheck {
    /// Whether the last chunk and the trailers have been read (later bytes are not the body).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Checks the next bytes of the body; how many of them belong to it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, Refusal> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                i += take;
                let left = left - take as u64;
                self.state = match left {
                    0 => State::DataCr,
                    n => State::Data(n),
                };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<(), Refusal> {
        use State::*;
        self.state = match (self.state, b) {
            (Size(n), _) if b.is_ascii_hexdigit() => {
                if n >= 16 {
                    return Err("a chunk size that is too long");
                }
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                self.size = self.size << 4 | digit;
                Size(n + 1)
            }
            (Size(n), b' ' | b'\t') if n > 0 => SizeSpace,
            (Size(n), b';') if n > 0 => Ext,
            (Size(n), b'\r') if n > 0 => SizeCr,
            (SizeSpace, b';') => Ext,
            (SizeSpace, b' ' | b'\t') => SizeSpace,
            (SizeSpace, _) => return Err("whitespace after a chunk size"),
            (Size(_), _) => return Err("an invalid chunk size"),
            (Ext, b'\r') => SizeCr,
            (Ext, b'\n') => return Err("a bare LF in a chunk extension"),
            (Ext, _) if b.is_ascii_control() && b != b'\t' => {
                return Err("a control byte in a chunk extension")
            }
            (Ext, _) => Ext,
            (SizeCr, b'\n') if self.size == 0 => TrailerStart,
            (SizeCr, b'\n') => Data(std::mem::take(&mut self.size)),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size(0),
            (TrailerStart, b'\r') => FinalLf,
            (Trailer, b'\r') => TrailerCr,
            (TrailerStart | Trailer, b'\n') => return Err("a bare LF in a trailer"),
            (TrailerStart | Trailer, _) => Trailer,
            (TrailerCr, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (SizeCr | DataCr | DataLf | TrailerCr | FinalLf, _) => {
                return Err("chunk framing without its CRLF")
            }
            (Data(_) | Done, _) => self.state,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8]) -> Result<(usize, bool), Refusal> {
        // Every way reads may split the body gives the same answer.
        let mut whole = ChunkCheck::default();
        let expected = whole.feed(body).map(|n| (n, whole.done()));
        for split in 1..body.len() {
            let mut c = ChunkCheck::default();
            let got = c
                .feed(&body[..split])
                .and_then(|a| c.feed(&body[split..]).map(|b| (a + b, c.done())));
            assert_eq!(
                got,
                expected,
                "split at {split}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
        expected
    }

    #[test]
    fn good_bodies_pass_and_their_end_is_found() {
        let body = b"5\r\nhello\r\n1a;name=\"v a\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n";
        let end = body.len() - b"GET / HTTP/1.1\r\n".len();
        assert_eq!(check(body), Ok((end, true)));
        assert_eq!(
            check(b"3 ;ext\r\nabc\r\n0\r\n\r\n"),
            Ok((18, true)),
            "BWS before ';'"
        );
        assert_eq!(check(b"A\r\n0123456789\r\n"), Ok((15, false)));
    }

    #[test]
    fn sloppy_framing_is_refused() {
        for (body, why) in [
            (
                &b"2 \r\nab\r\n0\r\n\r\n"[..],
                "whitespace after a chunk size",
            ),
            (
                b"2;a\nb\r\nab\r\n0\r\n\r\n",
                "a bare LF in a chunk extension",
            ),
            (b"2\nab\r\n0\r\n\r\n", "an invalid chunk size"),
            (b"zz\r\n", "an invalid chunk size"),
            (b"\r\n", "an invalid chunk size"),
            (b"ffffffffffffffff1\r\n", "a chunk size that is too long"),
            (b"2\r\nabc\r\n", "chunk framing without its CRLF"),
            (b"0\r\nX-T: 1\nY: 2\r\n\r\n", "a bare LF in a trailer"),
            (b"2;a\x00\r\nab\r\n", "a control byte in a chunk extension"),
        ] {
            assert_eq!(
                check(body).err(),
                Some(why),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
