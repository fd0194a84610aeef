//! Deadlines for what a client must send before Pingora's own per-read timeouts apply, which
//! Pingora does not have: they apply per read, so a client sending one byte every few seconds,
//! or nothing at all, could hold a connection for a long time.
//!
//! `HeadDeadline` is a transparent stream that watches the bytes going by (the connection's
//! app, `conn::EdgeApp`, puts every client connection behind it):
//! - a connection that sends nothing for `idle_before_request` is closed (no answer: nothing
//!   was asked);
//! - the first byte of a request head starts the head clock (`head_timeout`) and the blank line
//!   that ends the head stops it (blank lines before the head, which parsers skip, do not).
//!   `conn::RequestEnd` tells the stream when a request is finished and the connection is kept
//!   for another: the next bytes start a new head. If the clock runs out, the client gets 408
//!   and reads fail with `TimedOut`, which closes the connection;
//! - on HTTP/2 connections the head clock covers the 24-byte preface, and the frames the
//!   client sends are counted for the reset budget (`h2conn::FrameCounter`);
//! - the proxy's `request_filter` tells the stream that Pingora parsed a head (`head_parsed`), so
//!   that the body of a request whose head came pipelined with the previous request is never
//!   taken for a head;
//! - upgraded (101) connections end no request, so their bytes are never taken for a head; the
//!   wait between keep-alive requests is left alone too (the keep-alive idle limit's job).

use super::chunks::{ChunkCheck, Refusal};
use super::h2conn::{FrameCounter, ResetBudget};
use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `[server.limits] idle_before_request` and `head_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub head: Duration,
}

/// A stream that fails reads once a client is silent or slow past the deadlines.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    /// The next byte read starts a request head.
    expecting_head: bool,
    /// Requests ended on this connection (counted from outside, by `conn::RequestEnd`), and how
    /// many of those ends the reader has taken into account.
    ended: AtomicU64,
    seen_ended: u64,
    /// Request heads Pingora parsed on this connection (counted from outside, by the proxy's
    /// `request_filter`). More heads parsed than requests ended means the next request's head came
    /// in a pipelined batch with the previous one: the bytes that follow are its body.
    parsed: AtomicU64,
    /// The head timer, allocated on the first head and re-armed for later ones. It is only
    /// polled (and so only registered with the runtime's timer) when a head takes more than
    /// one read, which keeps the common one-read head free of timer work.
    clock: Option<Pin<Box<Sleep>>>,
    /// A head is being received: `clock` is armed for it.
    running: bool,
    /// `clock` was polled for the current head, so it is registered with the timer and would
    /// wake the task when it fires even after the head ended.
    polled: bool,
    /// A byte other than CR or LF was seen in this head.
    in_head: bool,
    /// The current, unfinished line has bytes other than CR (it may span reads).
    line_content: bool,
    /// Nothing read yet on this connection: `clock` runs for `idle_before_request`.
    fresh: bool,
    /// The 408 answer was written.
    answered: bool,
    /// An HTTP/2 connection: its frames are counted instead of looking for heads.
    frames: Option<FrameCounter>,
    /// Bytes read while telling HTTP/2 apart, served again by the next reads.
    replay: Vec<u8>,
    /// `idle_before_request`, re-armed after a PROXY protocol header.
    idle: std::time::Duration,
    /// Heads whose end the byte scan found, and the bytes that followed the last one in its
    /// read (the start of its body, which Pingora keeps without reading again).
    scanned: AtomicU64,
    tail: Mutex<Vec<u8>>,
    has_tail: bool,
    /// The strict check of a chunked request body (`chunks`), armed by the proxy, and whether
    /// it refused the body (the proxy answers 400).
    chunks: Mutex<Option<ChunkCheck>>,
    bad_framing: AtomicBool,
}

impl HeadDeadline {
    /// Watches a new connection: the idle clock runs until its first byte.
    pub fn new(inner: Stream, timeouts: Timeouts) -> Self {
        HeadDeadline {
            inner,
            timeout: timeouts.head,
            idle: timeouts.idle,
            expecting_head: true,
            ended: AtomicU64::new(0),
            seen_ended: 0,
            parsed: AtomicU64::new(0),
            clock: Some(Box::pin(tokio::time::sleep(timeouts.idle))),
            running: true,
            polled: false,
            in_head: false,
            line_content: false,
            fresh: true,
            answered: false,
            frames: None,
            replay: Vec::new(),
            scanned: AtomicU64::new(0),
            tail: Mutex::new(Vec::new()),
            has_tail: false,
            chunks: Mutex::new(None),
            bad_framing: AtomicBool::new(false),
        }
    }

    /// Starts the strict check of the current request's chunked body (see `chunks`) with the
    /// bytes that came with its head; `Err` when they already frame it wrongly. A head that
    /// came pipelined (not seen ending by the scan) is left to Pingora's parser.
    pub fn check_chunked_body(&self) -> Result<(), Refusal> {
        if self.scanned.load(Ordering::Acquire) != self.parsed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut check = ChunkCheck::default();
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(why) = check.feed(&tail) {
            self.bad_framing.store(true, Ordering::Release);
            return Err(why);
        }
        if !check.done() {
            *self.chunks.lock().unwrap_or_else(|e| e.into_inner()) = Some(check);
        }
        Ok(())
    }

    /// Whether the strict check refused the current request's body.
    pub fn bad_framing(&self) -> bool {
        self.bad_framing.load(Ordering::Acquire)
    }

    /// Feeds body bytes to an armed chunk check; `Err` fails the read.
    fn check_body(&mut self, bytes: &[u8]) -> io::Result<()> {
        let slot = self.chunks.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(check) = slot.as_mut() else {
            return Ok(());
        };
        match check.feed(bytes) {
            Ok(_) if check.done() => *slot = None,
            Ok(_) => {}
            Err(why) => {
                *slot = None;
                self.bad_framing.store(true, Ordering::Release);
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
        }
        Ok(())
    }

    /// Keeps the bytes that followed a head's end in its read.
    fn keep_tail(&mut self, rest: &[u8]) {
        self.scanned.fetch_add(1, Ordering::AcqRel);
        if rest.is_empty() && !self.has_tail {
            return;
        }
        let tail = self.tail.get_mut().unwrap_or_else(|e| e.into_inner());
        tail.clear();
        tail.extend_from_slice(rest);
        self.has_tail = !rest.is_empty();
    }

    /// From now on the connection is HTTP/2: its frames are counted for `budget`, and the head
    /// clock stops once the preface is complete.
    pub fn count_h2_frames(&mut self, budget: Arc<ResetBudget>) {
        self.frames = Some(FrameCounter::new(budget));
    }

    /// Reads until the bytes so far either are the HTTP/2 preface or cannot be, under the idle
    /// and head deadlines; the bytes are kept and served again by the next reads. Whether
    /// they are the preface.
    pub async fn sniff_h2_preface(&mut self) -> io::Result<bool> {
        // Bytes already read after a PROXY protocol header come first.
        let mut got = std::mem::take(&mut self.replay);
        while got.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&got) {
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len() - got.len();
            let n = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut chunk[..want]);
                self.poll_timed(cx, &mut buf)
                    .map_ok(|()| buf.filled().len())
            })
            .await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        let h2 = got.starts_with(H2_PREFACE);
        self.replay = got;
        Ok(h2)
    }

    /// Reads the PROXY protocol header that starts the connection (`crate::peers`) under the
    /// idle and head deadlines; the bytes after it are served again by the next reads.
    pub async fn read_proxy_header(&mut self) -> io::Result<crate::peers::Header> {
        use crate::peers::Header;
        let mut got: Vec<u8> = Vec::with_capacity(128);
        loop {
            match crate::peers::parse(&got) {
                Header::Incomplete(_) => {
                    let mut chunk = [0u8; 256];
                    let n = std::future::poll_fn(|cx| {
                        let mut buf = ReadBuf::new(&mut chunk);
                        self.poll_timed(cx, &mut buf)
                            .map_ok(|()| buf.filled().len())
                    })
                    .await?;
                    if n == 0 {
                        return Ok(Header::Invalid(
                            "the connection closed before its PROXY protocol header",
                        ));
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
                Header::Complete { len, source } => {
                    self.replay = got.split_off(len);
                    // The request's own clocks start now: idle until its first byte.
                    if self.replay.is_empty() {
                        self.fresh = true;
                        let deadline = tokio::time::Instant::now() + self.idle;
                        if let Some(clock) = self.clock.as_mut() {
                            clock.as_mut().reset(deadline);
                        }
                        self.running = true;
                    }
                    return Ok(Header::Complete { len, source });
                }
                invalid => return Ok(invalid),
            }
        }
    }

    /// The connection's PROXY header came from `sender` and named `client`: from now on the
    /// connection's peer is that client (see `crate::peers::client_digest`).
    pub fn set_client(&mut self, sender: SocketAddr, client: Option<SocketAddr>) {
        let fd = self.inner.id();
        let digest = crate::peers::client_digest(
            fd,
            self.inner.get_socket_digest().as_deref(),
            sender,
            client,
        );
        self.inner.set_socket_digest(digest);
    }

    /// The current request is finished: the next bytes read start a new head.
    pub fn next_request(&self) {
        self.ended.fetch_add(1, Ordering::AcqRel);
    }

    /// Pingora parsed a request head read from this connection.
    pub fn head_parsed(&self) {
        self.parsed.fetch_add(1, Ordering::AcqRel);
    }

    /// The first bytes of the connection: the head clock replaces the idle clock.
    fn first_bytes(&mut self) {
        if std::mem::take(&mut self.fresh) {
            self.start_clock();
        }
    }

    fn saw_read(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.check_body(bytes)?;
        self.scan(bytes);
        Ok(())
    }

    fn scan(&mut self, bytes: &[u8]) {
        self.first_bytes();
        if let Some(frames) = &mut self.frames {
            frames.feed(bytes);
            if self.running && frames.past_preface() {
                self.stop_clock();
            }
            return;
        }
        let ended = self.ended.load(Ordering::Acquire);
        if ended > self.seen_ended {
            self.seen_ended = ended;
            self.expecting_head = true;
            self.stop_clock();
        }
        if self.parsed.load(Ordering::Acquire) > ended {
            // The head of the current request was parsed already (it came pipelined): these
            // bytes are its body. (An upgraded connection never ends a request: its bytes are
            // never taken for a head either.)
            self.expecting_head = false;
            self.stop_clock();
            return;
        }
        if self.expecting_head && !self.running {
            self.start_clock();
            self.in_head = false;
            self.line_content = false;
        }
        if !self.running {
            return;
        }
        // Only line ends matter: find them with memchr and look at the line before each one.
        let mut line_start = 0;
        for lf in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[line_start..lf];
            line_start = lf + 1;
            // A line with anything but CR in it is head content; the first empty one (only
            // CRs) after head content ends the head. Empty lines before the head are skipped
            // by parsers, so they neither start nor end it.
            if std::mem::take(&mut self.line_content) || line.iter().any(|&b| b != b'\r') {
                self.in_head = true;
            } else if self.in_head {
                self.stop_clock();
                self.expecting_head = false;
                self.keep_tail(&bytes[lf + 1..]);
                return;
            }
        }
        // Bytes after the last line end start a line that the next read continues.
        if bytes[line_start..].iter().any(|&b| b != b'\r') {
            self.line_content = true;
        }
    }

    /// Arms the timer for a new head, reusing the allocation of the previous one.
    fn start_clock(&mut self) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        match self.clock.as_mut() {
            // A timer that was registered stays registered (`polled` says so).
            Some(clock) => clock.as_mut().reset(deadline),
            None => {
                self.clock = Some(Box::pin(tokio::time::sleep_until(deadline)));
                self.polled = false;
            }
        }
        self.running = true;
    }

    /// The head ended (or watching stopped). A timer that was registered is dropped so that
    /// it cannot wake the task later; one that never was is kept for the next head.
    fn stop_clock(&mut self) {
        if self.running && self.polled {
            self.clock = None;
        }
        self.running = false;
        self.polled = false;
    }
}

/// The 408 problem answer written when a head misses its deadline.
fn timeout_answer() -> Vec<u8> {
    use super::reply::{problem_body, Code};
    let request_id = crate::headers::request_id(None);
    let body = problem_body(
        Code::RequestTimeout,
        "the request head was not received in time",
        &request_id,
    );
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl HeadDeadline {
    /// Reads from the connection unless a running clock has passed its deadline.
    fn poll_timed(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let (true, Some(clock)) = (self.running, self.clock.as_mut()) {
            self.polled = true;
            if clock.as_mut().poll(cx).is_ready() {
                // A silent connection is closed without an answer (nothing was asked), and so
                // is an HTTP/2 one.
                let asked = !self.fresh && self.frames.is_none();
                if asked && !std::mem::replace(&mut self.answered, true) {
                    // Best effort: tell the client why before the connection closes. Nothing
                    // else is being written while a head is awaited.
                    let answer = timeout_answer();
                    let _ = Pin::new(&mut self.inner).poll_write(cx, &answer);
                    let _ = Pin::new(&mut self.inner).poll_flush(cx);
                }
                let what = match self.fresh {
                    true => "nothing was sent before the idle deadline",
                    false => "request head deadline passed",
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.first_bytes();
        }
        res
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            let replayed: Vec<u8> = this.replay.drain(..n).collect();
            return Poll::Ready(this.saw_read(&replayed));
        }
        let before = buf.filled().len();
        let res = this.poll_timed(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let filled = buf.filled();
            return Poll::Ready(this.saw_read(&filled[before..]));
        }
        res
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    /// Not offered: `sniff_h2_preface` tells HTTP/2 apart under the deadlines (a peek of the
    /// inner stream would wait without them, and miss the bytes kept for replay).
    async fn try_peek(&mut self, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(timeout: Duration) -> (HeadDeadline, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = l.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
        (
            HeadDeadline::new(
                stream,
                Timeouts {
                    idle: timeout,
                    head: timeout,
                },
            ),
            client,
        )
    }

    #[tokio::test]
    async fn a_dribbled_head_times_out_but_a_quick_one_and_its_slow_body_do_not() {
        let (mut s, mut c) = pair(Duration::from_millis(300)).await;
        let mut buf = [0u8; 64];
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let n = s.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0);
        // The head is complete: a slow body is not this deadline's business, even after an
        // early response has been written.
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.write_all(b"more").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.write_all(b"more").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        // The request ends; a new head that never ends times out.
        s.next_request();
        c.write_all(b"GET / HT")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        let err = s.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test]
    async fn the_head_end_is_found_wherever_the_reads_split_it() {
        let heads: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\nGET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nA: \r\r\n\r\n",
        ];
        for head in heads {
            for split in 0..=head.len() {
                for second_split in split..=head.len() {
                    let (mut s, _c) = pair(Duration::from_secs(5)).await;
                    let parts = [
                        &head[..split],
                        &head[split..second_split],
                        &head[second_split..],
                    ];
                    for (i, part) in parts.iter().enumerate() {
                        assert!(s.saw_read(part).is_ok());
                        let done = i == 2 || parts[i + 1..].iter().all(|p| p.is_empty());
                        assert_eq!(
                            s.expecting_head,
                            !done,
                            "{:?} split at {split}/{second_split}, after part {i}",
                            String::from_utf8_lossy(head)
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn leading_blank_lines_do_not_end_the_head() {
        let (mut s, mut c) = pair(Duration::from_millis(300)).await;
        let mut buf = [0u8; 64];
        c.write_all(b"\r\n\r\n\r\nG")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        let err = s.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test]
    async fn upgraded_connections_are_left_alone() {
        let (mut s, mut c) = pair(Duration::from_millis(200)).await;
        let mut buf = [0u8; 64];
        c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        c.write_all(b"frame")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.write_all(b"frame")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_deadline_without_an_answer() {
        let (mut s, mut c) = pair(Duration::from_millis(200)).await;
        let mut buf = [0u8; 64];
        let err = s.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
        drop(s);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }

    #[tokio::test]
    async fn the_preface_is_told_apart_under_the_deadlines_and_its_bytes_replayed() {
        let (mut s, mut c) = pair(Duration::from_millis(300)).await;
        c.write_all(b"G").await.unwrap_or_else(|e| panic!("{e}"));
        // One byte that cannot start the preface is enough to decide.
        assert!(!s.sniff_h2_preface().await.unwrap_or(true));
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..n], b"G");
        // The head clock started at that byte: the rest never comes, 408.
        let err = s.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
        drop(s);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 408"));

        let (mut s, mut c) = pair(Duration::from_millis(300)).await;
        c.write_all(&H2_PREFACE[..10])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(&H2_PREFACE[10..])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.sniff_h2_preface().await.unwrap_or(false));
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..n], H2_PREFACE);

        // A partial preface that stalls is cut by the head clock.
        let (mut s, mut c) = pair(Duration::from_millis(200)).await;
        c.write_all(b"PRI * HT")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let err = s.sniff_h2_preface().await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test]
    async fn the_body_of_a_pipelined_request_is_never_taken_for_a_head() {
        let (mut s, mut c) = pair(Duration::from_millis(300)).await;
        let mut buf = [0u8; 256];
        c.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        // Pingora parses the first head, serves it, and parses the second from what it read.
        s.head_parsed();
        s.next_request();
        s.head_parsed();
        // The body comes slowly, without a blank line: not a head, no deadline.
        for part in [&b"abcd"[..], b"efgh"] {
            tokio::time::sleep(Duration::from_millis(400)).await;
            c.write_all(part).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(s.read(&mut buf).await.is_ok());
        }
        // The next request's head is timed again.
        s.next_request();
        c.write_all(b"GET /3 HT")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.read(&mut buf).await.is_ok());
        let err = s.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
    }
}
