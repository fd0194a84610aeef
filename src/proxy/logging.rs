//! The `logging` phase: the request's analytics record, built from the session and the context
//! and handed to the aggregator (a full channel drops it; nothing here waits).

use super::ctx::RequestCtx;
use crate::analytics::record::{user_agent, Record};
use crate::state::{Action, ApiInfo};
use pingora::proxy::Session;
use std::sync::Arc;

/// The `api` of requests to the `[usage]` endpoint.
pub const USAGE_API: &str = "[usage]";

/// The record of a finished request; `None` for the cache's background refreshes (a client
/// already got, and was counted for, that answer). The user agent is only copied for the
/// access log (`with_user_agent`), its only reader.
pub fn record(session: &Session, ctx: &mut RequestCtx, with_user_agent: bool) -> Option<Record> {
    if ctx.background {
        return None;
    }
    let elapsed = ctx.start.elapsed();
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let started = (crate::clock::now_ns() / 1_000_000).saturating_sub(elapsed_ms);
    let req = session.req_header();
    // The usage endpoint borrows an API's auth; it is not that API's traffic.
    let endpoint = ctx
        .endpoint
        .filter(|_| !ctx.usage)
        .and_then(|i| ctx.snapshot.endpoints.get(i));
    let (api, route) = match (endpoint, &ctx.snapshot.usage) {
        (Some(e), _) => (Some(e.api.clone()), Some(e.template.clone())),
        (None, Some((path, _))) if ctx.usage => (
            Some(Arc::new(ApiInfo {
                name: USAGE_API.into(),
                version: None,
            })),
            Some(Arc::from(path.as_str())),
        ),
        _ => (None, None),
    };
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    // An upgraded connection (WebSocket) is timed to its 101 answer, not to its end.
    let duration = match (status, ctx.upstream_us) {
        (101, Some(us)) => us,
        _ => u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    };
    let upstream = match (endpoint.map(|e| &e.action), ctx.peer) {
        (Some(Action::Proxy(pool)), Some(addr)) => Some((pool.name.clone(), addr)),
        _ => None,
    };
    Some(Record {
        time_ms: started,
        request_id: std::mem::take(&mut ctx.request_id),
        api,
        route,
        consumer: ctx.consumer.clone(),
        method: req.method.clone(),
        status,
        code: ctx.code.map(|c| c.as_str()),
        limited: ctx.limited,
        duration_us: duration,
        upstream_us: ctx.upstream_us,
        bytes_in: session.body_bytes_read() as u64,
        bytes_out: session.body_bytes_sent() as u64,
        cache: ctx.cache_status,
        upstream,
        client_ip: super::client_ip(session),
        user_agent: req
            .headers
            .get(http::header::USER_AGENT)
            .filter(|_| with_user_agent)
            .map(|v| user_agent(v.as_bytes())),
    })
}
