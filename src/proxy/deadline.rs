//! A total deadline for receiving each HTTP/1 request head, which Pingora does not have (its
//! timeouts apply per read, so a client sending one byte every few seconds could hold a
//! connection forever).
//!
//! Two layers do it. `EdgeApp` puts every connection that is not HTTP/2 by ALPN behind
//! `HeadDeadline`, a transparent stream that watches the bytes going by: the first byte of a
//! request head starts the clock and the blank line that ends the head stops it (blank lines
//! before the head, which parsers skip, do not). `RequestEnd` sits between Pingora's connection
//! loop and the proxy: when a request is finished and the connection is kept for another, it
//! tells the stream that the next bytes start a new head. If the clock runs out, reads fail with
//! `TimedOut` and the connection is closed. Upgraded (101) and HTTP/2 prior-knowledge
//! connections are left alone, as is the wait between keep-alive requests (that is the
//! keep-alive idle limit's job).

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The server app that applies the head deadline before Pingora's connection loop runs.
pub struct EdgeApp<A> {
    pub inner: Arc<RequestEnd<A>>,
    pub head_timeout: Duration,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            Box::new(HeadDeadline::new(stream, self.head_timeout))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

/// Wraps the HTTP app to tell the connection's `HeadDeadline` when a request has ended, and to
/// drain idle keep-alive connections on shutdown or upgrade: once the listeners are closed,
/// Pingora would cut idle keep-alive connections at once, failing a client that sends on one
/// at that moment. For `drain`, they stay open instead, and the next request on each is
/// answered with `Connection: close` (Pingora does that once shutdown has begun), so clients
/// move to the new process without an error.
pub struct RequestEnd<A> {
    pub app: Arc<A>,
    pub drain: Duration,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for RequestEnd<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let reused = self.app.process_new_http(session, shutdown).await?;
        let (stream, settings) = reused.consume();
        if let Some(watch) = stream.as_any().downcast_ref::<HeadDeadline>() {
            watch.next_request();
        }
        Some(ReusedHttpStream::new(stream, settings))
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.app.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    async fn http_cleanup(&self) {
        if !self.drain.is_zero() {
            log::info!(
                "listeners closed: idle keep-alive connections may send one more request for {:?}",
                self.drain
            );
            tokio::time::sleep(self.drain).await;
        }
        self.app.http_cleanup().await
    }
}

/// A stream that fails reads once a request head takes longer than the deadline.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    /// The next byte read starts a request head.
    expecting_head: bool,
    /// Set from outside when a request ended and the connection waits for the next one.
    request_ended: AtomicBool,
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
    /// Nothing read yet on this connection.
    fresh: bool,
    /// Watching stopped for good (HTTP/2 prior knowledge, or an upgraded connection).
    off: bool,
    /// The 408 answer was written.
    answered: bool,
}

impl HeadDeadline {
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        HeadDeadline {
            inner,
            timeout,
            expecting_head: true,
            request_ended: AtomicBool::new(false),
            clock: None,
            running: false,
            polled: false,
            in_head: false,
            line_content: false,
            fresh: true,
            off: false,
            answered: false,
        }
    }

    /// The current request is finished: the next bytes read start a new head.
    pub fn next_request(&self) {
        self.request_ended.store(true, Ordering::Release);
    }

    fn saw_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.off {
            return;
        }
        if std::mem::take(&mut self.fresh) && bytes.starts_with(b"PRI * HTTP/2.0") {
            self.off = true;
            return;
        }
        if self.request_ended.swap(false, Ordering::AcqRel) {
            self.expecting_head = true;
            self.stop_clock();
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
                return;
            }
        }
        // Bytes after the last line end start a line that the next read continues.
        if bytes[line_start..].iter().any(|&b| b != b'\r') {
            self.line_content = true;
        }
    }

    fn saw_write(&mut self, bytes: &[u8]) {
        if !self.off && (bytes.starts_with(b"HTTP/1.1 101") || bytes.starts_with(b"HTTP/1.0 101")) {
            self.off = true;
            self.stop_clock();
        }
    }

    /// Arms the timer for a new head, reusing the allocation of the previous one.
    fn start_clock(&mut self) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        match self.clock.as_mut() {
            Some(clock) => clock.as_mut().reset(deadline),
            None => self.clock = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.running = true;
        self.polled = false;
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
    let request_id = super::headers::request_id(None);
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

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let (true, Some(clock)) = (this.running, this.clock.as_mut()) {
            this.polled = true;
            if clock.as_mut().poll(cx).is_ready() {
                if !std::mem::replace(&mut this.answered, true) {
                    // Best effort: tell the client why before the connection closes. Nothing
                    // else is being written while a head is awaited.
                    let answer = timeout_answer();
                    let _ = Pin::new(&mut this.inner).poll_write(cx, &answer);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head deadline passed",
                )));
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let filled = buf.filled();
            this.saw_read(&filled[before..]);
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
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.saw_write(&buf[..n]);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&res, bufs.iter().find(|b| !b.is_empty())) {
            if *n > 0 {
                this.saw_write(&first[..(*n).min(first.len())]);
            }
        }
        res
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
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
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
        (HeadDeadline::new(stream, timeout), client)
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
                        s.saw_read(part);
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
}
