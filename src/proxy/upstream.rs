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
}
