//! The `ProxyHttp` implementation. Each hook is a few lines that delegate: `edge` checks the
//! head, `path` the target, `route` finds the endpoint, `upstream` picks and reports targets,
//! `headers` sets forwarding headers and `reply` writes every answer the gateway gives itself.

pub mod caching;
pub mod chunks;
pub mod conn;
pub mod ctx;
pub mod deadline;
pub mod edge;
pub mod h2conn;
pub mod headers;
pub mod logging;

use crate::path::check_target;
pub use crate::reply;
use crate::route::Match;
use crate::state::{Action, Shared};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::RequestCtx;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use reply::{Code, Reply};
use std::sync::Arc;

/// The gateway's proxy logic.
pub struct Gateway {
    pub shared: Arc<Shared>,
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

    /// Checks and routes the request; `Err` is the answer to give instead.
    fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<bool, (Reply, bool)> {
        let req = session.req_header();
        let head = edge::check_head(req, &ctx.snapshot.limits).map_err(|r| (r, true))?;
        let close = head.may_have_body();
        let target = check_target(req.raw_path())
            .map_err(|e| (Reply::new(Code::BadRequest, e.detail()), close))?;
        if let Some((path, ep)) = &ctx.snapshot.usage {
            if target.path == path.as_bytes() && req.method == http::Method::GET {
                ctx.endpoint = Some(*ep);
                ctx.usage = true;
                return Ok(close);
            }
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
        let id = match ctx
            .snapshot
            .router
            .find(host, target.path, req.method.as_str().as_bytes())
        {
            Match::Found(id) => id,
            Match::NotFound => {
                return Err((
                    Reply::new(
                        Code::RouteNotFound,
                        format!(
                            "no route for {} {}",
                            req.method,
                            String::from_utf8_lossy(target.path)
                        ),
                    ),
                    close,
                ));
            }
            Match::MethodNotAllowed(allowed) => {
                let allow = allowed.allow_header();
                let detail = format!("{} is not allowed here; allowed: {allow}", req.method);
                return Err((
                    Reply::new(Code::MethodNotAllowed, detail).header("Allow", allow),
                    close,
                ));
            }
        };
        ctx.endpoint = Some(id);
        let ep = &ctx.snapshot.endpoints[id];
        ctx.max_body = ep.max_body;
        if head.content_length.is_some_and(|n| n > ep.max_body) {
            return Err((
                Reply::new(
                    Code::PayloadTooLarge,
                    format!("the body limit of this route is {} bytes", ep.max_body),
                ),
                true,
            ));
        }
        if let Action::Proxy(pool) = &ep.action {
            ctx.retries_left = pool.def.retries;
        }
        Ok(close)
    }

    /// Answers with the gateway's refusal and records it: its code and the limit that refused
    /// (for analytics), and `X-Cache-Status: BYPASS` on an API with a cache.
    async fn refuse(
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
        reply::write_problem(session, &reply, &ctx.request_id, close).await?;
        Ok(true)
    }

    /// The caller checks of a routed request, in order: the address's flood guard, identity,
    /// the plan. `Err` is the answer to give instead.
    async fn check_caller(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Reply> {
        if ctx.background {
            // The cache's background refresh of a copy a client already got (and was counted
            // for): only the consumer is needed, for the key.
            return self.identify(session, ctx).await;
        }
        self.guard_ip(session, ctx)?;
        self.identify(session, ctx).await?;
        self.limit(ctx).await
    }

    /// Answers `GET [usage] path`: the identified caller's own usage (nothing is counted).
    async fn answer_usage(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        close: bool,
    ) -> Result<()> {
        let body = match &ctx.consumer {
            Some(c) => crate::limits::usage::consumer_usage(&self.shared, &ctx.snapshot, c),
            None => serde_json::json!({}),
        };
        let reply = crate::state::StaticReply {
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
        reply::write_static(session, &reply, &ctx.request_id, close, None).await
    }

    /// Applies the caller's plan; `Err` is the 429 answer (nothing goes upstream).
    async fn limit(&self, ctx: &mut RequestCtx) -> Result<(), Reply> {
        if ctx.usage {
            return Ok(());
        }
        let snapshot = ctx.snapshot.clone();
        let Some(limits) = ctx
            .endpoint
            .and_then(|i| snapshot.endpoints.get(i))
            .and_then(|e| e.limits.as_ref())
        else {
            return Ok(());
        };
        let Some(consumer) = &ctx.consumer else {
            return Ok(());
        };
        let Some(plan_name) = &consumer.plan else {
            // An identified caller is never unlimited by accident.
            return Err(Reply::new(
                Code::NoPlan,
                "this consumer has no plan for this API; ask the API owner for one",
            ));
        };
        let Some(plan) = limits.plans.get(plan_name) else {
            // Checked at start and reload; a consumer written since with a plan that does not
            // exist is refused rather than left unlimited.
            log::warn!(
                "consumer {} has plan {plan_name:?}, which the config does not define",
                consumer.id
            );
            return Err(Reply::new(
                Code::Forbidden,
                "this consumer's plan is not available; contact the API owner",
            ));
        };
        let key = crate::limits::limiter::limit_key(&consumer.id, limits.per_api.as_deref());
        let verdict = self.decide(&key, plan).await?;
        let headers = (
            crate::limits::headers::policy(&verdict.policies),
            crate::limits::headers::state(&verdict.policies),
        );
        // Items of a flood guard that already applied come first.
        let headers = match ctx.ratelimit.take() {
            Some((p, s)) if !verdict.policies.is_empty() => {
                (format!("{p}, {}", headers.0), format!("{s}, {}", headers.1))
            }
            Some(ip_only) if verdict.policies.is_empty() => ip_only,
            _ => headers,
        };
        let Some(denial) = verdict.denied else {
            ctx.ratelimit = Some(headers);
            return Ok(());
        };
        use crate::limits::limiter::Denial;
        use crate::limits::spec::Period;
        let policy = match &denial {
            Denial::Rate { .. } => "rate",
            Denial::Quota { period, .. } => match period {
                Period::Minute => "quota_minute",
                Period::Hour => "quota_hour",
                Period::Day => "quota_day",
                Period::Month => "quota_month",
            },
        };
        let (code, detail, retry) = match denial {
            Denial::Rate { retry_after_secs } => (
                Code::RateLimited,
                format!("the {} plan allows no more requests right now", plan.name),
                retry_after_secs,
            ),
            Denial::Quota {
                period,
                limit,
                retry_after_secs,
            } => (
                Code::QuotaExceeded,
                format!(
                    "the {} plan's quota of {limit} requests per {period} is used up",
                    plan.name
                ),
                retry_after_secs,
            ),
        };
        Err(limited(code, policy, detail, retry, headers))
    }

    /// The plan's verdict for one request: in this process, or with the fleet's Redis when the
    /// plan is strict or a quota has no lease left (see `cluster::counters`).
    async fn decide(
        &self,
        key: &str,
        plan: &crate::limits::limiter::Plan,
    ) -> Result<crate::limits::limiter::Verdict, Reply> {
        use crate::limits::limiter::{Check, Mode};
        let limiter = &self.shared.limiter;
        let Some(cluster) = &self.shared.cluster else {
            return Ok(limiter.check(key, plan, crate::clock::now_ns()));
        };
        let nodes = cluster.nodes;
        let now = crate::clock::now_ns();
        let mode = Mode::Cluster {
            nodes,
            up: cluster.is_up(),
        };
        let ask = match limiter.decide(key, plan, now, mode) {
            Check::Done(v) => return Ok(v),
            Check::Unavailable => return Err(store_unavailable()),
            Check::Ask(ask) => ask,
        };
        if let Some(answer) = crate::cluster::counters::take(cluster, key, &ask).await {
            return Ok(limiter.answered(key, plan, now, nodes, &answer));
        }
        // Redis did not answer: the plan's on_store_error decides, now that Redis counts as down.
        let mode = Mode::Cluster { nodes, up: false };
        match limiter.decide(key, plan, crate::clock::now_ns(), mode) {
            Check::Done(v) => Ok(v),
            Check::Ask(_) | Check::Unavailable => Err(store_unavailable()),
        }
    }

    /// Identifies the caller on APIs with auth; `Err` is the 401/403 answer.
    async fn identify(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Reply> {
        let snapshot = ctx.snapshot.clone();
        let Some(ep) = ctx.endpoint.and_then(|i| snapshot.endpoints.get(i)) else {
            return Ok(());
        };
        let Some(policy) = &ep.auth else {
            return Ok(());
        };
        // Brute-force guard: an address with too many recent failures is not even checked.
        let guard = snapshot.auth_guard.as_ref().zip(client_ip(session));
        if let Some((g, ip)) = guard {
            if g.exhausted(&ip) {
                return Err(limited(
                    Code::RateLimited,
                    "auth_failures",
                    "too many failed authentication attempts from this address; try again later",
                    g.spec.per_secs,
                    g.headers("auth-failures", g.spec.count),
                ));
            }
        }
        // The usage endpoint borrows an API's auth, not its routes' scopes.
        let scopes: &[String] = if ctx.usage { &[] } else { &ep.scopes };
        let outcome = crate::auth::authenticate(
            session.req_header(),
            policy,
            scopes,
            &snapshot.identities,
            &self.shared.identity,
            crate::clock::now(),
        )
        .await;
        match outcome {
            Ok(consumer) => {
                ctx.consumer = Some(with_default_plan(consumer, &snapshot));
                Ok(())
            }
            Err(reply) => {
                if let (Some((g, ip)), true) = (guard, reply.bad_credential) {
                    g.record(&ip);
                }
                Err(reply)
            }
        }
    }

    /// `[apis.limits] per_ip`: the flood guard of the API, before anything else is checked.
    fn guard_ip(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Reply> {
        let Some(limit) = ctx
            .endpoint
            .and_then(|i| ctx.snapshot.endpoints.get(i))
            .and_then(|e| e.per_ip.clone())
        else {
            return Ok(());
        };
        let Some(ip) = client_ip(session) else {
            return Ok(());
        };
        match limit.hit(&ip) {
            Ok(used) => {
                ctx.ratelimit = Some(limit.headers("ip", used));
                Ok(())
            }
            Err(used) => Err(limited(
                Code::RateLimited,
                "per_ip",
                format!(
                    "this address is over {} requests per {} s on this API",
                    limit.spec.count, limit.spec.per_secs
                ),
                limit.spec.per_secs,
                limit.headers("ip", used),
            )),
        }
    }
}

/// A consumer without a plan gets `[consumer_defaults] plan`, when there is one.
fn with_default_plan(
    consumer: Arc<crate::identity::Consumer>,
    snapshot: &crate::state::Snapshot,
) -> Arc<crate::identity::Consumer> {
    match (&consumer.plan, &snapshot.file.consumer_defaults.plan) {
        (None, Some(plan)) => {
            let mut c = (*consumer).clone();
            c.plan = Some(plan.clone());
            Arc::new(c)
        }
        _ => consumer,
    }
}

/// How the minimum body rate applies to a request that may have a body, of declared length
/// or chunked: not to gRPC (whose streams may be quiet for long), and for a client that waits
/// on `Expect: 100-continue` only from the first body byte.
fn body_rate(headers: &http::HeaderMap) -> ctx::BodyRate {
    use ctx::BodyRate;
    if headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        BodyRate::Off
    } else if headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        BodyRate::FromFirstByte(None)
    } else {
        BodyRate::FromUpstream
    }
}

/// Whether the request body is arriving slower than `[server.limits] body_min_rate` on
/// average since its clock started (see [`ctx::BodyRate`]); with `after_grace`, only once
/// `body_rate_after` has passed (an upstream that timed out waiting for the body has already
/// waited its own time).
fn slow_body(ctx: &RequestCtx, after_grace: bool) -> bool {
    use ctx::BodyRate;
    let limits = &ctx.snapshot.limits;
    let since = match ctx.body_rate {
        _ if limits.body_min_rate == 0 => return false,
        BodyRate::Off => return false,
        // Still waiting for the go-ahead: not judged while the body may start; but an upstream
        // that timed out waiting for a body that never began waited on the client.
        BodyRate::FromFirstByte(None) => return !after_grace,
        BodyRate::FromFirstByte(Some(t)) => t,
        BodyRate::FromUpstream => ctx.upstream_start.unwrap_or(ctx.start),
    };
    let elapsed = since.elapsed();
    (!after_grace || elapsed >= limits.body_rate_after)
        && (ctx.body_seen as f64) < limits.body_min_rate as f64 * elapsed.as_secs_f64()
}

/// A 429 answer of the limit named `name`: `Retry-After` and the RateLimit fields (policy,
/// state) of the limit.
fn limited(
    code: Code,
    name: &'static str,
    detail: impl Into<String>,
    retry_after_secs: u64,
    (policy, state): (String, String),
) -> Reply {
    let mut reply = Reply::new(code, detail);
    reply.limited = Some(name);
    reply
        .header("Retry-After", retry_after_secs.to_string())
        .header("RateLimit-Policy", policy)
        .header("RateLimit", state)
}

/// The answer while Redis is unreachable for a plan with `on_store_error = "deny"`.
fn store_unavailable() -> Reply {
    Reply::new(
        Code::StoreUnavailable,
        "this plan's limits cannot be checked right now; try again shortly",
    )
    .header("Retry-After", "1")
}

/// A chunked body whose first bytes (read with the head) are framed sloppily gets 400; the
/// rest of the body is checked as it is read (see `deadline::HeadDeadline`).
fn check_chunk_framing(session: &Session) -> Result<(), Reply> {
    let headers = &session.req_header().headers;
    if !headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(());
    }
    match watch(session).map(deadline::HeadDeadline::check_chunked_body) {
        Some(Err(why)) => Err(Reply::new(
            Code::BadRequest,
            format!("the chunked body has {why}"),
        )),
        _ => Ok(()),
    }
}

/// The deadline stream of the request's connection (HTTP/1 only).
fn watch(session: &Session) -> Option<&deadline::HeadDeadline> {
    session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<deadline::HeadDeadline>())
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
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
        // The first hook after Pingora parsed the head (see `deadline::HeadDeadline`).
        if let Some(watch) = watch(session) {
            watch.head_parsed();
        }
        ctx.background = session.subrequest_ctx.is_some();
        let req = session.req_header();
        ctx.request_id =
            crate::headers::request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.traceparent =
            crate::headers::traceparent(req.headers.get("traceparent").map(|v| v.as_bytes()));
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
        match self.admit(session, ctx) {
            Err((reply, close)) => self.refuse(session, ctx, reply, close).await,
            Ok(close) => {
                ctx.had_body = close;
                if close {
                    ctx.body_rate = body_rate(&session.req_header().headers);
                }
                if let Err(reply) = check_chunk_framing(session) {
                    return self.refuse(session, ctx, reply, true).await;
                }
                if let Err(reply) = self.check_caller(session, ctx).await {
                    return self.refuse(session, ctx, reply, close).await;
                }
                if ctx.usage {
                    self.answer_usage(session, ctx, close).await?;
                    return Ok(true);
                }
                match self.endpoint(ctx).map(|e| &e.action) {
                    Some(Action::Respond(r)) => {
                        let r = r.clone();
                        reply::write_static(
                            session,
                            &r,
                            &ctx.request_id,
                            close,
                            ctx.ratelimit.as_ref(),
                        )
                        .await?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
        }
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
        if session.was_upgraded() {
            return Ok(());
        }
        if let Some(b) = body.as_ref().filter(|b| !b.is_empty()) {
            if ctx.body_rate == ctx::BodyRate::FromFirstByte(None) {
                ctx.body_rate = ctx::BodyRate::FromFirstByte(Some(std::time::Instant::now()));
            }
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > ctx.max_body {
                ctx.fail = Some(Code::PayloadTooLarge);
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        if !end_of_stream && slow_body(ctx, true) {
            ctx.fail = Some(Code::RequestTimeout);
            return Error::e_explain(
                ErrorType::HTTPStatus(408),
                "request body slower than the minimum rate",
            );
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(Action::Proxy(pool)) = self.endpoint(ctx).map(|e| &e.action) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this endpoint");
        };
        let pool = pool.clone();
        let ip_key;
        let key: &[u8] = if !pool.uses_hash() {
            b""
        } else if let Some(h) = &pool.hash_header {
            session
                .req_header()
                .headers
                .get(h)
                .map_or(&b""[..], |v| v.as_bytes())
        } else {
            ip_key = client_ip(session)
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            ip_key.as_bytes()
        };
        if ctx.upstream_start.is_none() {
            ctx.upstream_start = Some(std::time::Instant::now());
        }
        match pool.select(key, &ctx.tried) {
            Some(addr) => {
                ctx.peer = Some(addr);
                ctx.reported = false;
                Ok(Box::new(pool.peer(addr)))
            }
            None => {
                let code = if ctx.tried.is_empty() {
                    Code::NoHealthyUpstream
                } else {
                    Code::UpstreamUnavailable
                };
                ctx.fail = Some(code);
                Error::e_explain(
                    ErrorType::HTTPStatus(code.status()),
                    format!("upstream {}: no target available", pool.name),
                )
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some((addr, pool)) = self.attempt(ctx) {
            pool.report_failure(&addr);
            ctx.reported = true;
            ctx.tried.push(addr);
            if ctx.retries_left > 0 {
                ctx.retries_left -= 1;
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(ep) = self.endpoint(ctx) else {
            return Ok(());
        };
        if ep.strip > 0 {
            let raw = session.req_header().raw_path();
            let rest = &raw[ep.strip.min(raw.len())..];
            let path: Vec<u8> = if rest.first() == Some(&b'/') {
                rest.to_vec()
            } else {
                [&b"/"[..], rest].concat()
            };
            replace_path_and_query(upstream, path)?;
        }
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let server = &ctx.snapshot.strip_request;
        match &ctx.cache {
            Some(c) => headers::strip_client_headers(upstream, &[server, &c.strip]),
            None => headers::strip_client_headers(upstream, &[server]),
        }
        if let Some(policy) = ep.auth.as_ref().filter(|p| !p.forward_credentials) {
            strip_credentials(upstream, policy)?;
        }
        if let Some(c) = &ctx.consumer {
            if let Some(v) = &c.id_header {
                upstream.insert_header("X-Consumer-Id", v.clone())?;
            }
            if let Some(v) = &c.groups_header {
                upstream.insert_header("X-Consumer-Groups", v.clone())?;
            }
        }
        headers::set_upstream_headers(
            upstream,
            client_ip(session),
            is_tls(session),
            host.as_deref(),
            &ctx.request_id,
            &ctx.traceparent,
        )
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let head: usize = resp
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        let bad = if head > ctx.snapshot.limits.upstream_header_block {
            Some(format!("the upstream sent a response head of {head} bytes"))
        } else {
            edge::ambiguous_response_framing(resp).map(str::to_string)
        };
        if let Some(why) = bad {
            // A misbehaving upstream: 502, its connection dropped (never reused), the failure
            // counted here (a stale copy may be served instead of the 502, and then nothing
            // else counts it).
            if let (Some((addr, pool)), false) = (self.attempt(ctx), ctx.reported) {
                ctx.reported = true;
                pool.report_failure(&addr);
            }
            ctx.fail = Some(Code::UpstreamUnavailable);
            return Error::e_explain(ErrorType::HTTPStatus(502), why);
        }
        if let Some((addr, pool)) = self.attempt(ctx) {
            let final_or_upgrade = !resp.status.is_informational() || resp.status == 101;
            if final_or_upgrade && ctx.upstream_us.is_none() {
                ctx.upstream_us = ctx
                    .upstream_start
                    .map(|t| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            if !ctx.reported && final_or_upgrade {
                ctx.reported = true;
                if resp.status.is_server_error() && pool.def.passive.on_5xx {
                    pool.report_failure(&addr);
                } else {
                    pool.report_success(&addr);
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        caching::mark_response(session, resp, ctx)?;
        if let Some((policy, state)) = ctx.ratelimit.take() {
            resp.insert_header("RateLimit-Policy", policy)?;
            resp.insert_header("RateLimit", state)?;
        }
        Ok(())
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
        let framing = watch(session).is_some_and(|w| w.bad_framing());
        let code = match ctx
            .fail
            .or_else(|| framing.then_some(Code::BadRequest))
            .or_else(|| classify(e))
        {
            // The upstream waited for a body the client was too slow to send: the client's
            // failure (408), and no mark against the target.
            // (Not when the upstream stopped taking the body: then the client only looks slow.)
            Some(Code::UpstreamTimeout)
                if !session.is_body_done()
                    && session.upstream_write_pending_time()
                        < std::time::Duration::from_secs(1)
                    && slow_body(ctx, false) =>
            {
                Some(Code::RequestTimeout)
            }
            code => code,
        };
        ctx.code = code;
        if let (Some((addr, pool)), Some(c)) = (self.attempt(ctx), code) {
            // Once the upstream answered, a later failure (an idle WebSocket timing out, a client
            // going away) says nothing about the target's health.
            let answered = session.response_written().is_some();
            if !ctx.reported
                && !answered
                && matches!(c, Code::UpstreamTimeout | Code::UpstreamUnavailable)
            {
                ctx.reported = true;
                pool.report_failure(&addr);
            }
        }
        let Some(code) = code else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_none() {
            let detail = match code {
                Code::UpstreamTimeout => "the upstream did not answer in time",
                Code::UpstreamUnavailable => {
                    "the upstream could not be reached or gave an invalid answer"
                }
                Code::NoHealthyUpstream => "no healthy target is available for this API",
                Code::PayloadTooLarge => "the request body is over the limit of this route",
                Code::BadRequest => "the request could not be read",
                Code::RequestTimeout => "the request body arrived too slowly",
                _ => "the request failed",
            };
            let mut reply = Reply::new(code, detail);
            if ctx.cache.is_some() {
                // A request the gateway refused (its body or its pace) did not use the cache.
                let refused = matches!(
                    code,
                    Code::PayloadTooLarge | Code::RequestTimeout | Code::BadRequest
                );
                let label = match refused {
                    true => "BYPASS",
                    false => crate::cache::failure_label(&session.cache.phase(), ctx.stale_found),
                };
                ctx.cache_status = Some(label);
                reply = reply.header(caching::STATUS_HEADER, label);
            }
            if let Err(err) = reply::write_problem(session, &reply, &ctx.request_id, true).await {
                log::debug!("could not write the error answer: {err}");
            }
        }
        FailToProxy {
            error_code: code.status(),
            can_reuse_downstream: false,
        }
    }
}

/// Removes the API key (header and query parameter) from the upstream request.
fn strip_credentials(upstream: &mut RequestHeader, policy: &crate::auth::AuthPolicy) -> Result<()> {
    upstream.remove_header(&policy.header);
    if policy.jwt.is_some() {
        upstream.remove_header(&http::header::AUTHORIZATION);
    }
    let Some(name) = &policy.query_param else {
        return Ok(());
    };
    let Some(query) = upstream.uri.query() else {
        return Ok(());
    };
    if crate::auth::query_values(query.as_bytes(), name).is_empty() {
        return Ok(());
    }
    let rest = crate::auth::strip_query_param(query, name);
    let path = upstream.uri.path();
    let pq = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    replace_path_and_query(upstream, pq.into_bytes())
}

/// Replaces the path and query of the upstream request, keeping the scheme and authority
/// (HTTP/2 carries the host there).
fn replace_path_and_query(upstream: &mut RequestHeader, path_and_query: Vec<u8>) -> Result<()> {
    const WHY: &str = "cannot rewrite the request target";
    let mut parts = upstream.uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|e| Error::because(ErrorType::InternalError, WHY, e))?,
    );
    let uri = http::Uri::from_parts(parts)
        .map_err(|e| Error::because(ErrorType::InternalError, WHY, e))?;
    upstream.set_uri(uri);
    Ok(())
}

/// Maps a proxy failure to the answer's code; `None` when the client is gone.
fn classify(e: &Error) -> Option<Code> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(413)) => Some(Code::PayloadTooLarge),
        (_, HTTPStatus(408)) => Some(Code::RequestTimeout),
        (_, HTTPStatus(c)) if *c < 500 => Some(Code::BadRequest),
        (_, HTTPStatus(503)) => Some(Code::NoHealthyUpstream),
        (_, HTTPStatus(504)) => Some(Code::UpstreamTimeout),
        (_, HTTPStatus(_)) => Some(Code::UpstreamUnavailable),
        // A client gone, or not reading its answer (`send_min_rate`): nothing to answer.
        (ErrorSource::Downstream, ReadError | WriteError | WriteTimedout | ConnectionClosed) => {
            None
        }
        (ErrorSource::Downstream, ReadTimedout) => Some(Code::RequestTimeout),
        (ErrorSource::Downstream, _) => Some(Code::BadRequest),
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => Some(Code::UpstreamTimeout),
        (ErrorSource::Upstream, ConnectTimedout) => Some(Code::UpstreamUnavailable),
        (ErrorSource::Upstream, _) => Some(Code::UpstreamUnavailable),
        (
            _,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure,
        ) => Some(Code::UpstreamUnavailable),
        (_, ReadTimedout | WriteTimedout) => Some(Code::UpstreamTimeout),
        _ => Some(Code::InternalError),
    }
}
