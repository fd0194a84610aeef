//! Failures of proxied requests: which code the client's answer gets (`classify`, the
//! gateway's own decisions first), the mark against the upstream target, and the
//! problem+json answer when nothing was sent yet.

use super::ctx::RequestCtx;
use super::{caching, watch, Gateway};
use crate::reply::{self, Code, Reply};
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorSource, ErrorType};

impl Gateway {
    /// The whole `fail_to_proxy`.
    pub(super) async fn on_failure(
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
                    && super::body::slow_body(ctx, false) =>
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
                Code::UneditableResponse => "the answer could not be edited as a policy requires",
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
            if let Err(err) =
                reply::write_problem(session, &reply, &ctx.request_id, true, &ctx.flow.answer).await
            {
                log::debug!("could not write the error answer: {err}");
            }
        }
        FailToProxy {
            error_code: code.status(),
            can_reuse_downstream: false,
        }
    }
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
