//! The proxy's part of contract validation (`crate::policy::validate`): reading a body whole
//! before any upstream is chosen, so a refused request never reaches one; running the
//! Validate stage; logging and recording what report mode found; checking a sampled answer.
//!
//! Pingora forwards a body it has already read only from its retry buffer (64 KiB). A body
//! read here is therefore read with that buffer switched on for its last 64 KiB (the read
//! sizes never exceed it), and `request_body_filter` replaces the buffer's bytes with the
//! whole body when Pingora sends them. A body without `Content-Length` (chunked) cannot be
//! split that way: such bodies are validated up to 64 KiB and larger ones get 411.

use super::ctx::RequestCtx;
use super::Gateway;
use crate::analytics::record::violation_bit;
use crate::openapi::contract::{Request, Violation};
use crate::policy::validate::Validate;
use crate::reply::{Code, Reply};
use crate::state::Endpoint;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::Result;

/// Pingora's retry buffer (`BODY_BUF_LIMIT` of pingora-core).
const RETRY_BUFFER: u64 = 64 * 1024;

impl Gateway {
    /// The Validate stage of the request: `Ok(Err)` is the refusal to write.
    pub(super) async fn validate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        ep: &Endpoint,
        v: &Validate,
    ) -> Result<std::result::Result<(), Reply>> {
        let method = session.req_header().method.clone();
        let has_body = ctx.had_body || !session.is_body_empty();
        let content_type = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let reads = crate::policy::validate::operation(&ep.chain.ops, &method)
            .is_some_and(|o| o.reads_body(content_type));
        if has_body && reads {
            if let Err(reply) = read_whole(session, ctx, v.max_body).await? {
                return Ok(Err(reply));
            }
        }
        let req = session.req_header();
        let raw = req.raw_path();
        let q = raw.iter().position(|&b| b == b'?');
        let (path, query) = match q {
            Some(i) => (&raw[..i], &raw[i + 1..]),
            None => (raw, &b""[..]),
        };
        let request = Request {
            headers: &req.headers,
            path,
            query,
            body: ctx.preread.as_deref(),
            has_body,
        };
        let result = crate::policy::run::validate(ep, &method, &request, &mut ctx.flow);
        let reported = std::mem::take(&mut ctx.flow.contract.reported);
        if !reported.is_empty() {
            note(ctx, ep, "request", &reported);
        }
        Ok(result)
    }
}

impl Gateway {
    /// Answers a mocked route from the spec (`crate::openapi::mock`), with
    /// `X-Turnpike-Mock: true`, the Response stage's header edits and the answer headers.
    pub(super) async fn answer_mock(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        ep: &Endpoint,
        ops: &[std::sync::Arc<crate::openapi::mock::MockOp>],
        close: bool,
    ) -> Result<bool> {
        let req = session.req_header();
        let get = http::Method::GET;
        let method = match req.method {
            http::Method::HEAD => &get,
            ref m => m,
        };
        let (code, example) = crate::openapi::mock::preferences(
            req.headers
                .get_all("prefer")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let accept = req
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let answer = match ops.iter().find(|o| o.method == *method) {
            Some(op) => op.answer(code.as_deref(), example.as_deref(), accept),
            None => Err(format!(
                "the API's contract has no {method} operation on this path"
            )),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(why) => {
                let reply = Reply::new(Code::BadRequest, why).header("X-Turnpike-Mock", "true");
                return self.refuse(session, ctx, reply, close).await;
            }
        };
        let mut headers = vec![(
            http::HeaderName::from_static("x-turnpike-mock"),
            http::HeaderValue::from_static("true"),
        )];
        if let Some(ct) = answer
            .content_type
            .as_deref()
            .and_then(|c| http::HeaderValue::from_str(c).ok())
        {
            headers.push((http::header::CONTENT_TYPE, ct));
        }
        let reply = crate::state::StaticReply {
            status: answer.status,
            headers,
            body: answer.body,
        };
        super::request::write_local(session, ctx, ep, &reply, close).await?;
        Ok(true)
    }
}

/// At most this many report-mode lines a second are written (a client sending bad requests
/// in a loop cannot flood the log); the metric counts every one.
const LOG_PER_SECOND: u32 = 20;

static LOG_LINES: LogBudget = LogBudget {
    second: std::sync::atomic::AtomicU64::new(0),
    used: std::sync::atomic::AtomicU32::new(0),
    skipped: std::sync::atomic::AtomicU32::new(0),
};

/// A per-second budget of log lines, shared by every thread.
struct LogBudget {
    second: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU32,
    skipped: std::sync::atomic::AtomicU32,
}

impl LogBudget {
    /// `Some(lines skipped in the previous window)` when a line may be written now.
    fn admit(&self, second: u64) -> Option<u32> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut skipped_before = 0;
        if self.second.swap(second, Relaxed) != second {
            self.used.store(0, Relaxed);
            skipped_before = self.skipped.swap(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < LOG_PER_SECOND {
            Some(skipped_before)
        } else {
            self.skipped.fetch_add(1 + skipped_before, Relaxed);
            None
        }
    }
}

/// Logs what report mode found (places, pointers and messages: never a value) and marks the
/// places for `turnpike_contract_violations_total`.
fn note(ctx: &mut RequestCtx, ep: &Endpoint, what: &str, found: &[Violation]) {
    for f in found {
        ctx.violations |= violation_bit(f.at);
    }
    let second = u64::try_from(crate::clock::now()).unwrap_or(0);
    let Some(suppressed) = LOG_LINES.admit(second) else {
        return;
    };
    if suppressed > 0 {
        log::warn!("{suppressed} contract violation lines were not written in the last second (at most {LOG_PER_SECOND} a second; turnpike_contract_violations_total counts them all)");
    }
    // (Debug formatting: a pointer holds the client's member names, which may hold newlines.)
    let list: Vec<String> = found
        .iter()
        .map(|f| format!("{} {:?}: {:?}", f.at, f.pointer, f.detail))
        .collect();
    log::warn!(
        "contract violation (report mode) in the {what} of {} {} (request id {}): {}",
        ep.api.name,
        ep.template,
        ctx.request_id,
        list.join("; ")
    );
}

/// Reads the request body whole (at most `max` bytes) into `ctx.preread`, counting it against
/// the body limits; `Ok(Err)` is the refusal (413, 411).
async fn read_whole(
    session: &mut Session,
    ctx: &mut RequestCtx,
    max: u64,
) -> Result<std::result::Result<(), Reply>> {
    let too_large = || {
        Reply::new(
            Code::PayloadTooLarge,
            format!("the body of a validated request is read whole, up to {max} bytes"),
        )
    };
    if ctx.content_length.is_some_and(|n| n > max) {
        return Ok(Err(too_large()));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // The client waits for the go-ahead; the upstream gets the body whole, without it.
        session.write_continue_response().await?;
        session
            .req_header_mut()
            .remove_header(&http::header::EXPECT);
    }
    // Pingora's retry buffer holds the last 64 KiB (all of a chunked body, up to 64 KiB).
    let tail_from = ctx
        .content_length
        .map_or(0, |n| n.saturating_sub(RETRY_BUFFER));
    let mut buf = BytesMut::new();
    loop {
        if buf.len() as u64 >= tail_from {
            session.enable_retry_buffering();
        }
        let Some(chunk) = session.read_request_body().await? else {
            break;
        };
        let piece = Some(chunk);
        super::body::on_body(&piece, false, ctx)?;
        let Some(chunk) = piece else { break };
        if buf.len() as u64 + chunk.len() as u64 > max {
            return Ok(Err(too_large()));
        }
        if ctx.content_length.is_none() && buf.len() as u64 + chunk.len() as u64 > RETRY_BUFFER {
            return Ok(Err(Reply::new(
                Code::LengthRequired,
                "a chunked body over 64 KiB cannot be validated: send Content-Length",
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    if !buf.is_empty() && session.get_retry_buffer().is_none() {
        // (Only when the request head and a large first piece of body came in one read.)
        return Ok(Err(Reply::new(
            Code::PayloadTooLarge,
            "this body could not be held for validation; send it after the head",
        )));
    }
    ctx.preread = Some(buf.freeze());
    Ok(Ok(()))
}

/// In `request_body_filter`: the body Pingora forwards from its retry buffer is replaced by
/// the whole body read for validation. `true` when the body was read here (nothing to count).
pub fn forward_preread(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &RequestCtx) -> bool {
    let Some(whole) = &ctx.preread else {
        return false;
    };
    if end_of_stream {
        *body = Some(whole.clone());
    } else {
        *body = Some(Bytes::new());
    }
    true
}

/// Collects a sampled answer's body (up to `max` bytes) and checks it at its end.
pub fn check_answer(
    ctx: &mut RequestCtx,
    ep: &Endpoint,
    body: &Option<Bytes>,
    end_of_stream: bool,
    status: u16,
    content_type: Option<&str>,
    max: u64,
) {
    let Some(op) = ctx.flow.contract.response.clone() else {
        return;
    };
    if let (Some(b), Some(acc)) = (body, ctx.answer_body.as_mut()) {
        if acc.len() as u64 + b.len() as u64 > max {
            // Too large to check whole: only its status and type are checked.
            ctx.answer_body = None;
        } else {
            acc.extend_from_slice(b);
        }
    }
    if !end_of_stream {
        return;
    }
    ctx.flow.contract.response = None;
    let whole = ctx.answer_body.take();
    let found = op.check_response(status, content_type, whole.as_deref());
    if !found.is_empty() {
        note(ctx, ep, "answer", &found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_budgeted_per_second() {
        let b = LogBudget {
            second: std::sync::atomic::AtomicU64::new(0),
            used: std::sync::atomic::AtomicU32::new(0),
            skipped: std::sync::atomic::AtomicU32::new(0),
        };
        let written = (0..50).filter(|_| b.admit(100).is_some()).count();
        assert_eq!(written, LOG_PER_SECOND as usize);
        // The next second writes again and says how many were not written.
        assert_eq!(b.admit(101), Some(30));
        assert_eq!(b.admit(101), Some(0));
    }
}
