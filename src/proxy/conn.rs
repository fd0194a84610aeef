//! What happens to a client connection of the proxy listeners before Pingora's HTTP loop, and
//! between its requests:
//! - the connection cap (`[server.limits] max_connections`): a connection over it is closed
//!   at once and counted;
//! - every connection is read through [`HeadDeadline`]: nothing sent for
//!   `idle_before_request` closes it, and a request head (or the HTTP/2 preface) must arrive
//!   whole within `head_timeout` of its first byte;
//! - protocol detection: HTTP/2 by ALPN, or by its preface on listeners with `h2c = true`
//!   (read under those deadlines, which Pingora's own detection does not have), is served by
//!   [`h2conn::serve`] with its reset budget; everything else goes to Pingora's HTTP/1 loop;
//! - [`RequestEnd`] tells the connection's `HeadDeadline` when a request has ended, and drains
//!   idle keep-alive connections on shutdown or upgrade;
//! - on TLS listeners, [`HelloDeadline`] runs before the handshake (which Pingora bounds only
//!   by a fixed 60 s): the ClientHello record must start within `idle_before_request` and
//!   arrive whole within `head_timeout`. The rest of the handshake keeps Pingora's bound.
//! - on listeners with `proxy_protocol = true`, the connection must start with a PROXY
//!   protocol header (`crate::peers`) from a peer in `[server] trusted_proxies` (read before
//!   the TLS handshake on TLS listeners); the client it names is kept for the connection's
//!   requests. Anything else closes the connection.

use super::deadline::{HeadDeadline, Timeouts};
use super::h2conn::{self, ResetBudget};
use crate::limits::conns::Connections;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Peek};
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// The server app of the proxy listeners (see the module doc).
pub struct EdgeApp<A> {
    pub inner: Arc<RequestEnd<A>>,
    pub timeouts: Timeouts,
    /// Look for the HTTP/2 preface on plain-text connections.
    pub h2c: bool,
    pub h2_max_resets: u32,
    pub connections: Arc<Connections>,
    pub proxy: ProxyListeners,
}

/// The listeners that speak PROXY protocol, and what checking a header needs.
#[derive(Clone)]
pub struct ProxyListeners {
    /// The plaintext listeners (`[server] proxy_protocol`).
    pub plain: bool,
    /// TLS listeners with `proxy_protocol = true`.
    pub tls: Vec<SocketAddr>,
    pub shared: Arc<crate::state::Shared>,
}

impl ProxyListeners {
    /// Whether the connection accepted on `local` starts with a PROXY header.
    fn expects(&self, tls: bool, local: Option<SocketAddr>) -> bool {
        if !tls {
            return self.plain;
        }
        local.is_some_and(|local| {
            self.tls.iter().any(|l| {
                l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip())
            })
        })
    }

    /// Whether `peer` may send a PROXY header (it is a trusted proxy).
    fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| self.shared.snapshot().policies.trusted.contains(p.ip()))
    }

    /// The client a complete header names, or why the connection is closed.
    fn client(&self, header: crate::peers::Header) -> Result<Option<SocketAddr>, &'static str> {
        match header {
            crate::peers::Header::Complete { source, .. } => Ok(source),
            crate::peers::Header::Invalid(why) => Err(why),
            crate::peers::Header::Incomplete(_) => Err("an incomplete PROXY protocol header"),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let tls = stream.get_ssl_digest().is_some();
        // A TLS connection took its slot before the handshake (`HelloDeadline`).
        let handshake = peer_of(stream.get_socket_digest())
            .filter(|_| tls)
            .and_then(|peer| self.connections.claim_handshake(peer));
        let proxied = self
            .proxy
            .expects(tls, local_of(stream.get_socket_digest()));
        let _slot = handshake.or_else(|| self.connections.admit())?;
        let alpn_h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut watched = HeadDeadline::new(stream, self.timeouts);
        // (On TLS listeners the header came before the handshake: `HelloDeadline`.)
        if proxied && !tls {
            let sender = peer_of(watched.get_socket_digest());
            if !self.proxy.trusts(sender) {
                log::debug!("PROXY protocol connection from an untrusted peer {sender:?} closed");
                return None;
            }
            let header = watched.read_proxy_header().await.ok()?;
            match (self.proxy.client(header), sender) {
                (Ok(client), Some(sender)) => watched.set_client(sender, client),
                (Err(why), _) => {
                    log::debug!("connection from {sender:?} closed: {why}");
                    return None;
                }
                (Ok(_), None) => return None,
            }
        }
        let h2 = alpn_h2 || (self.h2c && !tls && watched.sniff_h2_preface().await.ok()?);
        if h2 {
            let budget = ResetBudget::new(self.h2_max_resets);
            watched.count_h2_frames(budget.clone());
            h2conn::serve(self.inner.clone(), Box::new(watched), budget, shutdown).await;
            return None;
        }
        self.inner.process_new(Box::new(watched), shutdown).await
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
    /// The app's options with `h2c` off: [`EdgeApp`] has already told HTTP/2 apart.
    pub options: HttpServerOptions,
}

impl<A: HttpServerApp> RequestEnd<A> {
    pub fn new(app: A, drain: Duration) -> RequestEnd<A> {
        let mut options = app.server_options().cloned().unwrap_or_default();
        options.h2c = false;
        RequestEnd {
            app: Arc::new(app),
            drain,
            options,
        }
    }
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
        Some(&self.options)
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

/// The client address of a connection, from its socket digest.
fn peer_of(digest: Option<Arc<pingora::protocols::SocketDigest>>) -> Option<std::net::SocketAddr> {
    digest.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// The local (listener) address of a connection.
fn local_of(digest: Option<Arc<pingora::protocols::SocketDigest>>) -> Option<SocketAddr> {
    digest.and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
}

/// Before a TLS handshake: the connection's slot under the cap (see `limits::conns`), and
/// deadlines for the ClientHello (see the module doc).
pub struct HelloDeadline {
    pub timeouts: Timeouts,
    pub connections: Arc<Connections>,
    pub proxy: ProxyListeners,
}

/// A TLS record header: content type 22 (handshake), version, length.
const RECORD_HEADER: usize = 5;
/// The longest TLS record (2^14 bytes of plaintext plus the expansion TLS allows).
const MAX_RECORD: usize = (1 << 14) + 2048;

#[async_trait]
impl PreTlsProcess for HelloDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let peer = peer_of(stream.get_socket_digest());
        if let Some(peer) = peer {
            if !self
                .connections
                .admit_handshake(peer, std::time::Instant::now())
            {
                return Error::e_explain(ErrorType::ConnectError, "max_connections reached");
            }
        }
        let local = local_of(stream.get_socket_digest());
        let mut slot_peer = peer;
        let outcome = match (self.proxy.expects(true, local), peer) {
            (true, Some(sender)) => match self.proxy_header(stream, sender).await {
                Ok(client) => {
                    // From here the connection's peer is the client the header named.
                    let digest = crate::peers::client_digest(
                        stream.as_raw_fd(),
                        stream.get_socket_digest().as_deref(),
                        sender,
                        client,
                    );
                    let named = digest.peer_addr().and_then(|a| a.as_inet()).copied();
                    stream.set_socket_digest(digest);
                    if let Some(named) = named {
                        self.connections.rekey_handshake(sender, named);
                        slot_peer = Some(named);
                    }
                    self.hello(stream).await
                }
                Err(e) => Err(e),
            },
            (true, None) => Error::e_explain(ErrorType::ConnectError, "no peer address"),
            (false, _) => self.hello(stream).await,
        };
        let peer = slot_peer;
        if let (Err(_), Some(peer)) = (&outcome, peer) {
            // This connection ends here: its slot comes back now.
            drop(self.connections.claim_handshake(peer));
        }
        outcome
    }
}

impl HelloDeadline {
    /// Reads the PROXY protocol header of a TLS listener's connection, under the deadlines;
    /// the bytes after it are put back for the handshake.
    async fn proxy_header(
        &self,
        stream: &mut L4Stream,
        sender: SocketAddr,
    ) -> pingora::Result<Option<SocketAddr>> {
        use crate::peers::Header;
        use tokio::io::AsyncReadExt;
        if !self.proxy.trusts(Some(sender)) {
            return Error::e_explain(
                ErrorType::ConnectError,
                "PROXY header from an untrusted peer",
            );
        }
        let mut got: Vec<u8> = Vec::with_capacity(128);
        // The first byte within the idle deadline, the whole header within the head deadline
        // of it.
        let mut deadline = tokio::time::Instant::now() + self.timeouts.idle;
        loop {
            match crate::peers::parse(&got) {
                Header::Incomplete(_) => {
                    let mut chunk = [0u8; 256];
                    let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => {
                            return Error::e_because(ErrorType::ReadError, "PROXY header", e)
                        }
                        Err(_) => {
                            return Error::e_explain(
                                ErrorType::ReadTimedout,
                                "the PROXY header was not received in time",
                            )
                        }
                    };
                    if n == 0 {
                        return Error::e_explain(
                            ErrorType::ReadError,
                            "closed before the PROXY header",
                        );
                    }
                    if got.is_empty() {
                        deadline = tokio::time::Instant::now() + self.timeouts.head;
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
                Header::Complete { len, source } => {
                    stream.rewind(&got[len..]);
                    return Ok(source);
                }
                Header::Invalid(why) => return Error::e_explain(ErrorType::ConnectError, why),
            }
        }
    }

    async fn hello(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let mut header = [0u8; RECORD_HEADER];
        match tokio::time::timeout(self.timeouts.idle, stream.try_peek(&mut header)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Error::e_because(ErrorType::ReadError, "before the ClientHello", e)
            }
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ReadTimedout,
                    "nothing was sent before the idle deadline",
                )
            }
        }
        if header[0] != 22 {
            // Not a handshake record: the TLS library answers it.
            return Ok(());
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD {
            // Not a valid TLS record: the TLS library refuses it.
            return Ok(());
        }
        let mut record = vec![0u8; RECORD_HEADER + len];
        match tokio::time::timeout(self.timeouts.head, stream.try_peek(&mut record)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Error::e_because(ErrorType::ReadError, "reading the ClientHello", e),
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                "the ClientHello was not received in time",
            ),
        }
    }
}
