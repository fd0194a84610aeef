//! The `logging` phase: the request's analytics record, built from the session and the context
//! and handed to the aggregator (a full channel drops it; nothing here waits).

use super::ctx::RequestCtx;
use crate::analytics::record::{user_agent, Record};
use crate::state::Action;
use pingora::proxy::Session;

/// The record of a finished request; `None` for the cache's background refreshes (a client
/// already got, and was counted for, that answer). The user agent is only copied for the
/// access log (`with_user_agent`) and the OTLP log records, its only readers.
pub fn record(session: &Session, ctx: &mut RequestCtx, with_user_agent: bool) -> Option<Record> {
    if ctx.background {
        return None;
    }
    let telemetry = &ctx.snapshot.file.telemetry;
    let with_user_agent = with_user_agent || (telemetry.enabled() && telemetry.export_access_log);
    let elapsed = ctx.start.elapsed();
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let started = (crate::clock::now_ns() / 1_000_000).saturating_sub(elapsed_ms);
    let req = session.req_header();
    let endpoint = ctx.endpoint.and_then(|i| ctx.snapshot.endpoints.get(i));
    let (api, route) = match endpoint {
        Some(e) => (Some(e.api.clone()), Some(e.template.clone())),
        None => (None, None),
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
        consumer: ctx.flow.consumer.clone(),
        method: req.method.clone(),
        status,
        code: ctx.code.map(|c| c.as_str()),
        limited: ctx.limited,
        policy: ctx.refused_by.clone(),
        deprecated: endpoint.is_some_and(|e| e.deprecated),
        violations: ctx.violations,
        duration_us: duration,
        upstream_us: ctx.upstream_us,
        bytes_in: session.body_bytes_read() as u64,
        bytes_out: session.body_bytes_sent() as u64,
        cache: ctx.cache_status,
        upstream,
        client_ip: ctx.client_ip,
        shadow: ctx.shadow.take(),
        trace: ctx.trace.take().map(|mut t| {
            t.finish(t.start_ns.saturating_add(duration.saturating_mul(1_000)));
            t
        }),
        user_agent: req
            .headers
            .get(http::header::USER_AGENT)
            .filter(|_| with_user_agent)
            .map(|v| user_agent(v.as_bytes())),
    })
}
