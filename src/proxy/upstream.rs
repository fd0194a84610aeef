//! The upstream side of a proxied request: picking the target (`on_peer`), marking failed
//! connects, the upstream request's edits (base path, client headers, credentials, the
//! Transform stage of the policies, forwarding headers), and the checks of the upstream's
//! answer head.

use super::ctx::RequestCtx;
use super::{edge, is_tls, Gateway};
use crate::reply::Code;
use crate::state::Action;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

/// The whole `error_while_proxy`: Pingora's own decision (a request is retried only when it is
/// idempotent, its body can be sent again and the connection was a reused one), and the
/// attempt's failure for its span.
pub(super) fn on_proxy_error(
    session: &mut Session,
    peer: &HttpPeer,
    ctx: &mut RequestCtx,
    e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    if let Some(t) = &mut ctx.trace {
        t.failed(crate::telemetry::error_kind(&e.etype));
    }
    let mut e = e.more_context(format!("Peer: {peer}"));
    if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
        e.set_retry(false);
    } else {
        e.retry.decide_reuse(client_reused);
    }
    e
}

/// The whole `connected_to_upstream`: the attempt's connect time, for its span.
pub(super) fn on_connected(ctx: &mut RequestCtx, reused: bool) {
    if let Some(t) = &mut ctx.trace {
        t.connected(reused);
    }
}

impl Gateway {
    /// The whole `upstream_peer`.
    pub(super) fn on_peer(
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
            ip_key = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
            ip_key.as_bytes()
        };
        if ctx.upstream_start.is_none() {
            ctx.upstream_start = Some(std::time::Instant::now());
        }
        match pool.select(key, &ctx.tried) {
            Some(addr) => {
                ctx.peer = Some(addr);
                ctx.reported = false;
                if let Some(t) = &mut ctx.trace {
                    t.attempt(addr);
                }
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

    /// The whole `fail_to_connect`.
    pub(super) fn on_connect_failure(&self, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        if let Some(t) = &mut ctx.trace {
            t.failed("connect_failed");
        }
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

    /// The whole `upstream_request_filter`.
    pub(super) fn on_upstream_request(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let snapshot = ctx.snapshot.clone();
        let Some(ep) = ctx.endpoint.and_then(|i| snapshot.endpoints.get(i)) else {
            return Ok(());
        };
        if let Some(tp) = ctx.trace.as_ref().and_then(|t| t.upstream_traceparent()) {
            ctx.traceparent = tp;
        }
        let forward = crate::forward::Forward {
            original: session.req_header(),
            client_ip: ctx.client_ip,
            tls: is_tls(session),
            request_id: &ctx.request_id,
            traceparent: &ctx.traceparent,
            cache_strip: ctx.cache.as_ref().map(|c| &c.strip),
        };
        crate::forward::upstream_request(&snapshot, ep, &mut ctx.flow, &forward, upstream)
    }

    /// The whole `upstream_response_filter`.
    pub(super) fn on_upstream_response(
        &self,
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
            if let Some(t) = &mut ctx.trace {
                t.failed("bad_upstream_head");
            }
            return Error::e_explain(ErrorType::HTTPStatus(502), why);
        }
        let final_or_upgrade = !resp.status.is_informational() || resp.status == 101;
        if let (Some(t), true) = (&mut ctx.trace, final_or_upgrade) {
            t.response(resp.status.as_u16());
        }
        if let Some((addr, pool)) = self.attempt(ctx) {
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
}
