//! The `ProxyHttp` implementation. Each hook delegates: `request` admits, routes and runs the
//! endpoint's policy pipeline (`crate::policy`), `body` counts the request body, `upstream`
//! picks targets and edits the upstream request, `answer` edits the answer, `caching` drives
//! pingora-cache, `failure` classifies what went wrong and `logging` records the request.
//! Connections are set up in `conn` (limits, HTTP/2, deadlines).

pub mod answer;
pub mod body;
pub mod caching;
pub mod chunks;
pub mod conn;
pub mod contract;
pub mod ctx;
pub mod deadline;
pub mod edge;
pub mod failure;
pub mod h2conn;
pub mod logging;
pub mod request;
pub mod upstream;

pub use crate::reply;
use crate::state::Action;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::RequestCtx;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource};
use std::sync::Arc;

/// The gateway's proxy logic.
pub struct Gateway {
    pub shared: Arc<crate::state::Shared>,
}

impl Gateway {
    fn endpoint<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a crate::state::Endpoint> {
        ctx.endpoint.and_then(|i| ctx.snapshot.endpoints.get(i))
    }

    /// The pool and target of the current upstream attempt.
    fn attempt(
        &self,
        ctx: &RequestCtx,
    ) -> Option<(std::net::SocketAddr, Arc<crate::upstream::Pool>)> {
        match (ctx.peer, self.endpoint(ctx).map(|e| &e.action)) {
            (Some(addr), Some(Action::Proxy(pool))) => Some((addr, pool.clone())),
            _ => None,
        }
    }
}

/// The deadline stream of the request's connection (HTTP/1 only).
fn watch(session: &Session) -> Option<&deadline::HeadDeadline> {
    session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<deadline::HeadDeadline>())
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.snapshot())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.on_request(session, ctx).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        self.enable_cache(session, ctx);
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<pingora::cache::CacheKey> {
        self.cache_key(session, ctx)
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora::cache::CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        caching::vary(meta, req)
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &pingora::cache::CacheMeta,
        _hit_handler: &mut pingora::cache::HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<pingora::cache::ForcedFreshness>> {
        ctx.stale_found |= !is_fresh;
        Ok(None)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<pingora::cache::RespCacheable> {
        Ok(self.cacheable(session, resp, ctx))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        caching::serve_stale(ctx, error)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Bytes of an upgraded connection (WebSocket) are not a request body.
        if session.was_upgraded() || contract::forward_preread(body, end_of_stream, ctx) {
            return Ok(());
        }
        body::on_body(body, end_of_stream, ctx)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.on_peer(session, ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.on_connect_failure(ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        upstream::on_proxy_error(session, peer, ctx, e, client_reused)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::on_connected(ctx, reused);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.on_upstream_request(session, upstream, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.on_upstream_response(resp, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.on_response(session, resp, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        self.on_response_body(body, end_of_stream, ctx)?;
        Ok(None)
    }

    /// What Pingora's error and retry log lines say about a request: method, path and host,
    /// never the query (it may carry an API key or other secrets).
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let raw = req.raw_path();
        let path = &raw[..raw.iter().position(|&b| b == b'?').unwrap_or(raw.len())];
        let host = req
            .headers
            .get(http::header::HOST)
            .map_or(&b""[..], |h| h.as_bytes());
        format!(
            "{} {}, Host: {}, request id {}",
            req.method,
            String::from_utf8_lossy(path),
            String::from_utf8_lossy(host),
            ctx.request_id
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let analytics = &self.shared.analytics;
        if let Some(record) = logging::record(session, ctx, analytics.access_log.is_some()) {
            analytics.send(record);
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        // Client-side failures and answers the gateway chose are not operator errors.
        ctx.fail.is_some() || matches!(error.esource(), ErrorSource::Downstream)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        self.on_failure(session, e, ctx).await
    }
}
