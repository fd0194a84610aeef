//! The request body as it streams to the upstream: the body limit of the route or of a
//! `body_size` policy (413 naming the policy), and the minimum body rate of slow clients
//! (`[server.limits] body_min_rate`, 408).

use super::ctx::{BodyRate, RequestCtx};
use crate::reply::Code;
use bytes::Bytes;
use pingora::{Error, ErrorType, Result};

/// How the minimum body rate applies to a request that may have a body, of declared length
/// or chunked: not to gRPC (whose streams may be quiet for long), and for a client that waits
/// on `Expect: 100-continue` only from the first body byte.
pub fn body_rate(headers: &http::HeaderMap) -> BodyRate {
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
/// average since its clock started (see [`BodyRate`]); with `after_grace`, only once
/// `body_rate_after` has passed (an upstream that timed out waiting for the body has already
/// waited its own time).
pub fn slow_body(ctx: &RequestCtx, after_grace: bool) -> bool {
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

/// Counts a piece of the request body against the limits; `Err` ends the request (413, 408).
pub fn on_body(body: &Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
    if let Some(b) = body.as_ref().filter(|b| !b.is_empty()) {
        if ctx.body_rate == BodyRate::FromFirstByte(None) {
            ctx.body_rate = BodyRate::FromFirstByte(Some(std::time::Instant::now()));
        }
        ctx.body_seen += b.len() as u64;
        if ctx.body_seen > ctx.flow.max_body {
            ctx.fail = Some(Code::PayloadTooLarge);
            ctx.refused_by = ctx.flow.max_body_by.clone();
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
