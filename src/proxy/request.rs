//! The `request_filter` phase: the session's limits for this request, the head and target
//! checks, routing, then the endpoint's policy pipeline (`crate::policy::run`) and the local
//! actions (static answers, the usage endpoint, CORS preflights). Every refusal is written
//! here, with the policy's answer headers and the name of the policy that refused.

use super::ctx::RequestCtx;
use super::{caching, edge, is_tls, watch, Gateway};
use crate::path::check_target;
use crate::policy::run::{Inbound, Outcome, Services};
use crate::policy::Stage;
use crate::reply::{self, Code, Reply};
use crate::route::Match;
use crate::state::{Action, StaticReply};
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Result;

/// What admission found.
enum Routed {
    /// The endpoint, and whether the request may have a body.
    Found(usize, bool),
    /// The path matched but not the method: 405 unless the endpoint's CORS policy answers a
    /// preflight.
    WrongMethod(usize, Reply, bool),
}

impl Gateway {
    /// The whole `request_filter`: `Ok(true)` when the gateway answered itself.
    pub(super) async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        prepare(session, ctx);
        let routed = match self.admit(session, ctx) {
            Ok(r) => r,
            Err((reply, close)) => return self.refuse(session, ctx, reply, close).await,
        };
        let (id, close) = match routed {
            Routed::Found(id, close) => (id, close),
            Routed::WrongMethod(id, reply, close) => {
                return self.wrong_method(session, ctx, id, reply, close).await;
            }
        };
        ctx.had_body = close;
        if close {
            ctx.body_rate = super::body::body_rate(&session.req_header().headers);
        }
        if let Err(reply) = check_chunk_framing(session) {
            return self.refuse(session, ctx, reply, true).await;
        }
        let snapshot = ctx.snapshot.clone();
        let ep = &snapshot.endpoints[id];
        let outcome = self.stages(session, ctx, id, Stage::Limit).await;
        match outcome {
            Err(reply) => self.refuse(session, ctx, reply, close).await,
            Ok(Outcome::Preflight(headers)) => {
                preflight(session, ctx, headers, close).await?;
                Ok(true)
            }
            Ok(Outcome::Continue) => {
                if let Some(v) = ep.chain.validation() {
                    if let Err(reply) = self.validate(session, ctx, ep, v).await? {
                        let close = close && ctx.preread.is_none();
                        return self.refuse(session, ctx, reply, close).await;
                    }
                }
                // (A body read whole for validation leaves the connection reusable.)
                let close = close && ctx.preread.is_none();
                self.act(session, ctx, ep, close).await
            }
        }
    }

    /// The endpoint's action, once the request stages let the request through.
    async fn act(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        ep: &crate::state::Endpoint,
        close: bool,
    ) -> Result<bool> {
        match &ep.action {
            Action::Proxy(_) => {
                if crate::policy::run::edits_answer(&ep.chain, &ctx.flow) {
                    // The answer is edited whole: no range of it, from the cache either.
                    let req = session.req_header_mut();
                    req.remove_header(&http::header::RANGE);
                    req.remove_header(&http::header::IF_RANGE);
                }
                Ok(false)
            }
            Action::Respond(r) => {
                write_local(session, ctx, ep, r, close).await?;
                Ok(true)
            }
            Action::Usage => {
                self.answer_usage(session, ctx, close).await?;
                Ok(true)
            }
            Action::Mock(ops) => self.answer_mock(session, ctx, ep, ops, close).await,
        }
    }

    /// Runs the request stages of endpoint `id`, up to and including `last`.
    async fn stages(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        id: usize,
        last: Stage,
    ) -> std::result::Result<Outcome, Reply> {
        let snapshot = ctx.snapshot.clone();
        let services = self.services();
        let inbound = inbound(session, ctx);
        crate::policy::run::request(
            &snapshot,
            &services,
            &snapshot.endpoints[id],
            &inbound,
            &mut ctx.flow,
            last,
        )
        .await
    }

    fn services(&self) -> Services<'_> {
        Services {
            identity: &self.shared.identity,
            limiter: &self.shared.limiter,
            cluster: self.shared.cluster.as_deref(),
        }
    }

    /// Checks and routes the request; `Err` is the answer to give instead, and whether to
    /// close the connection after it.
    fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<Routed, (Reply, bool)> {
        let req = session.req_header();
        let head = edge::check_head(req, &ctx.snapshot.limits).map_err(|r| (r, true))?;
        let close = head.may_have_body();
        let target = check_target(req.raw_path())
            .map_err(|e| (Reply::new(Code::BadRequest, e.detail()), close))?;
        let host = crate::headers::request_host(req);
        let id = match ctx.snapshot.route(host, target.path, &req.method) {
            Match::Found(id) => id,
            Match::NotFound => {
                if ctx.snapshot.file.catalog.shadow {
                    ctx.shadow = Some(Box::new(self.shadow_hit(session, ctx, host, target.path)));
                }
                return Err((Reply::no_route(&req.method, target.path), close));
            }
            Match::MethodNotAllowed(allowed, id) => {
                let reply = Reply::wrong_method(&req.method, allowed);
                return Ok(Routed::WrongMethod(id, reply, close));
            }
        };
        ctx.endpoint = Some(id);
        let ep = &ctx.snapshot.endpoints[id];
        ctx.flow.max_body = ep.max_body;
        ctx.content_length = head.content_length;
        if let Some(reply) = ep.body_too_large(head.content_length) {
            return Err((reply, true));
        }
        if let Action::Proxy(pool) = &ep.action {
            ctx.retries_left = pool.def.retries;
        }
        Ok(Routed::Found(id, close))
    }

    /// What shadow endpoint discovery keeps of a request that matched no route: its host,
    /// method, path shape and caller (the consumer of a known API key, else the address).
    fn shadow_hit(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        host: Option<&[u8]>,
        path: &[u8],
    ) -> crate::analytics::shadow::Hit {
        use crate::analytics::shadow::{Caller, Hit};
        let req = session.req_header();
        let snapshot = &ctx.snapshot;
        let holder = crate::auth::key_holder(
            req,
            &snapshot.key_headers,
            &snapshot.identities,
            &self.shared.identity,
            crate::clock::now(),
        );
        let caller = match (holder, ctx.client_ip) {
            (Some(id), _) => Caller::Consumer(id),
            (None, Some(ip)) => Caller::Address(ip),
            (None, None) => Caller::Unknown,
        };
        let host = host.map(String::from_utf8_lossy).unwrap_or_default();
        Hit::new(
            &host,
            req.method.as_str(),
            &String::from_utf8_lossy(path),
            caller,
        )
    }

    /// A method the route does not allow: 405, unless it is a CORS preflight, which the CORS
    /// policy of the endpoint for the method it asks about answers (after that endpoint's
    /// Edge stage), so a preflight to a GET-only route is answered.
    async fn wrong_method(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        id: usize,
        reply: Reply,
        close: bool,
    ) -> Result<bool> {
        if !crate::policy::cors::is_preflight(session.req_header()) {
            return self.refuse(session, ctx, reply, close).await;
        }
        let snapshot = ctx.snapshot.clone();
        let id = snapshot
            .preflight_endpoint(session.req_header())
            .unwrap_or(id);
        ctx.endpoint = Some(id);
        let outcome = self.stages(session, ctx, id, Stage::Cors).await;
        match outcome {
            Ok(Outcome::Preflight(headers)) => {
                preflight(session, ctx, headers, close).await?;
                Ok(true)
            }
            Err(refusal) => self.refuse(session, ctx, refusal, close).await,
            Ok(Outcome::Continue) => self.refuse(session, ctx, reply, close).await,
        }
    }

    /// Answers with the gateway's refusal and records it: its code, the limit and the policy
    /// that refused (for analytics), and `X-Cache-Status: BYPASS` on an API with a cache.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut reply: Reply,
        close: bool,
    ) -> Result<bool> {
        if self.endpoint(ctx).is_some_and(|e| e.cache.is_some()) {
            ctx.cache_status = Some("BYPASS");
            reply = reply.header(caching::STATUS_HEADER, "BYPASS");
        }
        ctx.code = Some(reply.code);
        ctx.limited = reply.limited;
        ctx.refused_by = reply.by.take();
        reply::write_problem(session, &reply, &ctx.request_id, close, &ctx.flow.answer).await?;
        Ok(true)
    }

    /// Answers `GET [usage] path`: the identified caller's own usage (nothing is counted).
    async fn answer_usage(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        close: bool,
    ) -> Result<()> {
        let body = match &ctx.flow.consumer {
            Some(c) => crate::limits::usage::consumer_usage(&self.shared, &ctx.snapshot, c),
            None => serde_json::json!({}),
        };
        let reply = StaticReply {
            status: 200,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                ),
                (
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                ),
            ],
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        };
        reply::write_static(session, &reply, &ctx.request_id, close, &ctx.flow.answer).await
    }
}

/// The session's settings for this request, and what is read from its head once: the request
/// id, the trace context, the client address.
fn prepare(session: &mut Session, ctx: &mut RequestCtx) {
    // The first hook after Pingora parsed the head (see `deadline::HeadDeadline`).
    if let Some(watch) = watch(session) {
        watch.head_parsed();
    }
    ctx.background = session.subrequest_ctx.is_some();
    let req = session.req_header();
    ctx.request_id = crate::headers::request_id(req.headers.get("x-request-id"));
    let incoming = req.headers.get("traceparent").map(|v| v.as_bytes());
    let telemetry = &ctx.snapshot.file.telemetry;
    if telemetry.enabled() {
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri.host());
        let (header, trace) =
            crate::telemetry::begin(telemetry, incoming, host, is_tls(session), ctx.start);
        ctx.traceparent = header;
        ctx.trace = trace;
    } else {
        ctx.traceparent = crate::headers::traceparent(incoming);
    }
    // (On PROXY protocol listeners the header named the peer: see `proxy::conn`.)
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    ctx.client_ip = crate::policy::ip::client_address(
        peer,
        &ctx.snapshot.policies.trusted,
        req.headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes()),
    );
    let limits = &ctx.snapshot.limits;
    // Only refresh the idle limit: Pingora turns keep-alive off when the request demands it
    // (Connection: close, HTTP/1.0, Content-Length with Transfer-Encoding) and that stays so.
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(limits.keepalive_idle.as_secs().max(1)));
    }
    // Slow clients: one read of a body may wait `body_rate_after` (Pingora's default is
    // 60 s; an upgraded connection's idle bytes are not a body), and an answer must be
    // read at `send_min_rate` (Pingora times each write by it, at least 1 s).
    if !session.is_upgrade_req() {
        session.set_read_timeout(Some(limits.body_rate_after));
    }
    if limits.send_min_rate > 0 {
        session.set_min_send_rate(Some(limits.send_min_rate));
    }
    // Requests a client pipelines are answered in order (RFC 9112 section 9.3.2), not
    // dropped with the connection.
    session.set_pipelining_enabled(true);
}

/// Writes an answer of the gateway's own (`respond`, a mock) with the Response stage's header
/// edits and the answer headers of the policies that ran.
pub(super) async fn write_local(
    session: &mut Session,
    ctx: &mut RequestCtx,
    ep: &crate::state::Endpoint,
    r: &StaticReply,
    close: bool,
) -> Result<()> {
    let raw = session.req_header().raw_path();
    let path = &raw[..raw.iter().position(|&b| b == b'?').unwrap_or(raw.len())];
    let edited = crate::policy::run::static_headers(
        &ep.chain,
        &mut ctx.flow,
        &ctx.request_id,
        ctx.client_ip,
        path,
        r.status,
        &r.headers,
    );
    let reply = match edited {
        None => std::borrow::Cow::Borrowed(r),
        Some(headers) => std::borrow::Cow::Owned(StaticReply {
            status: r.status,
            headers,
            body: r.body.clone(),
        }),
    };
    reply::write_static(session, &reply, &ctx.request_id, close, &ctx.flow.answer).await
}

/// The request as the policy stages see it.
fn inbound<'a>(session: &'a Session, ctx: &RequestCtx) -> Inbound<'a> {
    Inbound {
        head: session.req_header(),
        client_ip: ctx.client_ip,
        content_length: ctx.content_length,
        background: ctx.background,
    }
}

/// The 204 answer to a CORS preflight.
async fn preflight(
    session: &mut Session,
    ctx: &RequestCtx,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    close: bool,
) -> Result<()> {
    let reply = StaticReply {
        status: 204,
        headers,
        body: Bytes::new(),
    };
    reply::write_static(session, &reply, &ctx.request_id, close, &[]).await
}

/// A chunked body whose first bytes (read with the head) are framed sloppily gets 400; the
/// rest of the body is checked as it is read (see `deadline::HeadDeadline`).
fn check_chunk_framing(session: &Session) -> Result<(), Reply> {
    let headers = &session.req_header().headers;
    if !headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(());
    }
    match watch(session).map(super::deadline::HeadDeadline::check_chunked_body) {
        Some(Err(why)) => Err(Reply::new(
            Code::BadRequest,
            format!("the chunked body has {why}"),
        )),
        _ => Ok(()),
    }
}
